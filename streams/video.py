"""Video send-receive: webcam frames in, filtered frames with detection boxes out.

Detection never holds a frame back: it runs on the newest frame in the background (at most one job
per session) while every frame is filtered and sent on with the latest boxes drawn, so the output
keeps the camera's rate even when the model is slower than the camera. With tracking on (the
default), the boxes drawn are the latest detector result carried to the current frame by optical
flow (`streams.tracking`), so they stay on a moving object instead of trailing it.
"""

from __future__ import annotations

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

from streams.detection import Detection, Detector, draw_detections
from streams.fastrtc_adapter import AdditionalOutputs
from streams.filters import FILTERS, FrameFilter
from streams.handlers import VideoStreamHandler
from streams.meters import RateMeter
from streams.session import current_session
from streams.sources import SourcePolicy
from streams.stream import RtcConfigSource, Stream
from streams.tracking import BoxTracker, DetectorResult, FlowFrame, TrackedDetection, flow_frame

logger = logging.getLogger(__name__)


class VideoPipeline:
    """The `/video` handler: `(frame, filter, detect, conf_threshold) -> (frame, AdditionalOutputs)`.

    An ordinary `VideoStreamHandler` callable with per-session state: the runtime calls `copy()`
    once per session, then calls it in the session's worker thread with the session's inputs.
    """

    def __init__(
        self,
        *,
        filters: Mapping[str, FrameFilter] = FILTERS,
        detector: Detector | None = None,
        detect_executor: Executor | None = None,
        report_hz: float = 5.0,
        tracking: bool = True,
    ) -> None:
        self.session_id = "unbound"
        self.filters = filters
        self.detector = detector
        self.detect_executor = detect_executor
        self.report_interval = 1.0 / report_hz
        self.tracking = tracking
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
        self._detect_wanted = False
        self._tracker = BoxTracker()
        self._tracked: list[TrackedDetection] = []
        self._result: DetectorResult | None = None  # the newest result the tracker has not seen yet

    def copy(self) -> VideoPipeline:
        pipeline = VideoPipeline(filters=self.filters, detector=self.detector,
                                 detect_executor=self.detect_executor, report_hz=1.0 / self.report_interval,
                                 tracking=self.tracking)  # fmt: skip
        pipeline.session_id = current_session().id
        return pipeline

    def __call__(
        self, frame: av.VideoFrame, filter: str = "none", detect: bool = False, conf_threshold: float = 0.35
    ) -> tuple[av.VideoFrame, AdditionalOutputs] | av.VideoFrame:
        t0 = time.perf_counter()
        params = {"filter": filter, "detect": detect, "conf_threshold": conf_threshold}
        self.frames += 1
        flt = self.filters[filter]
        detecting = detect and self.detector is not None
        with self._lock:
            self._detect_wanted = detect
            if not detect:
                self._detections = []
                self._result = None
        if not detecting and self._tracked:
            self._tracker.reset()
            self._tracked = []
        if filter == "none" and not detecting:
            out_frame = frame  # nothing to change: skip two colour conversions
        else:
            img = frame.to_ndarray(format="bgr24")
            flow = flow_frame(img) if detecting and self.tracking else None
            if flow is not None:
                self._tracked = self._tracker.update(flow, self.frames, self._take_result())
            if detecting:
                self._request_detection(img, conf_threshold, flow)
            out = flt.apply(img)
            detections = self._drawn_detections() if detecting else []
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
            return out_frame, AdditionalOutputs(self.report(now, params))
        return out_frame

    def _drawn_detections(self) -> list[Detection]:
        return [t.detection() for t in self._tracked] if self.tracking else self._detections

    def _take_result(self) -> DetectorResult | None:
        with self._lock:
            result, self._result = self._result, None
        return result

    def _request_detection(self, img: np.ndarray, threshold: float, flow: FlowFrame | None = None) -> None:
        """Start a detection on this frame unless one is already running for this session.
        `flow` (the tracker's view of this frame) travels with the job: its result describes this frame."""
        with self._lock:
            if self._detect_job is not None or self.closed or self.detect_executor is None:
                return
            frame_no = self.frames
            try:
                self._detect_job = self.detect_executor.submit(self._detect, img, threshold, frame_no, flow)
            except RuntimeError:  # executor shut down: the server is stopping
                return

    def _detect(
        self, img: np.ndarray, threshold: float, frame_no: int, flow: FlowFrame | None = None
    ) -> list[Detection]:
        t0 = time.perf_counter()
        try:
            detections = self.detector.detect(img, threshold) if self.detector else []
        except Exception:
            logger.exception("session %s: detection failed", self.session_id)
            detections = []
        with self._lock:
            self._detect_job = None
            if self._detect_wanted:
                self._detections = detections
                self._detection_frame = frame_no
                self._detection_ms = (time.perf_counter() - t0) * 1000
                if self.tracking:  # folded in by the frame path: the tracker is not thread-safe
                    self._result = DetectorResult(detections, frame_no, flow)
        return detections

    def report(self, now: float, params: dict[str, Any]) -> dict[str, Any]:
        proc = sorted(self._proc_ms)
        if not params["detect"]:
            detections: list[dict[str, object]] = []
        elif self.tracking:
            detections = [t.as_dict() for t in self._tracked]
        else:
            detections = [d.as_dict() for d in self._detections]
        return {
            "type": "video",
            "frame": self.frames,
            "fps": round(self._fps.rate(now), 1),
            "processing_ms": round(proc[len(proc) // 2], 2) if proc else 0.0,
            "detection_ms": round(self._detection_ms, 1),
            "detection_age_frames": self.frames - self._detection_frame if self._detection_frame else None,
            "detections": detections,
            "params": params,
        }

    def close(self) -> None:
        self.closed = True


def create_video_stream(
    *,
    default_filter: str,
    default_detect: bool,
    default_conf_threshold: float,
    detector: Detector | None,
    detect_executor: Executor | None,
    concurrency_limit: int,
    time_limit: float | None,
    server_rtc_configuration: RtcConfigSource,
    filters: Mapping[str, FrameFilter] = FILTERS,
    report_hz: float = 5.0,
    tracking: bool = True,
    sources: SourcePolicy | None = None,
) -> Stream:
    """The `/video` stream, written as any user's stream: a `VideoStreamHandler` on the newest frame."""
    import gradio as gr

    if default_filter not in filters:
        raise ValueError(f"unknown filter {default_filter!r}; choose one of: {', '.join(filters)}")
    pipeline = VideoPipeline(
        filters=filters,
        detector=detector,
        detect_executor=detect_executor,
        report_hz=report_hz,
        tracking=tracking,
    )
    return Stream(
        VideoStreamHandler(pipeline, skip_frames=True, frame_format="av"),
        modality="video",
        mode="send-receive",
        additional_inputs=[
            gr.Dropdown(choices=list(filters), value=default_filter, label="filter"),
            gr.Checkbox(value=default_detect, label="detect"),
            gr.Slider(
                minimum=0.0, maximum=1.0, step=0.05, value=default_conf_threshold, label="conf_threshold"
            ),
        ],
        concurrency_limit=concurrency_limit,
        time_limit=time_limit,
        server_rtc_configuration=server_rtc_configuration,
        name="video",
        sources=sources,
    )
