"""Each handler shape fastrtc documents, served for one session with the hardened runtime.

- `VideoProcessMedia`: send-receive video, `fn(frame, *inputs) -> frame | (frame, AdditionalOutputs)`
- `VideoGenerateMedia`: receive video, a generator `gen(*inputs)` paced at a live `fps`
- `AudioHandlerMedia`: audio `StreamHandler`/`AsyncStreamHandler` (and `ReplyOnPause`), on WebRTC,
  WebSocket and phone alike
- `AudioVideoMedia`: `AudioVideoStreamHandler`, audio and video on one peer

Handlers run off the event loop where they are synchronous (the session's `Worker`); a raising
handler is reported (log, data channel, metrics) and the stream goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from streams import fastrtc_adapter as adapter
from streams import incidents
from streams.runtime import (
    LatestFrameTrack,
    PacedAudioTrack,
    PacedVideoTrack,
    QueuedFrameTrack,
)
from streams.sources import SourceFeed, SourceInfo, without_credentials
from streams.vad import resample

MAX_UNPLAYED_MARKS = 256
MAX_AUDIO_AHEAD_S = 1.0  # network bursts; a client never needs to be further ahead
MARK_ECHO_TIMEOUT_S = 2.0
DTX_GAP_TOLERANCE_S = 0.03  # a timestamp step up to this beyond one frame is jitter, not a gap
DTX_GAP_SLACK_S = 0.1  # how far filled silence may run ahead of the wall clock
DTX_MAX_GAP_S = 2.0  # the most silence one gap is filled with, whatever its timestamps say
DTX_CLOCK_DRIFT = 0.01  # a sender's clock may run this much fast (real ones: 0.01%)
# A DTX sender's silence is only told by its next packet, 400 ms on; the handler is handed zeros on
# the wall clock meanwhile (`DtxGaps.prefill`), or every pause would end ~200 ms late.
DTX_PREFILL_AFTER_S = 0.06  # no frame for this long is a pause: 3 frames, beyond ordinary jitter
DTX_PREFILL_STEP_S = 0.02  # then zeros every frame's worth, as a continuous sender's would come
# Pre-fill only this long after the last audible frame: past the smart detector's 1.6 s ceiling no
# turn is waiting on the silence, and a session idle in DTX must not wake 50 times a second.
DTX_PREFILL_FOR_S = 2.5
DTX_AUDIBLE_RMS = 32  # int16 RMS (-60 dBFS) above which a frame is sound, not digital silence

if TYPE_CHECKING:
    from streams.handlers import VideoStreamHandler
    from streams.session import Session

logger = logging.getLogger(__name__)


def outputs_report(outputs: adapter.AdditionalOutputs) -> dict[str, Any]:
    """`AdditionalOutputs(...)` as one JSON report: a single dict is sent as it is."""
    args = outputs.args
    if len(args) == 1 and isinstance(args[0], dict):
        return args[0]
    return {"type": "outputs", "values": [_jsonable(a) for a in args]}


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, np.ndarray):
        return (
            value.tolist()
            if value.size <= 4096
            else {"ndarray": list(value.shape), "dtype": str(value.dtype)}
        )
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)


class _ErrorReporter:
    """A raising handler: logged (first time and every 100th), told to the client, counted."""

    def __init__(self, session: Session, what: str) -> None:
        self.session = session
        self.what = what
        self.errors = 0

    def __call__(self, exc: BaseException) -> None:
        self.errors += 1
        self.session.stream.observer.handler_error()
        if self.errors == 1 or self.errors % 100 == 0:
            what = f"{self.what} failed (error #{self.errors})"
            self.session.send_message(
                {"type": "error", "message": incidents.report(logger, self.session.id, what, exc)}
            )


def _handle_side_output(session: Session, extra: Any) -> bool:
    """Publish `AdditionalOutputs`; on `CloseStream` end the session. True when it ended."""
    if isinstance(extra, adapter.AdditionalOutputs):
        session.publish(outputs_report(extra))
    elif isinstance(extra, adapter.CloseStream):
        logger.info("session %s: handler closed the stream (%s)", session.id, extra.msg)
        session.end_soon("closed_by_handler")
        return True
    return False


def _per_session(session: Session, fn: Any) -> Any:
    """A callable with `copy()` gets one copy per session (extension: per-session state)."""
    return session.context.run(fn.copy) if callable(getattr(fn, "copy", None)) else fn


def _resample_int16(samples: np.ndarray, src: int, dst: int) -> np.ndarray:
    """int16 (or float in [-1, 1]) mono at `src` -> int16 mono at `dst`."""
    scale = 32768.0 if samples.dtype == np.int16 else 1.0
    return _to_mono_int16(resample(samples.astype(np.float32).reshape(-1) / scale, src, dst))


def _close_handler(handler: Any) -> None:
    for name in ("shutdown", "close"):
        method = getattr(handler, name, None)
        if callable(method):
            method()
            return


def within_limit(frame: av.VideoFrame, max_pixels: int | None) -> av.VideoFrame:
    """`frame`, downscaled (same aspect, even sides) when it has more than `max_pixels`: one 8K
    sender must not cost every handler 30 MB frames (issue 13: 537 ms a frame, 2.36 GB peak)."""
    if max_pixels is None or frame.width * frame.height <= max_pixels:
        return frame
    scale = math.sqrt(max_pixels / (frame.width * frame.height))
    width, height = max(2, int(frame.width * scale) // 2 * 2), max(2, int(frame.height * scale) // 2 * 2)
    resized = frame.reformat(width=width, height=height)
    resized.pts, resized.time_base = frame.pts, frame.time_base
    return resized


class VideoProcessMedia:
    """Send-receive (and send) video: one incoming frame -> the handler -> one outgoing frame.

    With `Stream(sources=...)` the incoming frames may instead come from a server-side source (an
    upload, a URL, a media file) chosen by the live `source` input; see `streams.sources`."""

    def __init__(self, session: Session, spec: VideoStreamHandler) -> None:
        self.session = session
        self.spec = spec
        self.fn = _per_session(session, spec.callable)
        self.args = session.stream.inputs.args(session.inputs)
        self.report_error = _ErrorReporter(session, "processing")
        self.track: LatestFrameTrack | QueuedFrameTrack | None = None
        self.feed: SourceFeed | None = None
        self.upload: Path | None = None  # this session's uploaded video (deleted when it ends)
        self.upload_info: SourceInfo | None = None
        self._source_key: tuple[str, str | None] = ("camera", None)
        self._seek_requested = False
        self._source_requested = False

    def outgoing_tracks(self, incoming: list[MediaStreamTrack]) -> list[MediaStreamTrack]:
        video = [t for t in incoming if t.kind == "video"]
        s = self.session
        if not video and (s.stream.sources is None or s.stream.mode == "send"):
            raise ValueError("the offer sends no video")
        camera = video[0] if video else None  # none: a receive-only offer, waiting for a source
        common = dict(session_id=s.id, worker=s.worker, observer=s.stream.observer)
        if self.spec.skip_frames:
            self.track = LatestFrameTrack(camera, self.process, **common)
        else:
            self.track = QueuedFrameTrack(camera, self.process, maxsize=self.spec.queue_size, **common)
        s.tracks.append(self.track)
        if s.recorder:
            s.recorder.attach(self.track)
        if s.stream.mode == "send":  # nothing goes back: pull frames through the handler ourselves
            return []
        return [self.track]

    async def start(self) -> None:
        if self.track is None:
            return
        self.track.start()
        if self.session.stream.mode == "send":
            self.session.create_task(self._pull(), "video-send")

    async def _pull(self) -> None:
        assert self.track is not None
        while True:
            try:
                await self.track.recv()
            except MediaStreamError:
                return

    # ---- server-side sources ----
    def check_inputs(self, values: dict[str, Any], changes: dict[str, Any]) -> None:
        """A source the stream allows and this session can play; ValueError (a 422) says why not."""
        policy = self.session.stream.sources
        if policy is None:
            return
        name = self.session.stream.name or "stream"
        source = values["source"]
        if source == "url":
            if not values.get("url"):
                raise ValueError("source url: give the address as `url`")
            policy.check_url(values["url"])
        elif source == "file":
            policy.resolve_file(values.get("file") or "")
        elif source == "upload" and self.upload is None:
            raise ValueError(f"source upload: upload a video first (POST /{name}/upload?webrtc_id=...)")
        elif (
            source == "camera"
            and "source" in changes
            and self.track is not None
            and self.track.source is None
        ):
            raise ValueError("source camera: this session's offer sends no video")
        self._seek_requested = changes.get("seek") is not None
        self._source_requested = bool({"source", "url", "file"} & changes.keys())

    def inputs_changed(self, values: dict[str, Any]) -> None:
        self.args = self.session.stream.inputs.args(values)
        if self.session.stream.sources is not None:
            self._apply_source(values)

    def _apply_source(self, values: dict[str, Any]) -> None:
        policy, track = self.session.stream.sources, self.track
        if policy is None or track is None:
            return
        source = values["source"]
        if source == "url":
            target, shown = values["url"], without_credentials(values["url"])
        elif source == "file":
            target, shown = str(policy.resolve_file(values["file"])), f"file:{values['file']}"
        elif source == "upload" and self.upload is not None:
            target, shown = str(self.upload), "upload"
        else:
            target, shown = None, "camera"
        key = (source, target)
        ended = self.feed is not None and self.feed.ended
        if key != self._source_key or (ended and (self._source_requested or self._seek_requested)):
            self._source_key = key
            self._close_feed()
            if target is None:
                track.use("camera")
            else:
                track.use("server")
                loop = asyncio.get_running_loop()
                self.feed = SourceFeed(
                    target,
                    name=shown,
                    deliver=lambda frame: track.offer_frame(frame, "server"),
                    schedule=loop.call_soon_threadsafe,
                    report=self.session.publish,
                    fps=lambda: self.session.inputs.get("fps"),
                    looping=lambda: bool(self.session.inputs.get("loop", True)),
                    session_id=self.session.id,
                )
                self.feed.start()
            logger.info("session %s: video source %s", self.session.id, shown)
        if self._seek_requested and self.feed is not None:
            self.feed.seek(float(values["seek"]))
            self._seek_requested = False

    def set_upload(self, path: Path, info: SourceInfo) -> Path | None:
        """Make `path` (probed: a video) this session's upload; returns the replaced upload's path
        for the caller to delete (the feed playing it is closed first)."""
        old = self.upload
        if old is not None and self._source_key[1] == str(old):
            self._close_feed()
            self._source_key = ("upload", None)
        self.upload, self.upload_info = path, info
        return old

    def _close_feed(self) -> None:
        feed, self.feed = self.feed, None
        if feed is not None:
            feed.close()

    def process(self, frame: av.VideoFrame) -> av.VideoFrame | None:
        """In the session's worker thread."""
        try:
            frame = within_limit(frame, self.session.stream.max_frame_pixels)
            image = frame if self.spec.frame_format == "av" else frame.to_ndarray(format="bgr24")
            out, extra = adapter.split_output(self.fn(image, *self.args))
        except Exception as exc:
            self.report_error(exc)
            return frame  # the stream keeps going, unprocessed
        if _handle_side_output(self.session, extra) or out is None:
            return None
        if isinstance(out, av.VideoFrame):
            result = out
        else:
            array = np.asarray(out)
            if array.dtype != np.uint8:
                array = np.clip(array, 0, 255).astype(np.uint8)
            if array.ndim == 2:
                result = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="gray")
            else:
                result = av.VideoFrame.from_ndarray(np.ascontiguousarray(array[..., :3]), format="bgr24")
        if result is not frame:
            result.pts, result.time_base = frame.pts, frame.time_base
        return result

    def close(self) -> None:
        self._close_feed()
        if self.upload is not None:
            self.upload.unlink(missing_ok=True)  # the feed's thread may still hold it open: fine on POSIX
        if self.fn is not self.spec.callable:
            _close_handler(self.fn)


class VideoGenerateMedia:
    """Receive video: a generator of frames, created from the current inputs, paced at the live
    `fps` input (or the handler's); a change of any other input restarts the generator with it."""

    def __init__(self, session: Session, spec: VideoStreamHandler) -> None:
        self.session = session
        self.spec = spec
        self.fn = _per_session(session, spec.callable)
        self.report_error = _ErrorReporter(session, "generation")
        self._generator: Iterator[Any] | None = None
        self._generator_args: list[Any] | None = None
        self._args = session.stream.inputs.args(session.inputs)
        self._last: av.VideoFrame | None = None
        self.native_fps: float | None = None  # a generator may set it: current_session().media.native_fps

    @property
    def fps(self) -> float:
        value = self.session.inputs.get("fps")
        if value is None:
            value = self.native_fps or self.spec.fps or 30.0
        return float(value)

    def outgoing_tracks(self, incoming: list[MediaStreamTrack]) -> list[MediaStreamTrack]:
        s = self.session
        track = PacedVideoTrack(self.produce, lambda: self.fps, s.id, s.worker, s.stream.observer)
        s.tracks.append(track)
        if s.recorder:
            s.recorder.attach(track)
        return [track]

    async def start(self) -> None:
        pass

    def inputs_changed(self, values: dict[str, Any]) -> None:
        self._args = self.session.stream.inputs.args(values)

    def produce(self, pts_s: float) -> av.VideoFrame | None:
        """In the session's worker thread: the generator's next frame."""
        args = self._args
        try:
            if self._generator is None or args != self._generator_args:
                self._close_generator()
                self._generator, self._generator_args = iter(self.fn(*args)), args
            out, extra = adapter.split_output(next(self._generator))
        except StopIteration:
            logger.info("session %s: the generator finished", self.session.id)
            self.session.end_soon("closed_by_handler")
            return self._last
        except Exception as exc:
            self.report_error(exc)
            self._close_generator()  # start afresh next frame
            return self._last
        if _handle_side_output(self.session, extra) or out is None:
            return self._last
        frame = (
            out
            if isinstance(out, av.VideoFrame)
            else av.VideoFrame.from_ndarray(
                np.ascontiguousarray(np.asarray(out, dtype=np.uint8)[..., :3]), format="bgr24"
            )
        )
        self._last = frame
        return frame

    def _close_generator(self) -> None:
        generator, self._generator = self._generator, None
        close = getattr(generator, "close", None)
        if callable(close):
            try:
                close()
            except Exception:
                logger.exception("session %s: generator close failed", self.session.id)

    def close(self) -> None:
        # the generator lives in the worker thread; closing it there would race: the worker is
        # shut down first, then the generator is closed here (its `finally` runs once).
        self._close_generator()
        if self.fn is not self.spec.callable:
            _close_handler(self.fn)


def _to_mono_int16(samples: np.ndarray) -> np.ndarray:
    """fastrtc's audio shapes ((n,), (1, n), (channels, n) or (n, channels); int16 or float in [-1, 1])
    as int16 mono."""
    array = np.asarray(samples)
    if array.ndim == 2:
        if 1 in array.shape:
            array = array.reshape(-1)
        else:
            channels_first = array.shape[0] <= 8 and array.shape[0] < array.shape[1]
            array = array.mean(axis=0 if channels_first else 1).astype(array.dtype)
    array = array.reshape(-1)
    if array.dtype.kind == "f":
        return (np.clip(array, -1, 1) * 32767).astype(np.int16)
    return array.astype(np.int16, copy=False)


class DtxGaps:
    """The silence an Opus DTX sender left out, to be handed to the handler as zeros.

    With DTX a silent browser sends one 20 ms packet every ~400 ms and its RTP timestamps (so the
    decoded frames' `pts`) skip the rest. Handlers count silence in samples (the turn detector ends
    a turn after 400 ms of it), so unfilled, a 400 ms pause would take ~8 s of wall clock to end a
    turn. Timestamps come from the client, so the fill is bounded: at most the wall clock since the
    previous frame plus `slack_s`; at most `max_gap_s` a gap; and never taking the audio handed on
    (frames and fills) more than `slack_s` ahead of the wall clock, which is counted `drift` fast
    so that a sender whose clock runs fast still has its gaps filled an hour in (while a flood of
    short frames claiming gaps gets at most `drift` of real time as silence). A step backwards, or
    aiortc's reading of one as a wrap-around (a ~24 h jump, capped), resyncs.

    A gap is only known when the packet after it comes, ~200 ms after a turn's silence should have
    counted, so while frames are missing shortly after sound, `prefill` hands on the silence the
    wall clock says is missing, and the next gap is filled with only what is left of it. Pre-filled
    zeros count as audio handed on, so the bounds above hold for them too.
    """

    def __init__(
        self,
        tolerance_s: float = DTX_GAP_TOLERANCE_S,
        slack_s: float = DTX_GAP_SLACK_S,
        max_gap_s: float = DTX_MAX_GAP_S,
        drift: float = DTX_CLOCK_DRIFT,
        clock: Callable[[], float] = time.monotonic,
        prefill_after_s: float = DTX_PREFILL_AFTER_S,
        prefill_step_s: float = DTX_PREFILL_STEP_S,
        prefill_for_s: float = DTX_PREFILL_FOR_S,
    ) -> None:
        self.tolerance_s, self.slack_s, self.max_gap_s = tolerance_s, slack_s, max_gap_s
        self.drift, self.clock = drift, clock
        self.prefill_after_s, self.prefill_step_s = prefill_after_s, prefill_step_s
        self.prefill_for_s = prefill_for_s
        self._next_pts_s: float | None = None  # where the previous frame ended, in stream time
        self._last_at: float | None = None  # wall clock at the previous frame
        self._last_duration_s = 0.0  # the previous frame's length
        self._lead_s = 0.0  # audio handed on minus wall clock (at least -max_gap_s)
        self._lead_at: float | None = None  # wall clock `_lead_s` was last brought up to
        self._audible_at: float | None = None  # wall clock at the last audible, in-sequence frame
        self._prefill_at: float | None = None  # wall clock at the last `prefill` since the frame
        self._prefilled_s = 0.0  # pre-filled since the previous frame
        self.filled_s = 0.0  # silence filled (and pre-filled) so far

    def _catch_up(self, now: float) -> None:
        """Bring the lead to `now`: the wall clock has played on (counted `drift` fast)."""
        if self._lead_at is not None:
            elapsed = max(0.0, now - self._lead_at)
            self._lead_s = max(-self.max_gap_s, self._lead_s - elapsed * (1 + self.drift))
        self._lead_at = now

    def silence_before(
        self, pts_s: float | None, duration_s: float, now: float | None = None, audible: bool = False
    ) -> float:
        """Seconds of silence to hand on before a frame that starts at `pts_s` (stream seconds; None:
        unknown) and lasts `duration_s`; `audible`: the frame is sound, so pauses after it matter."""
        now = self.clock() if now is None else now
        fill = 0.0
        gap = None if pts_s is None or self._next_pts_s is None else pts_s - self._next_pts_s
        if self._last_at is not None:
            since_last = max(0.0, now - self._last_at)
            self._catch_up(now)
            if gap is not None and gap > self.tolerance_s:
                total = min(gap, since_last + self.slack_s, self.max_gap_s)
                fill = max(0.0, min(total - self._prefilled_s, self.slack_s - self._lead_s))
            # A frame with no gap after pre-filled zeros (a continuous sender stalled for longer
            # than `prefill_after_s`): they were extra, at most the stall and within the bounds.
        self._lead_at = now
        if audible and gap is not None and gap <= self.tolerance_s:
            self._audible_at = now  # in sequence: a DTX sender's comfort noise after a gap is not
        self._next_pts_s = None if pts_s is None else pts_s + duration_s
        self._last_at, self._last_duration_s = now, duration_s
        self._prefill_at, self._prefilled_s = None, 0.0
        self._lead_s += fill + duration_s
        self.filled_s += fill
        return fill

    def prefill_in(self, now: float | None = None) -> float | None:
        """Seconds the next frame may be waited for before `prefill` is due; None: no pre-fill now
        (long after sound, or nothing left to pre-fill), so wait for as long as it takes."""
        if self._audible_at is None or self._last_at is None or self._prefilled_s >= self.max_gap_s:
            return None
        if self._prefill_at is None:
            due = self._last_at + self.prefill_after_s
        else:
            due = self._prefill_at + self.prefill_step_s
        if due > self._audible_at + self.prefill_for_s:
            return None
        now = self.clock() if now is None else now
        return max(0.0, due - now)

    def prefill(self, now: float | None = None) -> float:
        """Seconds of silence to hand on now, no frame having come: the wall clock since the previous
        frame ended, less what was pre-filled already (and within the bounds of `silence_before`)."""
        now = self.clock() if now is None else now
        self._prefill_at = now
        if self._last_at is None:
            return 0.0
        self._catch_up(now)
        missing = now - self._last_at - self._last_duration_s - self._prefilled_s
        fill = max(0.0, min(missing, self.max_gap_s - self._prefilled_s, self.slack_s - self._lead_s))
        self._prefilled_s += fill
        self._lead_s += fill
        self.filled_s += fill
        return fill


def _audible(chunks: list[np.ndarray]) -> bool:
    """int16 samples louder than digital silence (`DTX_AUDIBLE_RMS`)."""
    if not chunks:
        return False
    samples = np.concatenate(chunks).astype(np.float32)
    return bool(samples.size) and float(np.sqrt(np.mean(samples**2))) > DTX_AUDIBLE_RMS


def _pts_seconds(frame: av.AudioFrame) -> float | None:
    """Where a received frame starts in stream time (aiortc: the RTP timestamp); None if unknown."""
    if frame.pts is None or frame.time_base is None:
        return None
    return float(frame.pts * frame.time_base)


class AudioHandlerMedia:
    """An audio `StreamHandler`/`AsyncStreamHandler` copy for one session.

    In: decoded audio resampled to the handler's `input_sample_rate` as it comes (no 60 ms frame
    wait) and handed to `receive` (sync handlers in the worker thread). Out: `emit()` (sync ones in
    the worker, with a short wait when idle instead of stock's spin) into a bounded, paced track.
    """

    def __init__(self, session: Session, handler: Any) -> None:
        self.session = session
        self.handler = session.context.run(handler.copy)
        self.is_async = inspect.iscoroutinefunction(self.handler.receive)
        self.emits_async = inspect.iscoroutinefunction(self.handler.emit)
        self.report_error = _ErrorReporter(session, "the handler")
        self.out_track: PacedAudioTrack | None = None
        self.on_interrupt: Callable[[], None] | None = None  # a transport's own "clear" (phone)
        self._credit_s, self._credit_at = MAX_AUDIO_AHEAD_S, time.monotonic()  # see `admit`
        self.dropped_s = 0.0
        self._unplayed: dict[str, float] = {}  # playback marks sent, not yet echoed: when sent
        self.played_s = 0.0  # seconds of output the client has confirmed playing (Twilio marks)
        self._resampler: av.AudioResampler | None = None
        self.dtx_gaps = DtxGaps()
        adapter.prepare_handler(
            self.handler,
            loop=asyncio.get_running_loop(),
            channel=None,
            clear_queue=self.clear_queue,
            phone_mode=session.transport == "phone",
        )
        self._apply_inputs(session.inputs)
        bind = getattr(self.handler, "bind_session", None)  # extension: the built-in chat reports state
        if callable(bind):
            bind(session)

    # ---- WebRTC ----
    def outgoing_tracks(self, incoming: list[MediaStreamTrack]) -> list[MediaStreamTrack]:
        audio = [t for t in incoming if t.kind == "audio"]
        if not audio:
            raise ValueError("the offer sends no audio")
        s = self.session
        s.create_task(self._pump_in(audio[0]), "audio-in")
        tracks: list[MediaStreamTrack] = []
        if s.stream.mode == "send-receive":
            self.out_track = PacedAudioTrack(self.handler.output_sample_rate)
            s.tracks.append(self.out_track)
            if s.recorder:
                s.recorder.attach(self.out_track)
            tracks.append(self.out_track)
        return tracks

    async def start(self) -> None:
        await self._start_up()
        if self.out_track is not None:
            self.session.create_task(self._pump_out(), "audio-out")

    def set_channel(self, channel: Any) -> None:
        self.handler.set_channel(channel)

    async def _start_up(self) -> None:
        try:
            result = self.handler.start_up()
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            self.report_error(exc)

    async def _pump_in(self, track: MediaStreamTrack) -> None:
        rate = self.handler.input_sample_rate
        # While a pre-fill may be due, one recv stays in flight across the timeouts: a timeout never
        # cancels a recv, so no frame is lost whatever the track (aiortc's own would survive it, as
        # `asyncio.Queue.get` does; a relay's may not). Otherwise recv is awaited as it is.
        pending: asyncio.Future[Any] | None = None
        try:
            while True:
                wait = self.dtx_gaps.prefill_in()
                if wait is not None:
                    if pending is None:
                        pending = asyncio.ensure_future(track.recv())
                    await asyncio.wait({pending}, timeout=wait)
                    if not pending.done():  # Opus DTX: a pause; count it on the wall clock
                        await self._receive_silence(rate, self.dtx_gaps.prefill())
                        continue
                try:
                    if pending is not None:
                        received, pending = pending, None
                        frame = await received
                    else:
                        frame = await track.recv()
                except MediaStreamError:
                    return
                duration = frame.samples / frame.sample_rate
                if not self.admit(duration):
                    continue
                if self._resampler is None:
                    self._resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
                samples = [out.to_ndarray().reshape(-1) for out in self._resampler.resample(frame)]
                gap = self.dtx_gaps.silence_before(_pts_seconds(frame), duration, audible=_audible(samples))
                await self._receive_silence(rate, gap)  # Opus DTX: the sender left this silence out
                for chunk in samples:
                    await self.receive(rate, chunk)
        finally:
            if pending is not None:
                pending.cancel()

    async def _receive_silence(self, rate: int, seconds: float) -> None:
        count = round(seconds * rate)
        if count > 0:
            await self.receive(rate, np.zeros(count, np.int16))

    async def _pump_out(self) -> None:
        assert self.out_track is not None
        while True:
            audio = await self.next_audio()
            if audio is None:  # the handler has nothing now: send the last partial frame too
                await self.out_track.flush()
                continue
            rate, samples = audio
            target = self.out_track.sample_rate
            if rate != target:
                samples = _resample_int16(samples, rate, target)
            await self.out_track.put(samples)

    def clear_queue(self) -> None:
        """Barge-in: drop the audio queued for the client (WebRTC track, or the phone's buffer)."""
        if self.out_track is not None:
            self.out_track.clear()
        if self.on_interrupt is not None:
            self.on_interrupt()

    # ---- input pacing ----
    def admit(self, seconds: float) -> bool:
        """Audio may arrive at most `MAX_AUDIO_AHEAD_S` ahead of real time; what comes faster is
        dropped before it is decoded or reaches the VAD (a 166x real-time flood took the event loop,
        and a peer nobody read grew memory without bound, issue 13)."""
        now = time.monotonic()
        self._credit_s = min(MAX_AUDIO_AHEAD_S, self._credit_s + now - self._credit_at)
        self._credit_at = now
        if seconds <= self._credit_s:
            self._credit_s -= seconds
            return True
        if self.dropped_s == 0:
            logger.warning(
                "session %s: audio arrives faster than real time; the excess is dropped", self.session.id
            )
        self.dropped_s += seconds
        self.session.stream.observer.frame_dropped()
        return False

    # ---- playback marks (Twilio) ----
    def awaiting_playback(self, mark: str) -> None:
        """A mark went out after the audio sent so far; bounded: a client that never echoes
        marks cannot grow this (the oldest count as played)."""
        self._unplayed[mark] = time.monotonic()
        while len(self._unplayed) > MAX_UNPLAYED_MARKS:
            del self._unplayed[next(iter(self._unplayed))]

    def played(self, mark: str) -> None:
        """The client echoed `mark`: it has played everything sent before it (and earlier marks)."""
        if mark not in self._unplayed:
            return
        for name in list(self._unplayed):
            del self._unplayed[name]
            if name == mark:
                break
        with contextlib.suppress(ValueError):
            self.played_s = max(self.played_s, float(mark))

    def playing_on_client(self) -> bool:
        """Audio sent is still playing at the client (a phone buffers what it is sent). Replies are
        paced to real time, so a mark not echoed within `MARK_ECHO_TIMEOUT_S` means a client
        that does not echo marks, not one still playing."""
        latest = next(reversed(self._unplayed.values()), None)
        return latest is not None and time.monotonic() - latest < MARK_ECHO_TIMEOUT_S

    # ---- any transport ----
    async def receive(self, rate: int, samples: np.ndarray) -> None:
        """int16 (or float) mono samples at `rate`, in the handler's input rate and shape."""
        if self.session.recorder:
            self.session.recorder.audio_in(rate, samples)
        want = self.handler.input_sample_rate
        if rate != want:
            samples = _resample_int16(samples, rate, want)
        frame = (want, _to_mono_int16(samples).reshape(1, -1))
        try:
            if self.is_async:
                await self.handler.receive(frame)
            else:
                await self.session.worker.run(self.handler.receive, frame)
        except MediaStreamError:
            raise
        except Exception as exc:
            self.report_error(exc)

    async def next_audio(self) -> tuple[int, np.ndarray] | None:
        """The handler's next audio as (rate, int16 mono); None when it had nothing (outputs only)."""
        try:
            if self.emits_async:
                out = await self.handler.emit()
            else:
                out = await self.session.worker.run(self.handler.emit)
                if out is None:
                    await asyncio.sleep(0.01)  # stock spins here; a sync emit cannot wait for us
        except MediaStreamError:
            raise
        except Exception as exc:
            self.report_error(exc)
            await asyncio.sleep(0.05)
            return None
        audio, extra = adapter.split_output(out)
        _handle_side_output(self.session, extra)
        if audio is None:
            return None
        rate, samples = int(audio[0]), _to_mono_int16(audio[1])
        if self.session.recorder and self.out_track is None:  # WebRTC: recorded as its track sends
            self.session.recorder.audio_out(rate, samples)
        return rate, samples

    def inputs_changed(self, values: dict[str, Any]) -> None:
        self._apply_inputs(values)

    def _apply_inputs(self, values: dict[str, Any]) -> None:
        args = self.session.stream.inputs.args(values)
        if args:
            self.handler.set_args(args)  # fastrtc's convention: latest_args = ["__webrtc_value__", *args]
        else:
            self.handler.args_set.set()

    def close(self) -> None:
        self.handler.shutdown()


class AudioVideoMedia(AudioHandlerMedia):
    """`AudioVideoStreamHandler`: audio as above, plus video in (newest frame to `video_receive`)
    and video out (`video_emit` paced at the handler's fps)."""

    def outgoing_tracks(self, incoming: list[MediaStreamTrack]) -> list[MediaStreamTrack]:
        tracks = super().outgoing_tracks(incoming)
        s = self.session
        video = [t for t in incoming if t.kind == "video"]
        if video:
            self._video_in = LatestFrameTrack(
                video[0], self._video_receive, s.id, s.worker, s.stream.observer
            )
            s.tracks.append(self._video_in)
            if s.recorder:
                s.recorder.attach(self._video_in)
            s.create_task(self._pull_video(), "video-in")
        out = PacedVideoTrack(self._video_emit, lambda: float(self.handler.fps or 30), s.id, s.worker,
                              s.stream.observer)  # fmt: skip
        s.tracks.append(out)
        if s.recorder:
            s.recorder.attach(out)
        return [*tracks, out]

    async def _pull_video(self) -> None:
        while True:
            try:
                await self._video_in.recv()
            except MediaStreamError:
                return

    def _video_receive(self, frame: av.VideoFrame) -> None:
        try:
            frame = within_limit(frame, self.session.stream.max_frame_pixels)
            result = self.handler.video_receive(frame.to_ndarray(format="bgr24"))
            if inspect.isawaitable(result):
                asyncio.run_coroutine_threadsafe(result, self.handler.loop).result(5)
        except Exception as exc:
            self.report_error(exc)
        return None

    def _video_emit(self, pts_s: float) -> av.VideoFrame | None:
        try:
            result = self.handler.video_emit()
            if inspect.isawaitable(result):
                result = asyncio.run_coroutine_threadsafe(result, self.handler.loop).result(5)
            out, extra = adapter.split_output(result)
        except Exception as exc:
            self.report_error(exc)
            return None
        if _handle_side_output(self.session, extra) or out is None:
            return None
        return av.VideoFrame.from_ndarray(
            np.ascontiguousarray(np.asarray(out, np.uint8)[..., :3]), format="bgr24"
        )
