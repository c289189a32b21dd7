"""Audio over WebSocket: one session runner for both wire protocols (`server/socket_protocols.py`).

Replaces fastrtc's `WebSocketHandler`, which does not count these sessions against the
concurrency limit, ignores the time limit, never runs the handler's `shutdown`, resamples with
librosa on the event loop, and answers malformed messages with an exception.

Client → server: `start` (see the protocols), `{"event": "media", "media": {"payload": base64
μ-law}}`, `{"event": "ping"}` (answered `pong`), `{"event": "mark"}` (Twilio's playback echo),
`{"event": "stop"}`. Server → client: `media` at the client's rate, `clear` when the user
interrupts a reply, and what the protocol allows of the rest (handler messages, error events).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from server.access import Denied
from server.socket_protocols import BadStart, SocketProtocol
from streams.runtime import OfferRejected
from streams.session import Session
from streams.stream import Stream
from streams.telephony import MAX_PAYLOAD_BYTES, BadMedia, decode_mulaw, encode_mulaw

logger = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 128_000
START_TIMEOUT_S = 15.0
MARK_EVERY_S = 0.1  # Twilio: a playback mark at most this often while a reply is being sent
CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_PROTOCOL_ERROR = 1008  # policy violation: a message we do not accept
CLOSE_TOO_BIG = 1009
CLOSE_SERVER_ERROR = 1011
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN = 1013

# `start` message -> a refusal or None: the transport's access check (token, owner, rate limit).
Gate = Callable[[str, dict[str, Any]], "Denied | None"]


class ProtocolError(Exception):
    def __init__(self, message: str, code: int = CLOSE_PROTOCOL_ERROR, error: str = "protocol_error") -> None:
        super().__init__(message)
        self.code = code
        self.error = error


class _SocketChannel:
    """Lets the handler's data-channel messages (logs, errors) out on the socket, where the
    protocol takes them."""

    def __init__(
        self, websocket: WebSocket, protocol: SocketProtocol, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.websocket = websocket
        self.protocol = protocol
        self.loop = loop
        self.readyState = "open"

    def send(self, message: str) -> None:
        text = self.protocol.forward(message)
        if text is not None and self.readyState == "open":
            self.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._send(text)))

    async def _send(self, message: str) -> None:
        with contextlib.suppress(Exception):
            await self.websocket.send_text(message)


async def _receive(websocket: WebSocket) -> dict[str, Any]:
    """The next message, parsed; Starlette's `receive_text` raises KeyError on a binary frame."""
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", CLOSE_NORMAL))
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


async def _close(
    websocket: WebSocket, protocol: SocketProtocol, code: str, message: str, close_code: int, **meta: Any
) -> None:
    """End the socket saying why: the protocol's own refusal message (if it has one), then the close
    code with `code: message` as the reason (123 bytes at most, as RFC 6455 allows)."""
    with contextlib.suppress(Exception):
        event = protocol.refusal(code, message, **meta)
        if event is not None:
            await websocket.send_json(event)
        reason = f"{code}: {message}".encode()[:123].decode(errors="ignore")
        await websocket.close(code=close_code, reason=reason)


async def serve_audio_websocket(
    websocket: WebSocket, stream: Stream, protocol: SocketProtocol, gate: Gate
) -> None:
    """One WebSocket or phone session, from accept to a clean close that always frees the slot.

    The stream may end the session itself (time limit, shutdown) through the `close` it is given.
    """
    await websocket.accept()
    transport = protocol.transport
    session: Session | None = None
    channel = _SocketChannel(websocket, protocol, asyncio.get_running_loop())
    emit_task: asyncio.Task[None] | None = None
    receive_task: asyncio.Task[None] | None = None
    ended_by_server: asyncio.Future[tuple[str, str]] = asyncio.get_running_loop().create_future()
    end_reason = "client_left"

    async def close(reason: str, message: str) -> None:
        if not ended_by_server.done():
            ended_by_server.set_result((reason, message))

    try:
        session, rate_in, rate_out = await asyncio.wait_for(
            _start(websocket, stream, protocol, gate, close, channel), START_TIMEOUT_S
        )
        media: Any = session.media
        emit_task = asyncio.create_task(_emit_loop(websocket, media, protocol, rate_out))
        receive_task = asyncio.create_task(_receive_loop(websocket, media, rate_in))
        await asyncio.wait({receive_task, ended_by_server}, return_when=asyncio.FIRST_COMPLETED)
        if ended_by_server.done():
            end_reason, message = ended_by_server.result()
            logger.info("session %s: %s session ended by the server (%s)", session.id, transport, end_reason)
            code = CLOSE_SERVICE_RESTART if end_reason == "server_shutdown" else CLOSE_NORMAL
            await _close(websocket, protocol, end_reason, message, code)
        else:
            receive_task.result()  # raises what ended it: protocol error, disconnect
            end_reason = "stopped"  # the client's `stop`: a normal close, not an error
            with contextlib.suppress(Exception):
                await websocket.close(code=CLOSE_NORMAL, reason="stopped")
    except (TimeoutError, asyncio.TimeoutError):
        await _close(
            websocket,
            protocol,
            "no_start",
            f"no start event within {START_TIMEOUT_S:.0f} s",
            CLOSE_PROTOCOL_ERROR,
        )
    except ProtocolError as exc:
        logger.info("session %s: %s %s: %s", session.id if session else "-", transport, exc.error, exc)
        end_reason = exc.error
        await _close(websocket, protocol, exc.error, str(exc), exc.code)
    except OfferRejected as exc:
        logger.warning("session %s: %s refused: %s", session.id if session else "-", transport, exc.code)
        await _close(websocket, protocol, exc.code, exc.message, CLOSE_TRY_AGAIN, **exc.meta)
    except WebSocketDisconnect:
        pass
    except Exception:
        logger.exception("session %s: %s session failed", session.id if session else "-", transport)
        await _close(
            websocket, protocol, "server_error", "the session failed on the server", CLOSE_SERVER_ERROR
        )
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
    protocol: SocketProtocol,
    gate: Gate,
    close: Callable[[str, str], Any],
    channel: _SocketChannel,
) -> tuple[Session, int, int]:
    """Wait for `start`, check it, open the session; returns it with the client's (in, out) rates."""
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
            raise WebSocketDisconnect(CLOSE_NORMAL)
        if event != "start":
            raise ProtocolError(f"unknown event {event!r} before start")
        try:
            session_id = protocol.session_id(message)
            rates = protocol.rates(message, stream.handler)
        except BadStart as exc:
            raise ProtocolError(str(exc)) from exc
        denied = gate(session_id, message)
        if denied is not None:
            raise ProtocolError(denied.message, CLOSE_PROTOCOL_ERROR, denied.code)
        session = await stream.open_session(
            session_id, protocol.transport, hangup=close, channel=channel, websocket=websocket
        )
        media: Any = session.media
        media.on_interrupt = functools.partial(_send_soon, websocket, protocol.clear())
        return session, *rates


def _send_soon(websocket: WebSocket, message: dict[str, Any]) -> None:
    async def send() -> None:
        with contextlib.suppress(Exception):
            await websocket.send_json(message)

    asyncio.ensure_future(send())


async def _receive_loop(websocket: WebSocket, audio: Any, rate: int) -> None:
    while True:
        message = await _receive(websocket)
        event = message["event"]
        if event == "media":
            media = message.get("media")
            if not isinstance(media, dict):
                raise ProtocolError("media event without a media object")
            payload = media.get("payload")
            sized = (
                isinstance(payload, str) and len(payload) <= MAX_PAYLOAD_BYTES * 4 // 3 + 4
            )  # else: refused
            if sized and not audio.admit(len(payload) * 3 / 4 / rate):
                continue  # faster than real time: dropped before decoding (1 byte a sample)
            try:
                samples = decode_mulaw(payload)
            except BadMedia as exc:
                raise ProtocolError(str(exc)) from exc
            await audio.receive(rate, samples)
        elif event == "mark":  # Twilio: the caller has heard everything sent before this mark
            mark = message.get("mark")
            if isinstance(mark, dict) and isinstance(mark.get("name"), str):
                audio.played(mark["name"])
        elif event == "ping":
            await websocket.send_json({"event": "pong"})
        elif event == "stop":
            return
        elif event in ("connected", "dtmf"):
            continue
        else:
            raise ProtocolError(f"unknown event {event!r}")


async def _emit_loop(websocket: WebSocket, media: Any, protocol: SocketProtocol, rate: int) -> None:
    """The handler paces its replies to real time, so each chunk is sent as it comes. Where the
    protocol has marks, one follows the audio at most every `MARK_EVERY_S` and when the handler
    falls silent, so the session knows what the client has really played."""
    sent_s, marked_s, last_mark = 0.0, 0.0, 0.0
    while True:
        out = await media.next_audio()
        if out is not None:
            samples_rate, samples = out
            await websocket.send_json(protocol.media(encode_mulaw(samples, samples_rate, rate)))
            sent_s += samples.shape[-1] / samples_rate
        now = time.monotonic()
        if sent_s > marked_s and (out is None or now - last_mark >= MARK_EVERY_S):
            name = f"{sent_s:.3f}"  # seconds of audio sent through this mark
            mark = protocol.mark(name)
            if mark is None:
                marked_s = sent_s
                continue
            media.awaiting_playback(name)
            await websocket.send_json(mark)
            marked_s, last_mark = sent_s, now
