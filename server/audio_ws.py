"""Audio over WebSocket: fastrtc's μ-law JSON protocol, and Twilio Media Streams for phone calls.

Replaces fastrtc's `WebSocketHandler`, which does not count these sessions against the
concurrency limit, ignores the time limit, never runs the handler's `shutdown`, resamples with
librosa on the event loop, and answers malformed messages with an exception.

Client → server: `{"event": "start", "websocket_id"}` (phone: `"start"` with top-level `streamSid`),
`{"event": "media", "media": {"payload": base64 μ-law}}`, `{"event": "ping"}`, `{"event": "stop"}`.
Server → client: `{"event": "media", "media": {"payload"}}` (phone: plus `streamSid`), `pong`,
`{"event": "clear"}` when the user interrupts a reply, the handler's JSON messages
(`{"type": "log" | "error", ...}`), and on refusal `{"event": "error", "status": "failed", "meta",
"message"}` before a close.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
from collections.abc import Callable
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from server.access import Denied
from server.offers import SESSION_ID_PATTERN
from streams.runtime import OfferRejected
from streams.session import Session
from streams.stream import Stream
from streams.telephony import BadMedia, decode_mulaw, encode_mulaw

logger = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 128_000
START_TIMEOUT_S = 15.0
PHONE_RATE = 8_000
CLOSE_PROTOCOL_ERROR = 1008  # policy violation: a message we do not accept
CLOSE_TRY_AGAIN = 1013
CLOSE_TOO_BIG = 1009


CLOSE_SERVICE_RESTART = 1012

# `start` message -> a refusal or None: the transport's access check (token, owner, rate limit).
Gate = Callable[[str, dict[str, Any]], "Denied | None"]


class ProtocolError(Exception):
    def __init__(self, message: str, code: int = CLOSE_PROTOCOL_ERROR, error: str = "protocol_error") -> None:
        super().__init__(message)
        self.code = code
        self.error = error


class _SocketChannel:
    """Lets the handler's data-channel messages (logs, errors) go out on the socket."""

    def __init__(self, websocket: WebSocket, loop: asyncio.AbstractEventLoop) -> None:
        self.websocket = websocket
        self.loop = loop
        self.readyState = "open"

    def send(self, message: str) -> None:
        if self.readyState == "open":
            self.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._send(message)))

    async def _send(self, message: str) -> None:
        with contextlib.suppress(Exception):
            await self.websocket.send_text(message)


CLOSE_UNSUPPORTED_DATA = 1003


async def _receive(websocket: WebSocket) -> dict[str, Any]:
    """The next message, parsed; Starlette's `receive_text` raises KeyError on a binary frame."""
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    if message.get("text") is None:
        raise ProtocolError("binary frames are not accepted: send JSON text messages", CLOSE_UNSUPPORTED_DATA)
    return _parse(message["text"])


def _parse(text: str) -> dict[str, Any]:
    if len(text) > MAX_MESSAGE_CHARS:
        raise ProtocolError(f"message over {MAX_MESSAGE_CHARS} characters", CLOSE_TOO_BIG)
    try:
        message = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"message is not JSON ({exc.msg})") from exc
    if not isinstance(message, dict) or not isinstance(message.get("event"), str):
        raise ProtocolError('message must be a JSON object with an "event" string')
    return message


async def _refuse(websocket: WebSocket, code: str, message: str, close_code: int, **meta: Any) -> None:
    with contextlib.suppress(Exception):
        await websocket.send_json({"event": "error", "status": "failed", "meta": {"error": code, **meta},
                                   "message": message})  # fmt: skip
        await websocket.close(code=close_code, reason=message[:120])


async def serve_audio_websocket(websocket: WebSocket, stream: Stream, *, phone: bool, gate: Gate) -> None:
    """One WebSocket or phone session, from accept to a clean close that always frees the slot.

    The stream may end the session itself (time limit, shutdown) through the `close` it is given.
    """
    await websocket.accept()
    transport = "phone" if phone else "websocket"
    session: Session | None = None
    channel = _SocketChannel(websocket, asyncio.get_running_loop())
    emit_task: asyncio.Task[None] | None = None
    receive_task: asyncio.Task[None] | None = None
    ended_by_server: asyncio.Future[tuple[str, str]] = asyncio.get_running_loop().create_future()
    end_reason = "client_left"

    async def close(reason: str, message: str) -> None:
        if not ended_by_server.done():
            ended_by_server.set_result((reason, message))

    try:
        session = await asyncio.wait_for(
            _start(websocket, stream, phone, gate, close, channel), START_TIMEOUT_S
        )
        media: Any = session.media
        emit_task = asyncio.create_task(_emit_loop(websocket, media, session.id, phone))
        receive_task = asyncio.create_task(_receive_loop(websocket, media, phone))
        await asyncio.wait({receive_task, ended_by_server}, return_when=asyncio.FIRST_COMPLETED)
        if ended_by_server.done():
            end_reason, message = ended_by_server.result()
            logger.info("session %s: %s session ended by the server (%s)", session.id, transport, end_reason)
            code = CLOSE_SERVICE_RESTART if end_reason == "server_shutdown" else 1000
            await _refuse(websocket, end_reason, message, code)
        else:
            receive_task.result()  # raises what ended it: protocol error, disconnect
            await _refuse(websocket, "stopped", "the client ended the session", 1000)
    except (TimeoutError, asyncio.TimeoutError):
        await _refuse(
            websocket, "no_start", f"no start event within {START_TIMEOUT_S:.0f} s", CLOSE_PROTOCOL_ERROR
        )
    except ProtocolError as exc:
        logger.info("session %s: %s %s: %s", session.id if session else "-", transport, exc.error, exc)
        end_reason = exc.error
        await _refuse(websocket, exc.error, str(exc), exc.code)
    except OfferRejected as exc:
        logger.warning("session %s: %s refused: %s", session.id if session else "-", transport, exc.code)
        await _refuse(websocket, exc.code, exc.message, CLOSE_TRY_AGAIN, **exc.meta)
    except WebSocketDisconnect:
        pass
    except Exception:
        logger.exception("session %s: %s session failed", session.id if session else "-", transport)
        await _refuse(websocket, "server_error", "the session failed on the server", 1011)
    finally:
        for task in (emit_task, receive_task):
            if task is not None:
                task.cancel()
        channel.readyState = "closed"
        if session is not None:
            await session.end(end_reason)  # the handler's shutdown always runs, the slot is freed
        if websocket.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await websocket.close()


async def _start(
    websocket: WebSocket,
    stream: Stream,
    phone: bool,
    gate: Gate,
    close: Callable[[str, str], Any],
    channel: _SocketChannel,
) -> Session:
    while True:
        message = await _receive(websocket)
        event = message["event"]
        if event in ("connected", "ping"):  # Twilio sends "connected" first
            if event == "ping":
                await websocket.send_json({"event": "pong"})
            continue
        if event == "media":
            raise ProtocolError("media before start: send a start event first")
        if event == "stop":
            raise WebSocketDisconnect(1000)
        if event != "start":
            raise ProtocolError(f"unknown event {event!r} before start")
        session_id = message.get("streamSid") if phone else message.get("websocket_id")
        if not isinstance(session_id, str) or not re.fullmatch(SESSION_ID_PATTERN, session_id):
            field = "streamSid" if phone else "websocket_id"
            raise ProtocolError(f"start needs a {field} matching {SESSION_ID_PATTERN}")
        denied = gate(session_id, message)
        if denied is not None:
            raise ProtocolError(denied.message, CLOSE_PROTOCOL_ERROR, denied.code)
        session = await stream.open_session(
            session_id, "phone" if phone else "websocket", hangup=close, channel=channel, websocket=websocket
        )
        clear = {"event": "clear", "streamSid": session_id} if phone else {"event": "clear"}
        media: Any = session.media
        media.on_interrupt = functools.partial(_send_soon, websocket, clear)
        return session


def _send_soon(websocket: WebSocket, message: dict[str, Any]) -> None:
    async def send() -> None:
        with contextlib.suppress(Exception):
            await websocket.send_json(message)

    asyncio.ensure_future(send())


async def _receive_loop(websocket: WebSocket, audio: Any, phone: bool) -> None:
    rate = PHONE_RATE if phone else audio.handler.input_sample_rate
    while True:
        message = await _receive(websocket)
        event = message["event"]
        if event == "media":
            media = message.get("media")
            if not isinstance(media, dict):
                raise ProtocolError("media event without a media object")
            try:
                samples = decode_mulaw(media.get("payload"))
            except BadMedia as exc:
                raise ProtocolError(str(exc)) from exc
            await audio.receive(rate, samples)
        elif event == "ping":
            await websocket.send_json({"event": "pong"})
        elif event == "stop":
            return
        elif event in ("mark", "connected", "dtmf"):
            continue
        else:
            raise ProtocolError(f"unknown event {event!r}")


async def _emit_loop(websocket: WebSocket, media: Any, session_id: str, phone: bool) -> None:
    """The handler paces its replies to real time, so each chunk is sent as it comes."""
    target = PHONE_RATE if phone else media.handler.output_sample_rate
    while True:
        out = await media.next_audio()
        if out is None:
            continue
        rate, samples = out
        payload: dict[str, Any] = {
            "event": "media",
            "media": {"payload": encode_mulaw(samples, rate, target)},
        }
        if phone:
            payload["streamSid"] = session_id
        await websocket.send_json(payload)
