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


def app_with_gated_assistant() -> FastAPI:
    """The assistant's models 'load' until the file named by READY_GATE exists, then fail (so the
    test needs no real model load): readiness must follow the loading state."""
    import os
    from pathlib import Path

    import streams.assistant

    gate = Path(os.environ["READY_GATE"])

    def gated_load(**_: object) -> streams.assistant.AssistantResponder:
        while not gate.exists():
            time.sleep(0.05)
        raise RuntimeError("no models in this test")

    streams.assistant.load_assistant = gated_load  # type: ignore[assignment]
    return create_app(Settings())


def phone_main() -> None:
    """`python -m server --phone ...` with fastphone's two network steps (Gradio's tunnel, the
    fastphone registry) replaced at their boundary; PHONE_FAKE picks what the registry answers:
    `ok`, `quota` (HTTP 202) or `offline` (the internet cannot be reached)."""
    import os
    import sys

    import httpx

    import server.fastphone as fastphone
    from server.__main__ import main

    mode = os.environ.get("PHONE_FAKE", "ok")

    class FakeBoundary(fastphone.PhoneBoundary):
        def reachable(self) -> bool:
            return mode != "offline"

        def open_tunnel(self, host: str, port: int) -> str:
            print(f"fake tunnel to {host}:{port}", flush=True)
            return "https://fake-share.gradio.live"

        def register(self, public_host: str, token: str) -> httpx.Response:
            assert public_host == "fake-share.gradio.live" and token == os.environ["HF_TOKEN"]
            request = httpx.Request("POST", "https://api.fastrtc.org/register")
            if mode == "quota":
                return httpx.Response(202, json={}, request=request)
            body = {"phone": "+1 555 0100", "code": "4321", "time_remaining": 540, "reset_date": "2026-12-01"}
            return httpx.Response(200, json=body, request=request)

    fastphone.boundary = FakeBoundary()
    main(sys.argv[1:])
