"""Video send-receive: webcam frames in, filtered frames with detection boxes out.

Detection never holds a frame back: it runs on the newest frame in the background (at most one job
per session) while every frame is filtered and sent on with the latest boxes drawn, so the output
keeps the camera's rate even when the model is slower than the camera.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Executor, Future
from dataclasses import replace
from typing import Any

import av
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from streams.detection import Detection, Detector, draw_detections
from streams.filters import FILTERS, FrameFilter
from streams.meters import RateMeter
from streams.runtime import HardenedStream, ReportChannel, RtcConfigSource

logger = logging.getLogger(__name__)


class VideoParams(BaseModel):
    """Live parameters of one video session."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    filter: str = "none"
    detect: bool = False
    conf_threshold: float = Field(0.35, ge=0.0, le=1.0)

    @field_validator("filter")
    @classmethod
    def _known_filter(cls, value: str, info: Any) -> str:
        filters = (info.context or {}).get("filters", FILTERS)
        if value not in filters:
            raise ValueError(f"unknown filter {value!r}; choose one of: {', '.join(filters)}")
        return value


class VideoSession:
    """Per-connection state. `process` runs in the session's worker thread, `update` on the loop."""

    def __init__(
        self,
        session_id: str,
        *,
        params: VideoParams,
        reports: ReportChannel,
        filters: Mapping[str, FrameFilter] = FILTERS,
        detector: Detector | None = None,
        detect_executor: Executor | None = None,
        report_hz: float = 5.0,
    ) -> None:
        self.session_id = session_id
        self.params = params
        self.reports = reports
        self.filters = filters
        self.detector = detector
        self.detect_executor = detect_executor
        self.report_interval = 1.0 / report_hz
        self.frames = 0
        self.closed = False
        self._fps = RateMeter()
        self._proc_ms: deque[float] = deque(maxlen=30)
        self._detections: list[Detection] = []
        self._detection_frame = 0
        self._detection_ms = 0.0
        self._detect_job: Future[list[Detection]] | None = None
        self._lock = threading.Lock()
        self._last_report = 0.0

    def update(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Validate and apply new parameters; they take effect on the next frame."""
        merged = self.params.model_dump() | changes
        self.params = VideoParams.model_validate(merged, context={"filters": self.filters})
        if not self.params.detect:
            self._detections = []
        logger.info("session %s: video params %s", self.session_id, self.params.model_dump())
        return self.params.model_dump()

    def process(self, frame: av.VideoFrame) -> av.VideoFrame:
        t0 = time.perf_counter()
        params = self.params
        self.frames += 1
        flt = self.filters[params.filter]
        detecting = params.detect and self.detector is not None
        if params.filter == "none" and not detecting:
            out_frame = frame  # nothing to change: skip two colour conversions
        else:
            img = frame.to_ndarray(format="bgr24")
            if detecting:
                self._request_detection(img, params.conf_threshold)
            out = flt.apply(img)
            detections = self._detections if detecting else []
            if detections:
                if out is img:  # the detector may still be reading img
                    out = img.copy()
                h, w = img.shape[:2]
                draw_detections(out, [replace(d, box=flt.map_box(d.box, w, h)) for d in detections])
            out_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(out), format="bgr24")
            out_frame.pts, out_frame.time_base = frame.pts, frame.time_base
        now = time.perf_counter()
        self._proc_ms.append((now - t0) * 1000)
        self._fps.tick(now)
        if now - self._last_report >= self.report_interval:
            self._last_report = now
            self.reports.publish(self.report(now, params))
        return out_frame

    def _request_detection(self, img: np.ndarray, threshold: float) -> None:
        """Start a detection on this frame unless one is already running for this session."""
        with self._lock:
            if self._detect_job is not None or self.closed or self.detect_executor is None:
                return
            frame_no = self.frames
            try:
                self._detect_job = self.detect_executor.submit(self._detect, img, threshold, frame_no)
            except RuntimeError:  # executor shut down: the server is stopping
                return

    def _detect(self, img: np.ndarray, threshold: float, frame_no: int) -> list[Detection]:
        t0 = time.perf_counter()
        try:
            detections = self.detector.detect(img, threshold) if self.detector else []
        except Exception:
            logger.exception("session %s: detection failed", self.session_id)
            detections = []
        with self._lock:
            self._detect_job = None
            if self.params.detect:
                self._detections = detections
                self._detection_frame = frame_no
                self._detection_ms = (time.perf_counter() - t0) * 1000
        return detections

    def report(self, now: float, params: VideoParams) -> dict[str, Any]:
        proc = sorted(self._proc_ms)
        return {
            "type": "video",
            "frame": self.frames,
            "fps": round(self._fps.rate(now), 1),
            "processing_ms": round(proc[len(proc) // 2], 2) if proc else 0.0,
            "detection_ms": round(self._detection_ms, 1),
            "detection_age_frames": self.frames - self._detection_frame if self._detection_frame else None,
            "detections": [d.as_dict() for d in self._detections] if params.detect else [],
            "params": params.model_dump(),
        }

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.reports.close()


def create_video_stream(
    *,
    defaults: VideoParams,
    detector: Detector | None,
    detect_executor: Executor | None,
    concurrency_limit: int,
    time_limit: float | None,
    server_rtc_configuration: RtcConfigSource,
    filters: Mapping[str, FrameFilter] = FILTERS,
    report_hz: float = 5.0,
) -> HardenedStream:
    """The `/video` stream: a fastrtc send-receive video `Stream` with hardened sessions."""
    VideoParams.model_validate(defaults.model_dump(), context={"filters": filters})

    def new_session(session_id: str, handler: Any) -> VideoSession:
        return VideoSession(
            session_id,
            params=defaults,
            reports=ReportChannel(asyncio.get_running_loop()),
            filters=filters,
            detector=detector,
            detect_executor=detect_executor,
            report_hz=report_hz,
        )

    return HardenedStream(
        session_factory=new_session,
        modality="video",
        mode="send-receive",
        concurrency_limit=concurrency_limit,
        time_limit=time_limit,
        server_rtc_configuration=server_rtc_configuration,
    )
