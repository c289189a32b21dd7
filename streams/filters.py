"""OpenCV frame filters: BGR uint8 in, BGR uint8 out, same size.

Each is cheap enough (a few ms at 640x480 on one core) to run on every frame.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import cv2
import numpy as np

Frame = np.ndarray
Box = tuple[int, int, int, int]


def _same_box(box: Box, width: int, height: int) -> Box:
    return box


def _flip_box(box: Box, width: int, height: int) -> Box:
    x1, y1, x2, y2 = box
    return x1, height - 1 - y2, x2, height - 1 - y1


def _mirror_box(box: Box, width: int, height: int) -> Box:
    x1, y1, x2, y2 = box
    return width - 1 - x2, y1, width - 1 - x1, y2


@dataclass(frozen=True)
class FrameFilter:
    """A per-frame transform, and where a box found on the input lands on its output."""

    apply: Callable[[Frame], Frame]
    map_box: Callable[[Box, int, int], Box] = _same_box


def none(frame: Frame) -> Frame:
    return frame


def flip(frame: Frame) -> Frame:
    """Upside down."""
    return cv2.flip(frame, 0)


def mirror(frame: Frame) -> Frame:
    """Left-right, like a mirror."""
    return cv2.flip(frame, 1)


def gray(frame: Frame) -> Frame:
    return cv2.cvtColor(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)


def edges(frame: Frame) -> Frame:
    g = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    return cv2.cvtColor(cv2.Canny(g, 80, 160), cv2.COLOR_GRAY2BGR)


def blur(frame: Frame) -> Frame:
    return cv2.GaussianBlur(frame, (0, 0), sigmaX=6)


def pixelate(frame: Frame, block: int = 16) -> Frame:
    h, w = frame.shape[:2]
    small = cv2.resize(frame, (max(1, w // block), max(1, h // block)), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def cartoon(frame: Frame) -> Frame:
    """Flat colours plus dark outlines; the smoothing runs at half size to stay per-frame cheap."""
    h, w = frame.shape[:2]
    small = cv2.resize(frame, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    smooth = cv2.bilateralFilter(small, d=7, sigmaColor=60, sigmaSpace=7)
    smooth = (smooth // 32) * 32 + 16  # posterise
    smooth = cv2.resize(smooth, (w, h), interpolation=cv2.INTER_LINEAR)
    g = cv2.medianBlur(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), 5)
    outline = cv2.adaptiveThreshold(g, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, 9, 4)
    return cv2.bitwise_and(smooth, smooth, mask=outline)


FILTERS: Mapping[str, FrameFilter] = {
    "none": FrameFilter(none),
    "flip": FrameFilter(flip, _flip_box),
    "mirror": FrameFilter(mirror, _mirror_box),
    "gray": FrameFilter(gray),
    "edges": FrameFilter(edges),
    "cartoon": FrameFilter(cartoon),
    "blur": FrameFilter(blur),
    "pixelate": FrameFilter(pixelate),
}
