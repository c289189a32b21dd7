"""Server-to-client video: a generated source streamed at a rate the client changes live.

Sources share one interface (`FrameSource`); the pacing lives in `streams.runtime.PacedVideoTrack`.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Protocol

import cv2
import numpy as np
from pydantic import Field

from streams.fastrtc_adapter import AdditionalOutputs
from streams.handlers import VideoStreamHandler
from streams.meters import RateMeter
from streams.session import current_session
from streams.stream import RtcConfigSource, Stream

logger = logging.getLogger(__name__)

COUNTER_BITS = 16
COUNTER_BAND = 32  # rows: the frame counter as 16 black/white blocks, top and bottom


class FrameSource(Protocol):
    """Makes BGR frames on demand; called from one worker thread only."""

    native_fps: float

    def frame(self, index: int, width: int, height: int, target_fps: float) -> np.ndarray: ...
    def close(self) -> None: ...


def draw_counter(img: np.ndarray, counter: int) -> None:
    """The counter as bits, machine-readable after lossy encoding (blocks, bit i left to right)."""
    h, w = img.shape[:2]
    block = w // COUNTER_BITS
    for i in range(COUNTER_BITS):
        value = 255 if (counter >> i) & 1 else 0
        img[:COUNTER_BAND, i * block : (i + 1) * block] = value
        img[h - COUNTER_BAND :, i * block : (i + 1) * block] = value


class TestPattern:
    """Moving colour bars with the frame counter, server time and target fps written on each frame."""

    def __init__(self, native_fps: float = 30.0) -> None:
        self.native_fps = native_fps
        self._backgrounds: dict[tuple[int, int], np.ndarray] = {}

    def _background(self, width: int, height: int) -> np.ndarray:
        key = (width, height)
        if key not in self._backgrounds:
            hue = np.tile(np.linspace(0, 179, width * 2, dtype=np.uint8), (height, 1))
            hsv = np.dstack([hue, np.full_like(hue, 160), np.full_like(hue, 200)])
            self._backgrounds = {key: cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)}  # keep one size only
        return self._backgrounds[key]

    def frame(self, index: int, width: int, height: int, target_fps: float) -> np.ndarray:
        offset = (index * 8) % width
        img = np.ascontiguousarray(self._background(width, height)[:, offset : offset + width])
        draw_counter(img, index & 0xFFFF)
        scale = max(0.5, width / 640)
        now = time.time()
        stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
        for row, text in enumerate((f"frame {index}", f"server {stamp}", f"target {target_fps:g} fps")):
            y = int(COUNTER_BAND + (row + 1.6) * 36 * scale)
            cv2.putText(
                img, text, (16, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), int(4 * scale), cv2.LINE_AA
            )
            cv2.putText(
                img,
                text,
                (16, y),
                cv2.FONT_HERSHEY_SIMPLEX,
                scale,
                (255, 255, 255),
                int(2 * scale),
                cv2.LINE_AA,
            )
        return img

    def close(self) -> None:
        self._backgrounds.clear()


class VideoFileSource:
    """A video file or URL read with OpenCV, looping at the end, resized to the session's size.

    A URL is opened with timeouts (a source that stops sending must not hold the worker for
    OpenCV's 30 s default) and, at its end, opened again: rewinding an RTSP stream with
    `CAP_PROP_POS_FRAMES` replays it once, then every read blocks until the timeout (measured)."""

    OPEN_TIMEOUT_MS = 10_000
    READ_TIMEOUT_MS = 5_000

    def __init__(self, path: Path | str) -> None:
        self.path = path  # a URL stays as written (a Path would turn "https://" into "https:/")
        self.is_url = "://" in str(path)
        self.capture = self._open()
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        self.native_fps = float(fps) if 1 <= fps <= 120 else 25.0

    def _open(self) -> cv2.VideoCapture:
        if self.is_url:
            timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.OPEN_TIMEOUT_MS,
                        cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.READ_TIMEOUT_MS]  # fmt: skip
            capture = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG, timeouts)
        else:
            capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            raise FileNotFoundError(f"cannot open video {self.path}")
        return capture

    def _rewind(self) -> None:
        if self.is_url:
            self.capture.release()
            self.capture = self._open()
        else:
            self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)

    def frame(self, index: int, width: int, height: int, target_fps: float) -> np.ndarray:
        ok, img = self.capture.read()
        if not ok:  # end of file: loop
            self._rewind()
            ok, img = self.capture.read()
            if not ok:
                raise RuntimeError(f"{self.path} has no readable frames")
        if img.shape[1] != width or img.shape[0] != height:
            img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
        return img

    def close(self) -> None:
        self.capture.release()


def render_sample_clip(
    path: Path, seconds: float = 4.0, fps: int = 24, size: tuple[int, int] = (640, 360)
) -> Path:
    """The project's own sample clip (Motion-JPEG AVI): a ball bouncing over a gradient."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.avi")
    w, h = size
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    if not writer.isOpened():
        raise RuntimeError("OpenCV cannot write Motion-JPEG video here")
    base = cv2.cvtColor(
        np.dstack([np.tile(np.linspace(90, 130, w, dtype=np.uint8), (h, 1)), np.full((h, w), 120, np.uint8),
                   np.full((h, w), 90, np.uint8)]),
        cv2.COLOR_HSV2BGR,
    )  # fmt: skip
    frames = int(seconds * fps)
    for i in range(frames):
        img = base.copy()
        t = i / frames
        x = int(40 + (w - 80) * abs(2 * t - 1))
        y = int(h - 50 - (h - 100) * abs(np.sin(3 * np.pi * t)))
        cv2.circle(img, (x, y), 36, (40, 180, 250), -1, cv2.LINE_AA)
        cv2.putText(img, f"sample clip {i + 1}/{frames}", (14, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.7,
                    (255, 255, 255), 2, cv2.LINE_AA)  # fmt: skip
        writer.write(img)
    writer.release()
    tmp.replace(path)
    return path


def private_sample_clip() -> Path:
    """Render the sample clip into a new private folder (mode 0700, removed at exit).

    A fixed path in the shared temporary directory could be created first by another local user
    (a symlink, or a crafted file that this server would then decode), so every process renders its
    own copy (about 0.2 s) where no one else can write."""
    folder = Path(tempfile.mkdtemp(prefix="rtserver-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    t0 = time.perf_counter()
    path = render_sample_clip(folder / "sample-clip.avi")
    logger.info("rendered sample clip %s in %.2f s", path, time.perf_counter() - t0)
    return path


class GeneratePipeline:
    """The `/generate` handler: a generator `(source, width, height) -> frames`, served as any
    user's `VideoStreamHandler(gen, fps=...)`. The runtime paces it at the live `fps` input and
    restarts it when another input changes; `copy()` gives each session its own frame counter."""

    def __init__(self, sources: dict[str, Callable[[], FrameSource]]) -> None:
        self.sources = sources
        self.frames = 0

    def copy(self) -> GeneratePipeline:
        return GeneratePipeline(self.sources)

    def __call__(
        self,
        source: str = "pattern",
        width: Annotated[int, Field(ge=64, le=1920, multiple_of=2)] = 640,
        height: Annotated[int, Field(ge=64, le=1080, multiple_of=2)] = 480,
    ) -> Iterator[np.ndarray | tuple[np.ndarray, AdditionalOutputs]]:
        session = current_session()
        media = session.media
        src = self.sources[source]()
        if media is not None:
            media.native_fps = src.native_fps  # type: ignore[attr-defined]  # used while the fps input is None
        meter = RateMeter()
        produce_ms: deque[float] = deque(maxlen=60)
        last_report = 0.0
        try:
            while True:
                t0 = time.perf_counter()
                fps = media.fps if media is not None else src.native_fps  # type: ignore[attr-defined]
                img = src.frame(self.frames, width, height, fps)
                self.frames += 1
                produce_ms.append((time.perf_counter() - t0) * 1000)
                now = time.monotonic()
                meter.tick(now)
                if now - last_report < 1.0:
                    yield img
                    continue
                last_report = now
                yield img, AdditionalOutputs({
                    "type": "generate",
                    "fps": round(meter.rate(now), 2),
                    "target_fps": fps,
                    "frames": self.frames,
                    "produce_ms": round(sum(produce_ms) / len(produce_ms), 2),
                    "params": dict(session.inputs),
                })  # fmt: skip
        finally:
            src.close()


def create_generate_stream(
    *,
    default_fps: float | None,
    default_source: str,
    video_path: Path | str,
    pattern_fps: float,
    concurrency_limit: int,
    time_limit: float | None,
    server_rtc_configuration: RtcConfigSource,
) -> Stream:
    """The `/generate` stream: a receive-mode `Stream` of a generator, paced at a live rate."""
    sources: dict[str, Callable[[], FrameSource]] = {
        "pattern": lambda: TestPattern(pattern_fps),
        "file": lambda: VideoFileSource(video_path),
    }
    import gradio as gr

    return Stream(
        VideoStreamHandler(GeneratePipeline(sources), fps=default_fps),
        modality="video",
        mode="receive",
        additional_inputs=[gr.Dropdown(choices=list(sources), value=default_source, label="source")],
        concurrency_limit=concurrency_limit,
        time_limit=time_limit,
        server_rtc_configuration=server_rtc_configuration,
        name="generate",
    )
