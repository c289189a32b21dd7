"""One record per connection, whatever its transport, and the one way every connection ends.

A `Session` holds everything a connection owns: its handler (the `media`), peer, tracks, data
channel, report channel, inputs, timers, worker thread and its slot in the stream. Every way a
session can end (client left, time limit, dead peer, failed offer, drain, handler asked to close)
goes through `Session.end(reason)`, which is idempotent (as aiortc's `close()`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection

from streams import fastrtc_adapter as adapter
from streams.recording import CLOSE_TIMEOUT_S, SessionRecorder
from streams.runtime import ReportChannel, Worker

if TYPE_CHECKING:
    from streams.stream import Stream

logger = logging.getLogger(__name__)

_current: contextvars.ContextVar[Session | None] = contextvars.ContextVar("rt_current_session", default=None)

# Why a session ended, told to the client; a client that left itself is told nothing.
END_MESSAGES = {
    "time_limit_reached": "the session's time limit is over",
    "server_shutdown": "the server is restarting; reconnect in a moment",
    "never_connected": "the connection was not established in time (network or firewall; TURN may help)",
    "connection_failed": "the connection to the client failed",
    "stopped_by_server": "the server ended the session",
    "closed_by_handler": "the stream's handler ended the session",
}


def current_session() -> Session:
    """The session whose handler is running now (in its worker thread or its tasks).

    fastrtc's `get_current_context().webrtc_id` works too; this also gives the session's inputs,
    `publish(report)` for the outputs route, and `send_message` for the data channel.
    """
    session = _current.get()
    if session is None:
        raise RuntimeError("current_session() called outside a session's handler")
    return session


class Media(Protocol):
    """A stream's handler, served for one session (see `streams.media`)."""

    def outgoing_tracks(self, incoming: list[MediaStreamTrack]) -> list[MediaStreamTrack]: ...
    def inputs_changed(self, values: dict[str, Any]) -> None: ...
    async def start(self) -> None: ...
    def close(self) -> None: ...


class AudioMedia(Media, Protocol):
    """Audio media also served over WebSocket and phone: samples in, samples out."""

    async def receive(self, rate: int, samples: np.ndarray) -> None: ...
    async def next_audio(self) -> tuple[int, np.ndarray] | None: ...


# (reason, message) -> the transport hangs up (WebSocket and phone sessions).
Hangup = Callable[[str, str], Awaitable[None]]


class Session:
    def __init__(self, stream: Stream, session_id: str, transport: str) -> None:
        loop = asyncio.get_running_loop()
        self.id = session_id
        self.stream = stream
        self.transport = transport  # "webrtc" | "websocket" | "phone"
        self.started = time.monotonic()
        self.reports = ReportChannel(loop)
        self.reports.tap = stream.observer.report
        self.inputs: dict[str, Any] = dict(stream.inputs.defaults)
        self.media: Media | None = None
        self.pc: RTCPeerConnection | None = None
        self.channel: Any = None  # the data channel, or the socket standing in for it
        self.websocket: Any = None
        self.hangup: Hangup | None = None
        self.tracks: list[MediaStreamTrack] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        self.client: str | None = None  # who offered it (an address), for per-client limits
        self.early_candidates: list[Any] = []  # RTCIceCandidates posted while the offer is answered
        self.connected = transport != "webrtc"
        self.ended = False
        self.end_reason: str | None = None
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._ending: asyncio.Task[None] | None = None
        self._loop = loop
        self.context = contextvars.Context()
        self.context.run(self._enter_context)
        self.worker = Worker(f"{stream.name}-{session_id[:12]}", self.context)
        # what the client sent and what it got, when the server records this stream (RECORD)
        self.recorder = SessionRecorder.for_stream(stream, session_id, self.started)

    def _enter_context(self) -> None:
        _current.set(self)
        adapter.enter_session_context(self.id)

    def __repr__(self) -> str:
        return f"<Session {self.stream.name}/{self.id} {self.transport}{' ended' if self.ended else ''}>"

    @property
    def pending(self) -> bool:
        """An answered offer whose peer has not connected yet (counts against MAX_PENDING_OFFERS)."""
        return not self.connected and not self.ended

    # ---- helpers for handlers and media ----
    def create_task(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        """A task owned by the session (cancelled when it ends), with the session as its context."""
        task = self.context.run(asyncio.ensure_future, coro)
        task.set_name(f"{name}-{self.id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def publish(self, report: dict[str, Any]) -> None:
        """A report for `GET /{stream}/outputs` (thread-safe)."""
        self.reports.publish(report)

    def send_message(self, message: dict[str, Any]) -> None:
        """A JSON message on the data channel (or the socket); thread-safe and best effort."""
        self._loop.call_soon_threadsafe(self._send_now, json.dumps(message))

    def _send_now(self, text: str) -> None:
        channel = self.channel
        if channel is not None and getattr(channel, "readyState", "open") == "open":
            try:
                channel.send(text)
            except Exception as exc:
                logger.debug("session %s: message not sent: %s", self.id, exc)

    def end_soon(self, reason: str) -> None:
        """Thread-safe `end(reason)` for code that cannot await (timers, worker threads)."""
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self.end(reason)))

    # ---- lifecycle ----
    def set_timer(self, name: str, delay_s: float, reason: str) -> None:
        self._timers[name] = self._loop.call_later(delay_s, self.end_soon, reason)

    def mark_connected(self) -> None:
        if not self.connected:
            self.connected = True
            handle = self._timers.pop("pending", None)
            if handle is not None:
                handle.cancel()
            logger.info("session %s: connected", self.id)

    async def end(self, reason: str = "client_left") -> None:
        """Idempotent, any transport: tell the client why (unless it left), stop media, tracks,
        tasks and the worker thread, close the peer, free the slot. Concurrent calls wait for the first."""
        if self._ending is None:
            self._ending = asyncio.ensure_future(self._end(reason))
        await asyncio.shield(self._ending)

    async def _end(self, reason: str) -> None:
        self.ended = True
        self.end_reason = reason
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        message = END_MESSAGES.get(reason)
        try:
            if message is not None:
                await self._tell_ended(reason, message)
            for track in self.tracks:
                track.stop()
            for task in list(self.tasks):
                task.cancel()
            if self.media is not None:
                try:
                    self.media.close()
                except Exception:
                    logger.exception("session %s: handler shutdown failed", self.id)
            self.worker.close()
            self.reports.close()
            if self.pc is not None:
                with contextlib.suppress(Exception):
                    await self.pc.close()
        finally:
            try:
                await self._close_recording()
            finally:
                self.stream._forget(self, reason)

    async def _close_recording(self) -> None:
        """Finish the recording's files off the event loop, after the media stopped feeding them and
        before the slot is freed (a drain on SIGTERM waits for them); bounded, never raises."""
        recorder = self.recorder
        if recorder is None:
            return
        try:
            await asyncio.wait_for(asyncio.to_thread(recorder.close), CLOSE_TIMEOUT_S + 1)
        except Exception:
            logger.exception("session %s: closing the recording failed", self.id)

    async def _tell_ended(self, reason: str, message: str) -> None:
        """On the outputs as `ended`, on the data channel as fastrtc's `end_stream`, or through the
        transport's own hang-up (WebSocket and phone)."""
        self.reports.publish({"type": "ended", "reason": reason, "message": message})
        if self.hangup is not None:
            with contextlib.suppress(Exception):
                await self.hangup(reason, message)
            return
        channel = self.channel
        if self.pc is not None and channel is not None and getattr(channel, "readyState", "") == "open":
            with contextlib.suppress(Exception):
                channel.send(json.dumps({"type": "end_stream", "reason": reason, "data": message}))
                await asyncio.sleep(0.05)  # let the message leave before the peer closes
