"""The hardened media runtime: per-session workers, tracks that never queue without bound, reports.

Measured problems of stock fastrtc 0.0.34 (see README, "What we fix in fastrtc") and where they are fixed:

- handlers run synchronously on the event loop      -> `Worker`: one thread per session
- the decoded-frame queue is unbounded               -> `LatestFrameTrack` (newest frame) or
                                                        `QueuedFrameTrack` (bounded, drops counted)
- receive generators ignore later inputs, burst      -> `PacedVideoTrack` paces at the live target rate
- frames pass through untouched until `set_input`    -> inputs start from the handler's defaults
- the first handler exception kills the output       -> tracks report it and keep going
- additional outputs queue without bound             -> `ReportChannel` keeps a bounded backlog
- aiortc holds each received frame one frame interval -> `streams.jitter.MarkerJitterBuffer`
- no server-wide limit, no cap on unconnected offers -> `SessionBudget`
"""

from __future__ import annotations

import asyncio
import contextvars
import fractions
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import VIDEO_TIME_BASE, MediaStreamError

if TYPE_CHECKING:
    from streams.stream import Stream

logger = logging.getLogger(__name__)


class OfferRejected(Exception):
    """A session the server refuses; `code` is machine-readable, the message is for people."""

    def __init__(self, code: str, message: str | None = None, **meta: Any) -> None:
        message = message or REFUSALS.get(code, code.replace("_", " "))
        super().__init__(message)
        self.code = code
        self.message = message
        self.meta = meta


REFUSALS = {
    "concurrency_limit_reached": "the server is at its session limit for this stream; try again later",
    "server_limit_reached": "the server is at its total session limit; try again later",
    "too_many_pending_offers": "too many connections are being set up right now; try again in a moment",
    "shutting_down": "the server is shutting down; reconnect in a moment",
    "connection_already_exists": "a session with this webrtc_id already exists",
    "unknown_connection": "no session with this webrtc_id",
    "connection_closed": "the session is closed",
    "invalid_candidate_format": "the ICE candidate is malformed",
    "too_many_listeners": "this session's outputs already have as many listeners as allowed",
    "too_many_pending_offers_from_client": "this address has too many connections still being set up; "
    "finish or close them first",
}


class StreamObserver:
    """Hooks a server attaches for its metrics; the default does nothing (streams know no Prometheus)."""

    def frame_received(self) -> None: ...
    def frame_dropped(self) -> None: ...
    def frame_sent(self, processing_s: float, latency_s: float | None) -> None: ...
    def handler_error(self) -> None: ...
    def report(self, report: dict[str, Any]) -> None: ...
    def session_ended(self, transport: str, reason: str) -> None: ...
    def session_refused(self, transport: str, reason: str) -> None: ...
    def recording_written(self, n_bytes: int) -> None: ...  # from a recording's writer thread
    def recording_dropped(self) -> None: ...  # a frame the recording could not keep up with


class SessionBudget:
    """Limits shared by every stream of one server: total sessions on all transports, offers that
    have not connected yet, and a drain switch for shutdown. Streams without a budget get their own."""

    def __init__(
        self,
        max_sessions: int | None = None,
        max_pending: int | None = None,
        max_pending_per_client: int | None = None,
    ) -> None:
        self.max_sessions = max_sessions
        self.max_pending = max_pending
        self.max_pending_per_client = max_pending_per_client
        self.streams: list[Stream] = []
        self.draining = False

    @property
    def active_sessions(self) -> int:
        return sum(s.active_sessions for s in self.streams)

    @property
    def pending_offers(self) -> int:
        return sum(s.pending_offers for s in self.streams)

    def pending_from(self, client: str) -> int:
        return sum(1 for s in self.streams for x in s.sessions.values() if x.pending and x.client == client)

    def check(self, *, webrtc: bool, client: str | None = None) -> None:
        """Raise `OfferRejected` when the server as a whole cannot take one more session, or this
        client already has its share of offers that never connected (slot squatting, issue 13)."""
        if self.draining:
            raise OfferRejected("shutting_down")
        if self.max_sessions is not None and self.active_sessions >= self.max_sessions:
            raise OfferRejected("server_limit_reached", limit=self.max_sessions)
        if webrtc and self.max_pending is not None and self.pending_offers >= self.max_pending:
            raise OfferRejected("too_many_pending_offers", limit=self.max_pending)
        per_client = self.max_pending_per_client
        if (
            webrtc
            and client is not None
            and per_client is not None
            and self.pending_from(client) >= per_client
        ):
            raise OfferRejected("too_many_pending_offers_from_client", limit=per_client)


class ReportChannel:
    """Per-session reports for any number of listeners, each with a bounded backlog (oldest dropped).

    Stock fastrtc puts every `AdditionalOutputs` in an unbounded queue that grows forever when
    nobody reads it; a 30 fps handler reporting per frame would leak memory.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, backlog: int = 16, max_listeners: int = 4) -> None:
        self._loop = loop
        self._backlog = backlog
        self.max_listeners = max_listeners  # a page and a dashboard or two; not 400 (issue 13)
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

    def listen(self) -> AsyncIterator[dict[str, Any]]:
        """Reports until the session ends. The listener counts from this call (not from the first
        read), so concurrent requests cannot all pass the `max_listeners` check."""
        if len(self._listeners) >= self.max_listeners:
            raise OfferRejected("too_many_listeners", limit=self.max_listeners)
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(self._backlog)
        self._listeners.add(queue)
        if self.last is not None:
            queue.put_nowait(self.last)
        return self._read(queue)

    async def _read(self, queue: asyncio.Queue[dict[str, Any] | None]) -> AsyncIterator[dict[str, Any]]:
        try:
            while not self.closed or not queue.empty():
                item = await queue.get()
                if item is None:
                    return
                yield item
        finally:
            self._listeners.discard(queue)


class Worker:
    """A session's own thread: its handler never delays another session, nor the event loop.

    `context` (contextvars) is entered in the thread once, so `get_current_context()` and
    `current_session()` name this session inside the handler.
    """

    def __init__(self, name: str, context: contextvars.Context | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._context = context
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=name, initializer=self._enter)
        self.closed = False

    def _enter(self) -> None:
        if self._context is not None:
            for var, value in self._context.items():
                var.set(value)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` in the session's thread; `MediaStreamError` once the session is closing."""
        if self.closed:
            raise MediaStreamError
        try:
            return await self._loop.run_in_executor(self._executor, fn, *args)
        except RuntimeError as exc:  # executor shut down while we waited: the session is ending
            if self.closed:
                raise MediaStreamError from exc
            raise

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._executor.shutdown(wait=False, cancel_futures=True)


# A frame processor: one incoming frame -> the frame to send, or None to send nothing for it.
FrameProcessor = Callable[[av.VideoFrame], av.VideoFrame | None]


class SessionTrack(MediaStreamTrack):
    """An outgoing track whose work runs in the session's `Worker`; `stop` is idempotent."""

    kind = "video"

    def __init__(self, session_id: str, worker: Worker, observer: StreamObserver | None = None) -> None:
        super().__init__()
        self.session_id = session_id
        self.worker = worker
        self.observer = observer or StreamObserver()
        self.frames_out = 0
        self.on_sent: Callable[[av.VideoFrame], None] | None = None  # each frame sent (recording)

    def start(self) -> None:
        """Called once the peer is set up; tracks that need background work start it here."""

    def stop(self) -> None:
        if self.readyState != "ended":
            super().stop()


class _IncomingVideoTrack(SessionTrack):
    """Shared by the send-receive video tracks: a pump drains the incoming track as frames arrive,
    so a client that never asks for output cannot make aiortc's receiver queue grow.

    Frames come from the client's camera or from a server-side source (`streams.sources`), whichever
    is active (`use`); both go through `offer_frame`, so the same newest-frame (or bounded) rule
    holds for every source. A camera that is not in use is still drained, and its frames dropped.
    `on_frame` sees every frame the active source delivers (recording hooks in there).
    """

    def __init__(self, source: MediaStreamTrack | None, process: FrameProcessor, session_id: str,
                 worker: Worker, observer: StreamObserver | None = None) -> None:  # fmt: skip
        super().__init__(session_id, worker, observer)
        self.source = source  # the client's camera; None when the offer sends no video
        self.process = process
        self.origin = "camera"  # or "server": which source's frames are processed
        self.on_frame: Callable[[av.VideoFrame, str], None] | None = None
        self.frames_in = 0
        self.frames_dropped = 0
        self._fresh = asyncio.Event()
        self._source_ended = False
        self._pump_task: asyncio.Task[None] | None = None
        self._t0: float | None = None

    def _accept(self, frame: av.VideoFrame) -> None:
        raise NotImplementedError

    def _take(self) -> tuple[av.VideoFrame, float] | None:
        raise NotImplementedError

    def _clear(self) -> None:
        raise NotImplementedError

    def use(self, origin: str) -> None:
        """Process frames from `origin` ("camera" or "server") from now on; queued ones are dropped."""
        if origin != self.origin:
            self.origin = origin
            self._clear()

    def offer_frame(self, frame: av.VideoFrame, origin: str = "camera") -> None:
        """On the event loop: a frame from `origin`, kept if that source is the active one."""
        if origin != self.origin or self.readyState != "live":
            return
        self.frames_in += 1
        self.observer.frame_received()
        if self.on_frame is not None:
            self.on_frame(frame, origin)
        self._accept(frame)
        self._fresh.set()

    async def _pump(self) -> None:
        if self.source is None:
            return
        try:
            while True:
                self.offer_frame(await self.source.recv(), "camera")
        except MediaStreamError:
            pass
        except Exception:
            logger.exception("session %s: incoming video failed", self.session_id)
        finally:
            self._source_ended = True
            self._fresh.set()

    def _dropped(self) -> None:
        self.frames_dropped += 1
        self.observer.frame_dropped()

    def start(self) -> None:
        if self._pump_task is None:
            self._pump_task = asyncio.create_task(self._pump(), name=f"pump-{self.session_id}")

    async def recv(self) -> av.VideoFrame:
        self.start()
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            taken = self._take()
            if taken is None:
                if self._source_ended and self.origin == "camera":
                    self.stop()
                    raise MediaStreamError
                self._fresh.clear()
                await self._fresh.wait()
                continue
            frame, received_at = taken
            started = time.monotonic()
            out = await self.worker.run(self.process, frame)
            if out is None:  # the handler sent nothing for this frame (outputs only)
                continue
            # stamped by arrival on one clock: the camera's RTP times and a source's would jump (even
            # backwards) when the session switches between them, and the browser would stall
            self._t0 = received_at if self._t0 is None else self._t0
            out.pts, out.time_base = int((received_at - self._t0) * 90_000), VIDEO_TIME_BASE
            self.frames_out += 1
            done = time.monotonic()
            self.observer.frame_sent(done - started, done - received_at)
            if self.on_sent is not None:
                self.on_sent(out)
            return out

    def stop(self) -> None:
        if self.readyState == "ended":
            return
        self._source_ended = True
        self._fresh.set()
        if self._pump_task is not None:
            self._pump_task.cancel()
        if self.source is not None:
            self.source.stop()
        super().stop()


class LatestFrameTrack(_IncomingVideoTrack):
    """Processes only the newest incoming frame (`skip_frames=True`).

    A slow handler lowers the output rate instead of building up lag or memory.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._latest: tuple[av.VideoFrame, float] | None = None

    def _accept(self, frame: av.VideoFrame) -> None:
        if self._latest is not None:
            self._dropped()
        self._latest = (frame, time.monotonic())

    def _take(self) -> tuple[av.VideoFrame, float] | None:
        taken, self._latest = self._latest, None
        return taken

    def _clear(self) -> None:
        self._latest = None


class QueuedFrameTrack(_IncomingVideoTrack):
    """Processes every frame through a small bounded queue (`skip_frames=False`); when the handler
    falls further behind than `maxsize` frames the oldest is dropped, and counted."""

    def __init__(self, *args: Any, maxsize: int = 4, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queue: deque[tuple[av.VideoFrame, float]] = deque()
        self.maxsize = maxsize

    def _accept(self, frame: av.VideoFrame) -> None:
        if len(self._queue) >= self.maxsize:
            self._queue.popleft()
            self._dropped()
        self._queue.append((frame, time.monotonic()))

    def _take(self) -> tuple[av.VideoFrame, float] | None:
        return self._queue.popleft() if self._queue else None

    def _clear(self) -> None:
        self._queue.clear()


# A frame producer: stream time in seconds -> the next frame (None: nothing this time).
FrameProducer = Callable[[float], av.VideoFrame | None]


class PacedVideoTrack(SessionTrack):
    """Sends produced frames at the *current* target rate, drift-free and burst-free.

    Deadlines advance by the current interval from the previous deadline (no drift); a new rate
    applies to the very next frame; when the source falls more than a frame behind, the schedule
    restarts from now instead of catching up in a burst. Stock fastrtc creates its generator once,
    ignores later inputs and bursts after a late start.
    """

    def __init__(self, produce: FrameProducer, fps: Callable[[], float], session_id: str, worker: Worker,
                 observer: StreamObserver | None = None, on_stop: Callable[[], None] | None = None) -> None:  # fmt: skip
        super().__init__(session_id, worker, observer)
        self.produce = produce
        self.fps = fps
        self.on_stop = on_stop
        self._t0: float | None = None
        self._deadline = 0.0
        self.late_restarts = 0
        self._blank: av.VideoFrame | None = None

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = self._deadline = now
        else:
            interval = 1.0 / max(0.1, self.fps())
            self._deadline += interval
            if now - self._deadline > interval:
                self._deadline = now
                self.late_restarts += 1
            delay = self._deadline - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        started = time.monotonic()
        pts_s = self._deadline - self._t0
        frame = await self.worker.run(self.produce, pts_s)
        if frame is None:  # nothing new: repeat a blank so the receiver's clock keeps running
            frame = self._blank or av.VideoFrame.from_ndarray(
                np.zeros((480, 640, 3), np.uint8), format="bgr24"
            )
        self._blank = self._blank or frame
        frame.pts = int(pts_s * 90000)
        frame.time_base = VIDEO_TIME_BASE
        self.frames_out += 1
        self.observer.frame_sent(time.monotonic() - started, None)
        if self.on_sent is not None:
            self.on_sent(frame)
        return frame

    def stop(self) -> None:
        if self.readyState == "ended":
            return
        super().stop()
        if self.on_stop is not None:
            self.on_stop()


AUDIO_PTIME = 0.020


class PacedAudioTrack(MediaStreamTrack):
    """Outgoing audio: 20 ms frames from a bounded queue, paced to real time, nothing when empty.

    The producer side (`put`) waits when the queue is full, so a handler that yields audio faster
    than real time is slowed down instead of growing memory. `clear()` drops what is queued (barge-in).
    """

    kind = "audio"

    def __init__(self, sample_rate: int, max_queued_s: float = 2.0) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.samples_per_frame = int(sample_rate * AUDIO_PTIME)
        self._queue: asyncio.Queue[np.ndarray] = asyncio.Queue(
            maxsize=max(2, int(max_queued_s / AUDIO_PTIME))
        )
        self._pending = np.zeros(0, np.int16)
        self._start: float | None = None
        self._timestamp = 0
        self._time_base = fractions.Fraction(1, sample_rate)
        self.on_sent: Callable[[int, np.ndarray], None] | None = None  # (rate, samples) sent (recording)

    async def put(self, samples: np.ndarray) -> None:
        """Queue int16 mono samples at `sample_rate` (any length), 20 ms at a time."""
        data = np.concatenate([self._pending, samples.astype(np.int16, copy=False).reshape(-1)])
        n = len(data) // self.samples_per_frame * self.samples_per_frame
        for i in range(0, n, self.samples_per_frame):
            await self._queue.put(data[i : i + self.samples_per_frame])
        self._pending = data[n:]

    async def flush(self) -> None:
        """Queue a last partial frame, padded with silence (the end of a reply)."""
        if len(self._pending):
            pad = np.zeros(self.samples_per_frame - len(self._pending), np.int16)
            await self._queue.put(np.concatenate([self._pending, pad]))
            self._pending = np.zeros(0, np.int16)

    def clear(self) -> int:
        dropped = self._queue.qsize()
        while not self._queue.empty():
            self._queue.get_nowait()
        self._pending = np.zeros(0, np.int16)
        return dropped

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._queue.empty():
            # Nothing to say: send nothing until there is (as stock fastrtc does). Encoding 50
            # frames of silence a second costs an idle session ~5% of a core; receivers conceal
            # the gap. The clock then jumps by the idle time, so the reply starts at once.
            samples = await self._queue.get()
            now = time.monotonic()
            if self._start is None:
                self._start = now
            else:
                self._timestamp += self.samples_per_frame
                due = self._start + self._timestamp / self.sample_rate
                if now > due:
                    idle = int((now - due) * self.sample_rate) // self.samples_per_frame
                    self._timestamp += idle * self.samples_per_frame
                    self._start = now - self._timestamp / self.sample_rate
                else:
                    await asyncio.sleep(due - now)
        else:
            samples = self._queue.get_nowait()
            if self._start is None:
                self._start = time.monotonic()
            else:
                self._timestamp += self.samples_per_frame
                wait = self._start + self._timestamp / self.sample_rate - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                elif wait < -0.2:  # far behind (a stalled loop): restart the clock, never burst
                    self._start = time.monotonic() - self._timestamp / self.sample_rate
        if self.on_sent is not None:
            self.on_sent(self.sample_rate, samples)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._timestamp
        frame.time_base = self._time_base
        return frame
