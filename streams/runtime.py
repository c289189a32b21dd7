"""fastrtc made production-grade: the media-side fixes, each in one named place.

Measured problems of stock fastrtc 0.0.34 (see README, "What we fix in fastrtc") and where they are fixed:

- handlers run synchronously on the event loop      -> `SessionTrack` runs them in a per-session thread
- the decoded-frame queue is unbounded               -> `LatestFrameTrack` keeps only the newest frame
- receive generators ignore later inputs, burst      -> `PacedVideoTrack` paces at the live target rate
- frames pass through untouched until `set_input`    -> sessions start with default parameters
- `VideoStreamHandler.callable` re-wrapped per offer -> the stream's handler is never wrapped or replaced
- an offer failing after registration leaks its slot -> `HardenedStream.handle_offer` cleans up
- the first handler exception kills the output       -> `SessionTrack` reports it and keeps going
- `concurrency_limit=None` means 1, STUN by default  -> `HardenedStream` requires explicit values
- additional outputs queue without bound             -> `ReportChannel` keeps a bounded backlog
- aiortc holds each received frame one frame interval -> `streams.jitter.MarkerJitterBuffer`
- WebSocket and phone sessions are not counted      -> `HardenedStream.claim_slot`, one limit for all
- no server-wide limit, no cap on unconnected offers -> `SessionBudget`
- an offer that never connects holds its slot        -> `HardenedStream` ends it after `pending_timeout_s`
- `time_limit` closes the peer silently, WebRTC only -> `HardenedStream.end_session(reason)` tells the client
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, cast

import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
)
from aiortc.mediastreams import VIDEO_TIME_BASE, MediaStreamError
from fastapi.responses import JSONResponse
from fastrtc import Stream
from fastrtc.tracks import ServerToClientVideo, VideoCallback

from streams.jitter import use_low_latency_jitter_buffers

logger = logging.getLogger(__name__)


class OfferRejected(Exception):
    """An offer the server refuses; `code` is machine-readable, the message is for people."""

    def __init__(self, code: str, message: str, **meta: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.meta = meta


class StreamObserver:
    """Hooks a server attaches for its metrics; the default does nothing (streams know no Prometheus)."""

    def frame_received(self) -> None: ...
    def frame_dropped(self) -> None: ...
    def frame_sent(self, processing_s: float, latency_s: float | None) -> None: ...
    def handler_error(self) -> None: ...
    def report(self, report: dict[str, Any]) -> None: ...
    def session_ended(self, transport: str, reason: str) -> None: ...
    def session_refused(self, transport: str, reason: str) -> None: ...


class SessionBudget:
    """Limits shared by every stream of one server: total sessions on all transports, offers that
    have not connected yet, and a drain switch for shutdown. Streams without a budget get their own."""

    def __init__(self, max_sessions: int | None = None, max_pending: int | None = None) -> None:
        self.max_sessions = max_sessions
        self.max_pending = max_pending
        self.streams: list[HardenedStream] = []
        self.draining = False

    @property
    def active_sessions(self) -> int:
        return sum(s.active_sessions for s in self.streams)

    @property
    def pending_offers(self) -> int:
        return sum(len(s.pending) for s in self.streams)

    def check(self, *, webrtc: bool) -> None:
        """Raise `OfferRejected` when the server as a whole cannot take one more session."""
        if self.draining:
            raise OfferRejected("shutting_down", _REFUSALS["shutting_down"])
        if self.max_sessions is not None and self.active_sessions >= self.max_sessions:
            raise OfferRejected(
                "server_limit_reached", _REFUSALS["server_limit_reached"], limit=self.max_sessions
            )
        if webrtc and self.max_pending is not None and self.pending_offers >= self.max_pending:
            raise OfferRejected(
                "too_many_pending_offers", _REFUSALS["too_many_pending_offers"], limit=self.max_pending
            )


class ReportChannel:
    """Per-session reports for any number of listeners, each with a bounded backlog (oldest dropped).

    Stock fastrtc puts every `AdditionalOutputs` in an unbounded queue that grows forever when
    nobody reads it; a 30 fps handler reporting per frame would leak memory.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, backlog: int = 16) -> None:
        self._loop = loop
        self._backlog = backlog
        self._listeners: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self.last: dict[str, Any] | None = None
        self.closed = False
        self.tap: Callable[[dict[str, Any]], None] | None = None  # sees every report, on the loop

    def publish(self, report: dict[str, Any]) -> None:
        """Thread-safe: may be called from worker threads."""
        if self.closed:
            return
        self._loop.call_soon_threadsafe(self._deliver, report)

    def _deliver(self, report: dict[str, Any] | None) -> None:
        if report is not None:
            self.last = report
            if self.tap is not None:
                self.tap(report)
        for queue in self._listeners:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(report)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._loop.call_soon_threadsafe(self._deliver, None)

    async def listen(self) -> AsyncIterator[dict[str, Any]]:
        """Yields reports until the session ends."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(self._backlog)
        self._listeners.add(queue)
        try:
            if self.last is not None:
                queue.put_nowait(self.last)
            while not self.closed or not queue.empty():
                item = await queue.get()
                if item is None:
                    return
                yield item
        finally:
            self._listeners.discard(queue)


class MediaSession(Protocol):
    """What a stream module provides per connection; knows nothing of HTTP."""

    session_id: str
    reports: ReportChannel

    def update(self, changes: dict[str, Any]) -> dict[str, Any]: ...
    def close(self) -> None: ...


class ProcessingSession(MediaSession, Protocol):
    """A session that turns each incoming frame into an outgoing one (send-receive)."""

    def process(self, frame: av.VideoFrame) -> av.VideoFrame: ...


class GeneratingSession(MediaSession, Protocol):
    """A session that makes frames for the client (receive mode)."""

    @property
    def fps(self) -> float: ...

    def produce(self, pts_s: float) -> av.VideoFrame: ...


class SessionTrack(MediaStreamTrack):
    """An outgoing video track whose work runs in the session's own worker thread.

    One thread per session: a slow session never delays another, nor the event loop.
    """

    kind = "video"

    def __init__(self, session: MediaSession) -> None:
        super().__init__()
        self.session = session
        self.frames_out = 0
        self.errors = 0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"video-{session.session_id[:12]}")
        self._channel: Any = None
        self._loop = asyncio.get_running_loop()
        self.observer = StreamObserver()

    # fastrtc calls these on every connection object it holds.
    def set_channel(self, channel: Any) -> None:
        self._channel = channel

    def set_args(self, args: list[Any]) -> None:
        """fastrtc's `set_input` path; our sessions take live parameters through `update` instead."""

    def start(self) -> None:
        """Called once the peer is set up; tracks that need background work start it here."""

    async def _in_worker(self, fn: Callable[..., av.VideoFrame], *args: Any) -> av.VideoFrame:
        try:
            return await self._loop.run_in_executor(self._executor, fn, *args)
        except RuntimeError as exc:  # executor shut down while we waited: the session is ending
            raise MediaStreamError from exc

    def _report_error(self, exc: Exception, what: str) -> None:
        self.errors += 1
        self.observer.handler_error()
        if self.errors == 1 or self.errors % 100 == 0:
            logger.error(
                "session %s: handler error #%d: %s", self.session.session_id, self.errors, exc, exc_info=exc
            )
            self.send_message({"type": "error", "message": f"{what} failed ({type(exc).__name__}: {exc})"})

    def send_message(self, message: dict[str, Any]) -> None:
        """Thread-safe and best effort: the data channel may be absent or closed."""
        self._loop.call_soon_threadsafe(self._send_now, json.dumps(message))

    def _send_now(self, text: str) -> None:
        channel = self._channel
        if channel is not None and getattr(channel, "readyState", "open") == "open":
            try:
                channel.send(text)
            except Exception as exc:
                logger.debug("session %s: message not sent: %s", self.session.session_id, exc)

    def stop(self) -> None:
        if self.readyState == "ended":
            return
        super().stop()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.session.close()


class LatestFrameTrack(SessionTrack):
    """Processes only the newest incoming frame.

    A pump task drains the incoming track as fast as frames arrive and keeps just the newest one;
    the encoder's `recv()` then processes that frame in the session's worker thread. A slow
    handler therefore lowers the output rate instead of building up lag or memory.
    """

    def __init__(self, source: MediaStreamTrack, session: ProcessingSession) -> None:
        super().__init__(session)
        self.source = source
        self.processor = session
        self.frames_in = 0
        self.frames_dropped = 0
        self._latest: av.VideoFrame | None = None
        self._latest_at = 0.0
        self._fresh = asyncio.Event()
        self._source_ended = False
        self._pump_task: asyncio.Task[None] | None = None

    async def _pump(self) -> None:
        try:
            while True:
                frame = await self.source.recv()
                self.frames_in += 1
                self.observer.frame_received()
                if self._latest is not None:
                    self.frames_dropped += 1
                    self.observer.frame_dropped()
                self._latest, self._latest_at = frame, time.monotonic()
                self._fresh.set()
        except MediaStreamError:
            pass
        except Exception:
            logger.exception("session %s: incoming video failed", self.session.session_id)
        finally:
            self._source_ended = True
            self._fresh.set()

    def start(self) -> None:
        """Start draining the incoming track now: if nobody ever asks for output (a client that does
        not receive), undrained frames would pile up in aiortc's receiver queue without bound."""
        if self._pump_task is None:
            self._pump_task = asyncio.create_task(self._pump(), name=f"pump-{self.session.session_id}")

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        self.start()
        while self._latest is None:
            if self._source_ended or self.readyState != "live":
                self.stop()
                raise MediaStreamError
            self._fresh.clear()
            await self._fresh.wait()
        frame, self._latest = self._latest, None
        received_at, started = self._latest_at, time.monotonic()
        out = await self._in_worker(self._process, frame)
        self.frames_out += 1
        done = time.monotonic()
        self.observer.frame_sent(done - started, done - received_at)
        return out

    def _process(self, frame: av.VideoFrame) -> av.VideoFrame:
        try:
            return self.processor.process(frame)
        except Exception as exc:
            self._report_error(exc, "processing")
            return frame  # the stream keeps going, unprocessed

    def stop(self) -> None:
        if self.readyState == "ended":
            return
        self._source_ended = True
        self._fresh.set()
        if self._pump_task is not None:
            self._pump_task.cancel()
        self.source.stop()
        super().stop()


class PacedVideoTrack(SessionTrack):
    """Sends a generating session's frames at its *current* target rate, drift-free and burst-free.

    Deadlines advance by the current interval from the previous deadline (no drift); a new rate
    applies to the very next frame; when the source falls more than a frame behind, the schedule
    restarts from now instead of catching up in a burst. Stock fastrtc creates its generator once,
    ignores later inputs and bursts after a late start.
    """

    def __init__(self, session: GeneratingSession) -> None:
        super().__init__(session)
        self.generator = session
        self._t0: float | None = None
        self._deadline = 0.0
        self.late_restarts = 0

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = self._deadline = now
        else:
            interval = 1.0 / self.generator.fps
            self._deadline += interval
            if now - self._deadline > interval:
                self._deadline = now
                self.late_restarts += 1
            delay = self._deadline - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        started = time.monotonic()
        frame = await self._in_worker(self._produce, self._deadline - self._t0)
        self.frames_out += 1
        self.observer.frame_sent(time.monotonic() - started, None)
        return frame

    def _produce(self, pts_s: float) -> av.VideoFrame:
        try:
            frame = self.generator.produce(pts_s)
        except Exception as exc:
            self._report_error(exc, "generation")
            frame = av.VideoFrame.from_ndarray(
                np.zeros((480, 640, 3), np.uint8), format="bgr24"
            )  # stay alive
        frame.pts = int(pts_s * 90000)
        frame.time_base = VIDEO_TIME_BASE
        return frame


SessionFactory = Callable[[str, Any], MediaSession]
# An RTCConfiguration dict, or a function returning the current one (credentials that expire).
RtcConfigSource = dict[str, Any] | Callable[[], dict[str, Any]]


def to_aiortc_configuration(source: RtcConfigSource) -> RTCConfiguration:
    config = source() if callable(source) else source
    return RTCConfiguration(
        iceServers=[
            RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
            for s in config.get("iceServers", [])
        ],
        iceTransportPolicy=RTCIceTransportPolicy(config.get("iceTransportPolicy", "all")),
    )  # (webrtc_id, fastrtc's per-connection handler)


class HardenedStream(Stream):
    """A fastrtc `Stream` whose sessions run in our `SessionTrack`s and whose offers never leak.

    `session_factory(webrtc_id, handler)` builds the per-connection state (a `MediaSession`).
    fastrtc's own video tracks are swapped before media flows: send-receive video gets a
    `LatestFrameTrack`, receive video a `PacedVideoTrack`; for video the `handler` given to fastrtc
    is only a placeholder it requires. Audio streams keep fastrtc's track around their handler
    (a `StreamHandler`), whose per-connection copy is passed to the factory.
    """

    def __init__(
        self,
        *,
        session_factory: SessionFactory,
        concurrency_limit: int,
        server_rtc_configuration: RtcConfigSource,
        time_limit: float | None = None,
        handler: Any = None,
        budget: SessionBudget | None = None,
        pending_timeout_s: float = 20.0,
        **kwargs: Any,
    ) -> None:
        if concurrency_limit is None or server_rtc_configuration is None:
            raise ValueError("concurrency_limit and server_rtc_configuration must be explicit")
        super().__init__(
            handler=handler if handler is not None else _never_called,
            concurrency_limit=concurrency_limit,
            time_limit=None,  # ours: `_start_timers` tells the client why it ended (stock closes silently)
            **kwargs,
        )
        # fastrtc converts its configuration once and drops iceTransportPolicy; ours is read per offer,
        # so TURN credentials that expire are replaced and relay-only applies to the server too.
        self.rtc_configuration_source = server_rtc_configuration
        self.session_factory = session_factory
        self.session_time_limit = time_limit
        self.pending_timeout_s = pending_timeout_s
        self.budget = budget or SessionBudget()
        self.budget.streams.append(self)
        self.observer = StreamObserver()
        self.sessions: dict[str, MediaSession] = {}
        self.tracks: dict[str, list[SessionTrack]] = {}
        self.transports: dict[str, str] = {}  # sessions not on WebRTC: id -> "websocket" | "phone"
        self.pending: dict[str, asyncio.TimerHandle] = {}  # offers answered, peer not connected yet
        self._closers: dict[str, Callable[[str, str], Awaitable[None]]] = {}  # non-WebRTC sessions
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def join(self, budget: SessionBudget, *, pending_timeout_s: float) -> None:
        """Share `budget` (server-wide limits) with the server's other streams."""
        self.budget.streams.remove(self)
        self.budget = budget
        budget.streams.append(self)
        self.pending_timeout_s = pending_timeout_s

    @property
    def active_sessions(self) -> int:
        """Every transport counts against the one limit (stock fastrtc counts WebRTC peers only)."""
        return len(self.pcs) + len(self.transports)

    def sessions_by_transport(self) -> dict[str, int]:
        counts = {"webrtc": len(self.pcs), "websocket": 0, "phone": 0}
        for transport in self.transports.values():
            counts[transport] += 1
        return counts

    def check_room_for(self, session_id: str, *, transport: str = "webrtc") -> None:
        """Raise `OfferRejected` if the id is taken, or this stream or the server is full."""
        try:
            self._check_room_for(session_id, webrtc=transport == "webrtc")
        except OfferRejected as exc:
            self.observer.session_refused(transport, exc.code)
            raise

    def _check_room_for(self, session_id: str, *, webrtc: bool) -> None:
        if session_id in self.sessions or session_id in self.pcs or session_id in self.transports:
            raise OfferRejected("connection_already_exists", _REFUSALS["connection_already_exists"])
        self.budget.check(webrtc=webrtc)
        if self.active_sessions >= self.concurrency_limit:
            raise OfferRejected(
                "concurrency_limit_reached",
                _REFUSALS["concurrency_limit_reached"],
                limit=self.concurrency_limit,
            )

    def claim_slot(self, session_id: str, transport: str) -> None:
        """Register a WebSocket or phone session; raises `OfferRejected` when there is no room."""
        self.check_room_for(session_id, transport=transport)
        self.transports[session_id] = transport

    def attach_external(
        self, session_id: str, handler: Any, close: Callable[[str, str], Awaitable[None]]
    ) -> MediaSession:
        """A WebSocket or phone session; `close(reason, message)` makes its transport hang up."""
        session = self._register(session_id, handler)
        self._closers[session_id] = close
        self._start_timers(session_id, pending=False)
        return session

    def release_slot(self, session_id: str, reason: str = "client_left") -> None:
        """The transport is gone: free everything (called by the transport itself, always)."""
        self._cancel_timers(session_id)
        self._closers.pop(session_id, None)
        session = self.sessions.pop(session_id, None)
        if session is not None:
            session.close()
        transport = self.transports.pop(session_id, None)
        if transport is not None:
            self.observer.session_ended(transport, reason)
            logger.info("session %s: %s session ended (%s)", session_id, transport, reason)

    def _register(self, session_id: str, handler: Any) -> MediaSession:
        session = self.session_factory(session_id, handler)
        session.reports.tap = self.observer.report
        self.sessions[session_id] = session
        return session

    def _start_timers(self, session_id: str, *, pending: bool) -> None:
        loop = asyncio.get_running_loop()

        def end_later(reason: str) -> None:
            loop.create_task(self.end_session(session_id, reason))

        if pending:
            self.pending[session_id] = loop.call_later(self.pending_timeout_s, end_later, "never_connected")
        if self.session_time_limit is not None:
            self._timers[session_id] = loop.call_later(
                self.session_time_limit, end_later, "time_limit_reached"
            )

    def _cancel_timers(self, session_id: str) -> None:
        for timers in (self.pending, self._timers):
            handle = timers.pop(session_id, None)
            if handle is not None:
                handle.cancel()

    async def handle_offer(self, body: dict[str, Any], set_outputs: Any) -> dict[str, Any]:
        """fastrtc's offer handling, with failures raised as `OfferRejected` and nothing left behind."""
        webrtc_id = str(body.get("webrtc_id"))
        is_new_offer = body.get("type") == "offer" and webrtc_id not in self.pcs
        if is_new_offer:
            self.check_room_for(webrtc_id)
            self.server_rtc_configuration = to_aiortc_configuration(self.rtc_configuration_source)
        try:
            result = await super().handle_offer(body, set_outputs)
        except Exception as exc:
            if is_new_offer:
                await self.end_session(webrtc_id)
            logger.warning("session %s: offer failed: %s", webrtc_id, exc)
            raise OfferRejected("invalid_offer", f"the offer could not be applied: {exc}") from exc
        if isinstance(result, JSONResponse):  # stock fastrtc reports refusals as HTTP 200 bodies
            meta = json.loads(bytes(result.body)).get("meta", {})
            code = str(meta.pop("error", "failed"))
            raise OfferRejected(code, _REFUSALS.get(code, code.replace("_", " ")), **meta)
        if body.get("type") == "offer":
            try:
                self._attach_session(webrtc_id)
            except Exception as exc:
                await self.end_session(webrtc_id)
                logger.exception("session %s: could not start", webrtc_id)
                raise OfferRejected("session_failed", f"the session could not start: {exc}") from exc
        return result

    def _attach_session(self, webrtc_id: str) -> None:
        pc = self.pcs[webrtc_id]
        use_low_latency_jitter_buffers(pc)
        session = self._register(webrtc_id, self.handlers.get(webrtc_id))
        replaced: list[Any] = []
        for conn in self.connections.get(webrtc_id, []):
            track: SessionTrack
            if isinstance(conn, VideoCallback):
                track = LatestFrameTrack(conn.track, cast(ProcessingSession, session))
            elif isinstance(conn, ServerToClientVideo):
                track = PacedVideoTrack(cast(GeneratingSession, session))
            else:
                replaced.append(conn)
                continue
            for sender in pc.getSenders():
                if sender.track is conn:
                    sender.replaceTrack(track)
            track.observer = self.observer
            track.start()
            replaced.append(track)
            self.tracks.setdefault(webrtc_id, []).append(track)
        self.connections[webrtc_id] = replaced

        @pc.on("connectionstatechange")
        async def _on_state() -> None:
            if pc.connectionState == "connected":
                handle = self.pending.pop(webrtc_id, None)
                if handle is not None:
                    handle.cancel()
                logger.info("session %s: connected", webrtc_id)
            elif pc.connectionState == "failed":
                await self.end_session(webrtc_id, "connection_failed")
            elif pc.connectionState == "closed":
                await self.end_session(webrtc_id, "client_left")

        self._start_timers(webrtc_id, pending=True)
        logger.info("session %s: offer accepted (%d active)", webrtc_id, len(self.pcs))

    async def end_session(self, webrtc_id: str, reason: str = "ended") -> None:
        """Idempotent, any transport: tell the client why (unless it left), close the peer, stop
        tracks and threads, free the slot."""
        self._cancel_timers(webrtc_id)
        close_transport = self._closers.pop(webrtc_id, None)
        if close_transport is not None:  # WebSocket or phone: its transport frees the slot
            await close_transport(reason, _END_MESSAGES.get(reason, reason))
            return
        pc: RTCPeerConnection | None = self.pcs.get(webrtc_id)
        session = self.sessions.get(webrtc_id)
        if pc is not None and session is not None and reason in _END_MESSAGES:
            await self._tell_ended(webrtc_id, session, reason)
        for track in self.tracks.pop(webrtc_id, []):
            track.stop()
        session = self.sessions.pop(webrtc_id, None)
        if session is not None:
            session.close()
            self.observer.session_ended("webrtc", reason)
            logger.info("session %s: ended (%s)", webrtc_id, reason)
        if pc is not None:
            with contextlib.suppress(Exception):
                await pc.close()
        self.clean_up(webrtc_id)
        self.pcs.pop(webrtc_id, None)

    async def _tell_ended(self, webrtc_id: str, session: MediaSession, reason: str) -> None:
        """On the data channel as fastrtc's `end_stream`, and on the outputs as `ended`."""
        message = _END_MESSAGES[reason]
        session.reports.publish({"type": "ended", "reason": reason, "message": message})
        channel = self.data_channels.get(webrtc_id)
        if channel is not None and getattr(channel, "readyState", "") == "open":
            with contextlib.suppress(Exception):
                channel.send(json.dumps({"type": "end_stream", "reason": reason, "data": message}))
                await asyncio.sleep(0.05)  # let the message leave before the peer closes

    async def close_all(self, reason: str = "server_shutdown") -> None:
        ids = [*self.pcs, *self._closers]
        await asyncio.gather(*(self.end_session(i, reason) for i in ids), return_exceptions=True)


_REFUSALS = {
    "concurrency_limit_reached": "the server is at its session limit for this stream; try again later",
    "server_limit_reached": "the server is at its total session limit; try again later",
    "too_many_pending_offers": "too many connections are being set up right now; try again in a moment",
    "shutting_down": "the server is shutting down; reconnect in a moment",
    "connection_already_exists": "a session with this webrtc_id already exists",
    "unknown_connection": "no session with this webrtc_id",
    "connection_closed": "the session is closed",
    "invalid_candidate_format": "the ICE candidate is malformed",
}


# Why a session ended, told to the client; a client that left itself is told nothing.
_END_MESSAGES = {
    "time_limit_reached": "the session's time limit is over",
    "server_shutdown": "the server is restarting; reconnect in a moment",
    "never_connected": "the connection was not established in time (network or firewall; TURN may help)",
    "connection_failed": "the connection to the client failed",
    "stopped_by_server": "the server ended the session",
}


def _never_called(frame: Any) -> Any:
    raise RuntimeError("HardenedStream routes video frames to its own tracks; the fastrtc handler is unused")
