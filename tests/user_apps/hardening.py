"""User streams that exercise the runtime's guarantees: a slow handler, every-frame processing,
a handler that raises, per-stream limits; served together with `--streams tests.user_apps.hardening:streams`."""

import time
from collections import Counter

import numpy as np

from streams import AdditionalOutputs, Stream, VideoStreamHandler, get_current_context

processed: Counter[str] = Counter()


def slow(frame: np.ndarray) -> np.ndarray:
    """200 ms of work per frame, then a visible change (upside down)."""
    time.sleep(0.2)
    return frame[::-1].copy()


def every(frame: np.ndarray):
    """Counts the frames it sees for the session fastrtc's context names."""
    webrtc_id = get_current_context().webrtc_id
    processed[webrtc_id] += 1
    time.sleep(0.005)
    return frame, AdditionalOutputs({"type": "count", "processed": processed[webrtc_id]})


def fragile(frame: np.ndarray, fail: bool = False) -> np.ndarray:
    if fail:
        raise RuntimeError("upstream http://10.0.0.7/v1 answered 401 for key sk-internal-1234")
    return frame[::-1].copy()


streams = [
    Stream(slow, modality="video", mode="send-receive", concurrency_limit=2, name="slow"),
    Stream(VideoStreamHandler(every, skip_frames=False, queue_size=64), modality="video", name="every"),
    Stream(fragile, modality="video", mode="send-receive", concurrency_limit=None, name="fragile"),
]
