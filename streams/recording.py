"""Session recordings (RECORD): what the client sent and what the server returned, per session.

Each recorded session gets two Matroska files in RECORD_DIR, `{stream}-{session_id}-in.mkv` (the
client's camera and microphone) and `{stream}-{session_id}-out.mkv` (the video and audio sent back),
each with the stream's kinds: H.264 video (VP8 or MPEG-4 where this PyAV has no x264) at the first
frame's size, Opus audio at 48 kHz.

The session never waits for the disk: the hooks (on the event loop) only put a frame reference and
the wall-clock time on a bounded queue, and one writer thread per session converts, encodes and
writes; when the queue is full the frame is dropped and counted. Timestamps are wall-clock seconds
since the session started, shared by both files, so durations are real and in and out line up;
audio stays continuous (gaps are filled with silence as the clock passes them). A recording stops
at RECORD_MAX_BYTES (both files together) or RECORD_MAX_S, its files closed properly. `close()` is
bounded and idempotent, and nothing here raises into the session.
"""

from __future__ import annotations

import contextlib
import fractions
import functools
import logging
import os
import queue
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import numpy as np

if TYPE_CHECKING:
    from streams.runtime import StreamObserver
    from streams.stream import Stream

logger = logging.getLogger(__name__)

AUDIO_RATE = 48_000  # Opus's own rate, and WebRTC's: most audio needs no resampling
MS = fractions.Fraction(1, 1000)
AUDIO_TIME_BASE = fractions.Fraction(1, AUDIO_RATE)
# (encoder, options): the first this PyAV wheel has. One thread each: a session's recording costs
# at most a core, however many sessions run.
VIDEO_CODECS: tuple[tuple[str, dict[str, str]], ...] = (
    ("libx264", {"preset": "ultrafast", "tune": "zerolatency", "crf": "26", "threads": "1"}),
    ("libvpx", {"deadline": "realtime", "cpu-used": "8", "b": "1500k", "threads": "1"}),
    ("mpeg4", {"q": "5", "threads": "1"}),
)
OPEN_WAIT_S = 1.0  # an audio-video file waits this long for its second kind before its header is written
MAX_QUEUED_ITEMS = 256  # ~1.5 s of both directions of 30 fps video and 20 ms audio
MAX_QUEUED_BYTES = 32 * 1024 * 1024  # decoded frames waiting for the writer (an 8K camera fills it fast)
AUDIO_GAP_S = 0.06  # audio that arrives this much after the previous chunk ended left a gap: filled
AUDIO_FILL_LAG_S = 0.5  # silence is filled up to this far behind the clock while nothing comes
IDLE_TICK_S = 0.25
CLOSE_DRAIN_S = 2.0  # at the end, frames still queued after this are dropped, not encoded
CLOSE_TIMEOUT_S = 5.0  # `close()` returns after this, whatever the writer does
WRITER_NICE = 10  # the writer thread's niceness, above the process's own
CONTAINER_RESERVE_BYTES = 64 * 1024  # headers, cues and the encoders' last packets, under the size cap
PACKET_OVERHEAD_BYTES = 16  # a Matroska block's framing, at most (a 20 ms Opus packet is ~160 bytes)

_CLOSE = object()
_SAFE_ID = re.compile(r"[^A-Za-z0-9_.:-]")


@dataclass(frozen=True)
class RecordingPolicy:
    """Where and how much to record (RECORD_DIR, RECORD_MAX_BYTES, RECORD_MAX_S); a server sets
    `stream.recording` to one to record that stream's sessions."""

    dir: Path
    max_bytes: int = 1024 * 1024 * 1024
    max_s: float = 3600.0


@functools.cache
def video_encoder() -> tuple[str, dict[str, str]]:
    """The first encoder of `VIDEO_CODECS` this PyAV wheel can open."""
    for name, options in VIDEO_CODECS:
        with contextlib.suppress(Exception):
            av.Codec(name, "w")
            return name, options
    raise RuntimeError("this PyAV has none of libx264, libvpx, mpeg4 to record video with")


def prepare_dir(path: Path) -> Path:
    """Create RECORD_DIR (0750) and prove it writable now, so a bad setting fails at start, not at
    the first session. Raises `OSError` with what went wrong."""
    path.mkdir(mode=0o750, parents=True, exist_ok=True)
    probe = path / f".write-test-{os.getpid()}"
    fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
    os.close(fd)
    probe.unlink()
    return path


def _kinds(modality: str) -> frozenset[str]:
    return frozenset(("audio", "video") if modality == "audio-video" else (modality,))


class SessionRecorder:
    """One session's recording: hooks called on the event loop, one writer thread doing the rest."""

    @classmethod
    def for_stream(cls, stream: Stream, session_id: str, started: float) -> SessionRecorder | None:
        """A recorder when the server records `stream` (`stream.recording`), else None."""
        policy = stream.recording
        if policy is None:
            return None
        return cls(policy, stream.name or "stream", session_id, stream.modality, stream.observer,
                   started=started, max_pixels=stream.max_frame_pixels, sends_back=stream.mode != "send")  # fmt: skip

    def __init__(
        self,
        policy: RecordingPolicy,
        stream_name: str,
        session_id: str,
        modality: str = "video",
        observer: StreamObserver | None = None,
        *,
        started: float | None = None,
        max_pixels: int | None = None,
        sends_back: bool = True,
    ) -> None:
        from streams.runtime import StreamObserver

        self.policy = policy
        self.session_id = session_id
        self.observer = observer or StreamObserver()
        self.t0 = time.monotonic() if started is None else started
        self.max_pixels = max_pixels
        self.sends_back = sends_back
        self.base = f"{stream_name}-{_SAFE_ID.sub('_', session_id)}"
        self.paths: dict[str, Path] = {}  # "in" / "out" -> the file, once opened
        self.bytes_written = 0
        self.dropped = 0
        self.stopped: str | None = None  # why the recording stopped early ("size cap", ...)
        self.closed = False
        kinds = _kinds(modality)
        self._files = {d: _File(self, d, kinds) for d in ("in", "out")}
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._queued = 0
        self._queued_bytes = 0
        self._thread: threading.Thread | None = None
        self._close_at: float | None = None
        self._budget_used = 0  # packets muxed, with their framing, against RECORD_MAX_BYTES

    # ---- hooks (event loop; cheap, never raise) ----
    def attach(self, track: Any) -> None:
        """Record what `track` takes from the client (`on_frame`, camera frames) and what it sends
        back (`on_sent`): a `streams.runtime` video track, or `PacedAudioTrack`."""
        if hasattr(track, "on_frame"):
            track.on_frame = self._offered
        if self.sends_back and hasattr(track, "on_sent"):
            track.on_sent = self.video_out if track.kind == "video" else self.audio_out

    def _offered(self, frame: av.VideoFrame, origin: str) -> None:
        if origin == "camera":  # a server-side source is not what the client sent
            self.video_in(frame)

    def video_in(self, frame: av.VideoFrame) -> None:
        self._put("in", "video", frame, frame.width * frame.height * 2)

    def video_out(self, frame: av.VideoFrame) -> None:
        self._put("out", "video", frame, frame.width * frame.height * 2)

    def audio_in(self, rate: int, samples: np.ndarray) -> None:
        self._put("in", "audio", (rate, np.array(samples, copy=True)), samples.nbytes)

    def audio_out(self, rate: int, samples: np.ndarray) -> None:
        self._put("out", "audio", (rate, np.array(samples, copy=True)), samples.nbytes)

    def _put(self, direction: str, kind: str, payload: Any, nbytes: int) -> None:
        """A frame reference and its wall-clock time onto the queue, or dropped (counted) when the
        writer is behind. The frame is not copied: frames are not changed once made."""
        if self.stopped is not None or self._close_at is not None:
            return
        try:
            with self._lock:
                full = self._queued >= MAX_QUEUED_ITEMS or (
                    self._queued_bytes > 0 and self._queued_bytes + nbytes > MAX_QUEUED_BYTES
                )  # one frame however large may wait: an 8K camera is recorded, slowly, not never
                if not full:
                    self._queued += 1
                    self._queued_bytes += nbytes
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name=f"record-{self.session_id[:12]}", daemon=True
                    )
                    self._thread.start()
            if full:
                self._dropped(1)
                return
            self._queue.put((direction, kind, time.monotonic() - self.t0, payload, nbytes))
        except Exception:
            logger.exception("session %s: recording hook failed", self.session_id)

    def _dropped(self, count: int) -> None:
        if self.dropped == 0:
            logger.warning("session %s: the recording falls behind; frames are dropped", self.session_id)
        self.dropped += count
        for _ in range(count):
            self.observer.recording_dropped()

    # ---- the end ----
    def close(self) -> None:
        """Flush what is queued (for at most `CLOSE_DRAIN_S`), flush the encoders, write the
        trailers. Idempotent, thread-safe, returns within `CLOSE_TIMEOUT_S`, never raises."""
        with self._lock:
            first = self._close_at is None
            if first:
                self._close_at = time.monotonic()
            thread = self._thread
        if thread is None:
            self.closed = True
            return
        if first:
            self._queue.put(_CLOSE)
        thread.join(CLOSE_TIMEOUT_S)
        if thread.is_alive():
            logger.warning("session %s: the recording did not finish closing in %.0f s",
                           self.session_id, CLOSE_TIMEOUT_S)  # fmt: skip

    # ---- the writer thread ----
    def _run(self) -> None:
        _lower_priority()
        try:
            while True:
                try:
                    item = self._queue.get(timeout=IDLE_TICK_S)
                except queue.Empty:
                    item = None
                if item is _CLOSE:
                    break
                if item is not None:
                    direction, kind, t, payload, nbytes = item
                    with self._lock:
                        self._queued -= 1
                        self._queued_bytes -= nbytes
                    if self._close_at is not None and time.monotonic() - self._close_at > CLOSE_DRAIN_S:
                        self._dropped(1)  # the end must not wait for a long backlog
                        continue
                    if self.stopped is None:
                        self._check_duration(t)
                    if self.stopped is None:
                        self._files[direction].add(kind, t, payload)
                if self.stopped is None:
                    now = time.monotonic() - self.t0
                    self._check_duration(now)
                    for file in self._files.values():
                        file.tick(now)
                if self.stopped is not None:
                    break  # at a cap: the files are closed, and nothing more will be taken
        except Exception:
            self.stopped = "error"  # the hooks take nothing more
            logger.exception("session %s: recording failed; what was written is kept", self.session_id)
        finally:
            end = (self._close_at or time.monotonic()) - self.t0
            for file in self._files.values():
                file.finish(min(end, self.policy.max_s))
            self.closed = True
            if self.paths:
                logger.info(
                    "session %s: recording closed: %s (%d bytes%s%s)", self.session_id,
                    ", ".join(p.name for p in self.paths.values()), self.bytes_written,
                    f", {self.dropped} frames dropped" if self.dropped else "",
                    f", stopped at the {self.stopped}" if self.stopped else "",
                )  # fmt: skip

    def _check_duration(self, t: float) -> None:
        if t > self.policy.max_s:
            self._stop(f"duration cap (RECORD_MAX_S={self.policy.max_s:g})")

    def _stop(self, why: str) -> None:
        """Stop recording now (a cap): the files are finished and closed here, in the writer."""
        if self.stopped is None:
            self.stopped = why
            logger.warning("session %s: recording stopped at the %s", self.session_id, why)
            end = min(time.monotonic() - self.t0, self.policy.max_s)
            for file in self._files.values():
                file.finish(end)

    def _room_for(self, n_bytes: int) -> bool:
        """Whether a packet of `n_bytes` keeps both files, with their container overhead, under the
        cap (counted as it is muxed: the muxer buffers a cluster before the file grows)."""
        cost = n_bytes + PACKET_OVERHEAD_BYTES
        if self._budget_used + cost > self.policy.max_bytes - CONTAINER_RESERVE_BYTES:
            self._stop(f"size cap (RECORD_MAX_BYTES={self.policy.max_bytes})")
            return False
        self._budget_used += cost
        return True

    def _written(self, n_bytes: int) -> None:
        if n_bytes > 0:
            self.bytes_written += n_bytes
            self.observer.recording_written(n_bytes)

    def _path(self, direction: str) -> Path:
        """`{dir}/{stream}-{session_id}-{direction}.mkv`, created 0640; a reused session id gets a
        numbered name instead of overwriting an earlier recording."""
        other = "out" if direction == "in" else "in"
        if other in self.paths:
            base = self.paths[other].name.rsplit("-", 1)[0]
            candidates = [base]
        else:
            candidates = [self.base, *(f"{self.base}-{n}" for n in range(2, 1000))]
        for base in candidates:
            path = self.policy.dir / f"{base}-{direction}.mkv"
            if other not in self.paths and (self.policy.dir / f"{base}-{other}.mkv").exists():
                continue
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640))
            except FileExistsError:
                continue
            self.paths[direction] = path
            return path
        raise FileExistsError(f"no free recording name for {self.base}")


class _File:
    """One direction's container, opened when its first frames have come (the header needs every
    stream's parameters), written only by the writer thread."""

    def __init__(self, recorder: SessionRecorder, direction: str, kinds: frozenset[str]) -> None:
        self.recorder = recorder
        self.direction = direction
        self.kinds = kinds
        self.pending: list[tuple[str, float, Any]] = []
        self.container: Any = None
        self.video: Any = None
        self.audio: Any = None
        self.size: tuple[int, int] = (0, 0)
        self.last_pts = -1  # video, ms
        self.cursor: int | None = None  # audio: the next sample's position, at AUDIO_RATE
        self.resampler: av.AudioResampler | None = None
        self.resampler_rate = 0
        self.muxed = 0
        self.finished = False

    def add(self, kind: str, t: float, payload: Any) -> None:
        if self.finished:
            return
        if self.container is None:
            self.pending.append((kind, t, payload))
            seen = {k for k, _, _ in self.pending}
            if seen >= self.kinds or t - self.pending[0][1] >= OPEN_WAIT_S:
                self._open()
            return
        self._write(kind, t, payload)

    def tick(self, now: float) -> None:
        """Idle time: open a file still waiting for a kind that is not coming; keep audio continuous."""
        if self.finished:
            return
        if self.container is None:
            if self.pending and now - self.pending[0][1] >= OPEN_WAIT_S:
                self._open()
            return
        if self.audio is not None and self.cursor is not None:
            self._fill_to(now - AUDIO_FILL_LAG_S)

    def _open(self) -> None:
        pending, self.pending = self.pending, []
        path = self.recorder._path(self.direction)
        self.container = av.open(str(path), "w", format="matroska")
        kinds = {k for k, _, _ in pending}
        if "video" in kinds:
            first = next(frame for k, _, frame in pending if k == "video")
            self.size = _even_size(first.width, first.height, self.recorder.max_pixels)
            name, options = video_encoder()
            stream = self.container.add_stream(name, rate=30, options=dict(options))
            stream.width, stream.height = self.size
            stream.pix_fmt = "yuv420p"
            stream.time_base = MS
            stream.codec_context.time_base = MS
            stream.codec_context.gop_size = 60
            self.video = stream
        if "audio" in kinds:
            stream = self.container.add_stream("libopus", rate=AUDIO_RATE)
            stream.layout = "mono"
            stream.time_base = AUDIO_TIME_BASE
            self.audio = stream
        for kind, t, payload in pending:
            if not self.finished:
                self._write(kind, t, payload)

    def _write(self, kind: str, t: float, payload: Any) -> None:
        if self.finished:  # a cap was hit while this file was being written
            return
        if kind == "video" and self.video is not None:
            self._write_video(t, payload)
        elif kind == "audio" and self.audio is not None:
            self._write_audio(t, *payload)

    def _write_video(self, t: float, frame: av.VideoFrame) -> None:
        width, height = self.size
        out = frame.reformat(width=width, height=height, format="yuv420p")
        if out is frame:  # the session's own frame: never change its pts, encode a copy
            out = av.VideoFrame.from_ndarray(frame.to_ndarray(), format="yuv420p")
        pts = max(int(t * 1000), self.last_pts + 1)
        self.last_pts = pts
        out.pts, out.time_base = pts, MS
        self._mux(self.video.encode(out))

    def _write_audio(self, t: float, rate: int, samples: np.ndarray) -> None:
        samples = _int16(samples)
        if not samples.size:
            return
        start = t - samples.size / rate if self.direction == "in" else t  # in: it ended as it came
        if self.cursor is None:
            self.cursor = max(0, int(start * AUDIO_RATE))
        elif start * AUDIO_RATE - self.cursor > AUDIO_GAP_S * AUDIO_RATE:
            self._fill_to(start)
        if self.resampler is None or rate != self.resampler_rate:
            self.resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_RATE)
            self.resampler_rate = rate
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        for out in self.resampler.resample(frame):
            self._encode_audio(out)

    def _fill_to(self, t: float) -> None:
        """Silence from the audio cursor up to `t` seconds (nothing when the audio is ahead)."""
        assert self.cursor is not None
        missing = int(t * AUDIO_RATE) - self.cursor
        while missing > 0 and not self.finished:
            n = min(missing, AUDIO_RATE // 2)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, n), np.int16), format="s16", layout="mono")
            frame.sample_rate = AUDIO_RATE
            self._encode_audio(frame)
            missing -= n

    def _encode_audio(self, frame: av.AudioFrame) -> None:
        assert self.cursor is not None
        if self.finished:
            return
        frame.pts, frame.time_base = self.cursor, AUDIO_TIME_BASE
        self.cursor += frame.samples
        self._mux(self.audio.encode(frame))

    def _mux(self, packets: list[av.Packet]) -> None:
        for packet in packets:
            if self.finished or not self.recorder._room_for(packet.size):
                return
            self.container.mux(packet)
            self.muxed += packet.size
            self.recorder._written(packet.size)

    def finish(self, end_s: float) -> None:
        """Audio filled to `end_s`, the encoders flushed, the trailer written; once, never raises."""
        if self.finished:
            return
        try:
            if self.container is None and self.pending:
                self._open()
            if self.container is None:
                return
            if self.audio is not None and self.cursor is not None:
                self._fill_to(end_s)
            for stream in (self.video, self.audio):
                if stream is not None and not self.finished:
                    self._mux(stream.encode(None))
        except Exception:
            logger.exception("session %s: finishing the %s recording failed", self.recorder.session_id,
                             self.direction)  # fmt: skip
        finally:
            self.finished = True
            self._close_container()

    def _close_container(self) -> None:
        container, self.container = self.container, None
        if container is None:
            return
        try:
            container.close()
        except Exception:
            logger.exception("session %s: closing the %s recording failed", self.recorder.session_id,
                             self.direction)  # fmt: skip
        path = self.recorder.paths.get(self.direction)
        with contextlib.suppress(OSError):
            if path is not None:
                self.recorder._written(path.stat().st_size - self.muxed)  # the container's own bytes


def _lower_priority() -> None:
    """The calling thread (a writer, with its encoders) yields the CPU to the sessions' own threads
    (Linux schedules threads by their own nice value): a busy machine delays the recording, whose
    queue then drops frames, rather than the media."""
    with contextlib.suppress(AttributeError, OSError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + WRITER_NICE))


def _even_size(width: int, height: int, max_pixels: int | None) -> tuple[int, int]:
    """The recording's video size: the first frame's, within `max_pixels`, even sides (yuv420p)."""
    scale = 1.0
    if max_pixels is not None and width * height > max_pixels:
        scale = (max_pixels / (width * height)) ** 0.5
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def _int16(samples: np.ndarray) -> np.ndarray:
    """Mono int16 from what handlers use (int16, or float in [-1, 1]; any shape of one channel)."""
    array = np.asarray(samples).reshape(-1)
    if array.dtype.kind == "f":
        return (np.clip(array, -1, 1) * 32767).astype(np.int16)
    return np.ascontiguousarray(array.astype(np.int16, copy=False))
