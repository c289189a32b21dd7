"""Boxes on moving objects: untracked background detection vs tracked vs synchronous, same run.

A rendered 640x480 clip (scikit-image's astronaut, 200x200, on plain grey, bouncing at a known
speed: s px/frame horizontally and s/4 vertically) is fed in real time at 30 fps, newest frame
first as the server does, to (a) today's pipeline (detection in the background on a real thread
pool, latest boxes drawn), (b) the same with tracking, and (c) stock fastrtc's way: detect on
every frame in the handler, so boxes are exact but the output rate is the detector's. Error is
the distance of the drawn person box's centre from the truth (the photo's rendered centre plus
NanoDet's median offset from it, measured on every frame of the clip); `vs_sync` is the distance
from the box NanoDet itself gives on that frame. `lag` is how many frames old the detector
result behind the drawn box is (in (b) the box is carried to the current frame).
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import skimage

from bench.common import save, table
from server.config import DEFAULT_MODEL
from streams.detection import Detection, Detector, draw_detections
from streams.video import VideoPipeline

PHOTO = Path(skimage.__file__).parent / "data" / "astronaut.png"
W, H, SIZE, FPS = 640, 480, 200, 30
PARAMS = {"filter": "none", "detect": True, "conf_threshold": 0.35}
WARMUP_FRAMES = 15  # left out of the figures: the first detector result needs a few frames


def bounce(t: float, span: float) -> float:
    """Position at distance `t` along a path that bounces between 0 and `span`."""
    t %= 2 * span
    return t if t <= span else 2 * span - t


def positions(speed: float, frames: int) -> np.ndarray:
    """Top-left corner of the photo on each frame."""
    return np.array(
        [
            (20 + bounce(speed * i, W - SIZE - 40), 20 + bounce(speed / 4 * i, H - SIZE - 40))
            for i in range(frames)
        ]
    )


def render(photo: np.ndarray, x: float, y: float) -> np.ndarray:
    frame = np.full((H, W, 3), 96, np.uint8)
    xi, yi = round(x), round(y)
    frame[yi : yi + SIZE, xi : xi + SIZE] = photo
    return frame


def centre(box: Any) -> np.ndarray:
    b = np.asarray(box, float)
    return (b[:2] + b[2:]) / 2


def person(detections: list[Detection]) -> Detection | None:
    return next((d for d in detections if d.label == "person"), None)


def sync_handler(detector: Detector, frame: av.VideoFrame) -> tuple[av.VideoFrame, list[Detection]]:
    """Stock fastrtc's way: the handler detects on every frame before it returns it."""
    img = frame.to_ndarray(format="bgr24")
    found = detector.detect(img, PARAMS["conf_threshold"])
    out = av.VideoFrame.from_ndarray(draw_detections(img, found), format="bgr24")
    out.pts, out.time_base = frame.pts, frame.time_base
    return out, found


def feed(
    frames: list[av.VideoFrame], handle: Any
) -> tuple[list[tuple[int, Any]], list[float], list[float], float]:
    """Frames as a 30 fps camera makes them; each time the handler is free it takes the newest.
    Returns (frame index, boxes) per output frame, processing ms, latency ms (camera to out), seconds."""
    outputs, proc_ms, latency_ms = [], [], []
    t0 = time.perf_counter()
    last = -1
    while True:
        newest = int((time.perf_counter() - t0) * FPS)
        if newest >= len(frames):
            break
        if newest <= last:
            time.sleep(max(0.0, t0 + (last + 1) / FPS - time.perf_counter()))
            continue
        start = time.perf_counter()
        boxes = handle(newest, frames[newest])
        done = time.perf_counter()
        last = newest
        if newest >= WARMUP_FRAMES:
            outputs.append((newest, boxes))
            proc_ms.append((done - start) * 1000)
            latency_ms.append((done - (t0 + newest / FPS)) * 1000)
    return outputs, proc_ms, latency_ms, len(frames) / FPS


def pipeline_handler(pipeline: VideoPipeline) -> Any:
    def handle(i: int, frame: av.VideoFrame) -> tuple[Any, int | None]:
        pipeline(frame, **PARAMS)
        report = pipeline.report(0.0, PARAMS)  # what was drawn on this frame
        box = next((d for d in report["detections"] if d["label"] == "person"), None)
        return (box["box"] if box else None), report["detection_age_frames"]

    return handle


def run_speed(detector: Detector, photo: np.ndarray, speed: float, seconds: float) -> list[dict[str, Any]]:
    count = int(seconds * FPS)
    pos = positions(speed, count)
    images = [render(photo, x, y) for x, y in pos]
    truth = [centre((x, y, x + SIZE, y + SIZE)) for x, y in pos]
    # NanoDet on every frame, untimed: the reference boxes and the detector's offset from the photo
    reference = [person(detector.detect(img, PARAMS["conf_threshold"])) for img in images]
    offset = np.median([centre(r.box) - t for r, t in zip(reference, truth, strict=True) if r], axis=0)
    frames = []
    for i, img in enumerate(images):  # as a decoder hands them over
        frame = av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p")
        frame.pts, frame.time_base = i * 3000, Fraction(1, 90000)
        frames.append(frame)

    def sync(i: int, frame: av.VideoFrame) -> tuple[Any, int]:
        found = person(sync_handler(detector, frame)[1])
        return (found.box if found else None), 0

    rows = []
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="detect") as pool:
        approaches = {
            "a. background, untracked": pipeline_handler(
                VideoPipeline(detector=detector, detect_executor=pool, tracking=False)
            ),
            "b. background, tracked": pipeline_handler(
                VideoPipeline(detector=detector, detect_executor=pool, tracking=True)
            ),
            "c. synchronous (stock)": sync,
        }
        for name, handle in approaches.items():
            time.sleep(0.3)  # let a job left from the previous approach finish
            outputs, proc_ms, latency_ms, wall = feed(frames, handle)
            errors, vs_sync, lags = [], [], []
            for i, (box, lag) in outputs:
                if box is None:
                    continue
                errors.append(float(np.linalg.norm(centre(box) - (truth[i] + offset))))
                if reference[i] is not None:
                    vs_sync.append(float(np.linalg.norm(centre(box) - centre(reference[i].box))))
                lags.append(lag or 0)
            rows.append(
                {
                    "speed_px_per_frame": f"{speed:g}",
                    "approach": name,
                    "err_mean_px": round(float(np.mean(errors)), 1) if errors else "",
                    "err_p90_px": round(float(np.percentile(errors, 90)), 1) if errors else "",
                    "vs_sync_mean_px": round(float(np.mean(vs_sync)), 1) if vs_sync else "",
                    "boxed_pct": round(100 * len(errors) / max(1, len(outputs))),
                    "out_fps": round(len(outputs) / (wall - WARMUP_FRAMES / FPS), 1),
                    "proc_ms_median": round(float(np.median(proc_ms)), 1),
                    "proc_ms_p90": round(float(np.percentile(proc_ms, 90)), 1),
                    "latency_ms_median": round(float(np.median(latency_ms)), 1),
                    "lag_frames_mean": round(float(np.mean(lags)), 1) if lags else "",
                }
            )
            print(rows[-1], flush=True)
    return rows


COLUMNS = [
    "speed_px_per_frame", "approach", "err_mean_px", "err_p90_px", "vs_sync_mean_px", "boxed_pct",
    "out_fps", "proc_ms_median", "proc_ms_p90", "latency_ms_median", "lag_frames_mean",
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--speeds", default="4,12", help="px per frame, horizontally")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    detector = Detector(DEFAULT_MODEL, use_gpu=False)
    photo = cv2.resize(cv2.imread(str(PHOTO)), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    rows = [row for s in args.speeds.split(",") for row in run_speed(detector, photo, float(s), args.seconds)]
    md = table(rows, COLUMNS)
    print(md)
    notes = (
        f"{__doc__ or ''}\nLoad average when the run began: {load:.1f} (other work slows all three alike)."
    )
    save("tracking", rows, md, notes)


if __name__ == "__main__":
    main()
