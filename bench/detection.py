"""Detection throughput: per-frame inference time of the embedded model at 1 and 2 threads."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import skimage

from bench.common import save, table
from server.config import DEFAULT_MODEL
from streams.detection import Detector

PHOTO = Path(skimage.__file__).parent / "data" / "astronaut.png"


def measure(threads: int, frames: int = 60) -> dict:
    detector = Detector(DEFAULT_MODEL, threads=threads, use_gpu=False)
    img = cv2.resize(cv2.imread(str(PHOTO)), (640, 480))
    for _ in range(5):
        detector.detect(img)
    times = []
    for _ in range(frames):
        t0 = time.perf_counter()
        detector.detect(img)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {
        "model": DEFAULT_MODEL.name,
        "providers": ",".join(detector.providers),
        "threads": threads,
        "median_ms": round(times[len(times) // 2], 1),
        "p95_ms": round(times[int(len(times) * 0.95)], 1),
        "max_fps": round(1000 / float(np.median(times)), 1),
    }


def main() -> None:
    rows = [measure(t) for t in (1, 2)]
    md = table(rows, ["model", "providers", "threads", "median_ms", "p95_ms", "max_fps"])
    print(md)
    save("detection", rows, md, __doc__ or "")


if __name__ == "__main__":
    main()
