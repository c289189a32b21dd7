"""App factories for tests that need a server with something extra (`uvicorn --factory`)."""

from __future__ import annotations

import time

import numpy as np
from fastapi import FastAPI

from server.app import create_app
from server.config import Settings
from streams.filters import FILTERS, FrameFilter


def slow_200ms(frame: np.ndarray) -> np.ndarray:
    """A deliberately slow handler: 200 ms of work per frame, then a visible change (flip)."""
    time.sleep(0.2)
    return frame[::-1].copy()


def explode(frame: np.ndarray) -> np.ndarray:
    raise RuntimeError("boom")


def app_with_test_filters() -> FastAPI:
    filters = {**FILTERS, "slow200": FrameFilter(slow_200ms), "explode": FrameFilter(explode)}
    return create_app(Settings(), video_filters=filters)
