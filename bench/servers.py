"""Servers to compare, each speaking the same `/video/webrtc/offer` + `/video/input` routes.

- `raw`:   a minimal aiortc echo server in aiortc's own example style (transform in `recv`).
- `stock`: fastrtc 0.0.34's `Stream` as shipped, with the same handler.
- `ours`:  this project's server (`server.app.create_app`).

Chosen by environment: BENCH_SERVER (raw|raw-audio-sink|stock|stock-generate|stock-chat|ours|ours-user), BENCH_HANDLER
(pass|cartoon|detect|slow200), BENCH_SKIP_FRAMES (stock only), BENCH_FPS (stock-generate only). Start with `uvicorn --factory bench.servers:app`.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
from fastapi import FastAPI

from server.env import apply_offline_defaults

apply_offline_defaults()


def make_handler(name: str):
    from server.config import DEFAULT_MODEL
    from streams.detection import Detector, draw_detections
    from streams.filters import FILTERS

    if name == "pass":
        return lambda frame: frame
    if name == "cartoon":  # the costliest filter that keeps the frame's sequence-number bands readable
        return FILTERS["cartoon"].apply
    if name == "detect":
        detector = Detector(DEFAULT_MODEL, use_gpu=False)
        return lambda frame: draw_detections(frame.copy(), detector.detect(frame, 0.35))
    if name == "slow200":

        def slow(frame: np.ndarray) -> np.ndarray:
            time.sleep(0.2)
            return frame[::-1].copy()

        return slow
    raise ValueError(name)


def raw_app(handler_name: str) -> FastAPI:
    from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from av import VideoFrame

    handler = make_handler(handler_name)
    app = FastAPI()
    pcs: set[RTCPeerConnection] = set()

    class Transform(MediaStreamTrack):
        kind = "video"

        def __init__(self, track: MediaStreamTrack) -> None:
            super().__init__()
            self.track = track

        async def recv(self) -> VideoFrame:
            frame = await self.track.recv()
            if handler_name == "pass":
                return frame
            out = VideoFrame.from_ndarray(handler(frame.to_ndarray(format="bgr24")), format="bgr24")
            out.pts, out.time_base = frame.pts, frame.time_base
            return out

    @app.post("/video/webrtc/offer")
    async def offer(body: dict[str, Any]) -> dict[str, str]:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pcs.add(pc)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            pc.addTrack(Transform(track))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await pc.close()
                pcs.discard(pc)

        await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}

    @app.post("/video/input")
    async def set_input(body: dict[str, Any]) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def stock_app(handler_name: str, skip_frames: bool) -> FastAPI:
    from fastrtc import VideoStreamHandler

    handler = make_handler(handler_name)
    return stock_stream_app(VideoStreamHandler(handler, skip_frames=skip_frames), "send-receive", "/video")


def stock_stream_app(handler: Any, mode: str, path: str) -> FastAPI:
    """A stock fastrtc `Stream` mounted as shipped, plus the input route the bench client calls."""
    from fastrtc import Stream

    stream = Stream(
        handler,
        modality="video",
        mode=mode,
        concurrency_limit=64,
        server_rtc_configuration={"iceServers": []},
    )
    app = FastAPI()
    stream.mount(app, path=path)

    @app.post(f"{path}/input")
    async def set_input(body: dict[str, Any]) -> dict[str, str]:
        # stock calls no video handler, and starts no generator, before the first input
        stream.set_input(body["webrtc_id"], "placeholder")
        return {"status": "ok"}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def stock_generate_app(fps: int) -> FastAPI:
    """Stock fastrtc receive mode: the rate is fixed when the stream is built."""
    from fastrtc import VideoStreamHandler

    from streams.generation import TestPattern

    def generate(*args: Any):
        pattern = TestPattern(fps)
        index = 0
        while True:
            yield pattern.frame(index, 640, 480, fps)
            index += 1

    return stock_stream_app(VideoStreamHandler(generate, fps=fps), "receive", "/generate")


def raw_audio_sink_app() -> FastAPI:
    """The floor for an idle voice session: aiortc receiving and decoding Opus into a black hole."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.contrib.media import MediaBlackhole

    app = FastAPI()
    pcs: set[RTCPeerConnection] = set()

    @app.post("/chat/webrtc/offer")
    async def offer(body: dict[str, Any]) -> dict[str, str]:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pcs.add(pc)
        sink = MediaBlackhole()

        @pc.on("track")
        def on_track(track: Any) -> None:
            sink.addTrack(track)

        await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await sink.start()
        return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def stock_chat_app() -> FastAPI:
    """Stock `ReplyOnPause` echo; given our offline Silero model, since its default downloads one."""
    from fastrtc import ReplyOnPause, Stream

    from streams.vad import SileroVAD

    def echo(audio: tuple[int, np.ndarray]):
        yield audio

    stream = Stream(
        ReplyOnPause(echo, model=SileroVAD()),
        modality="audio",
        mode="send-receive",
        concurrency_limit=64,
        server_rtc_configuration={"iceServers": []},
    )
    app = FastAPI()
    stream.mount(app, path="/chat")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def ours_app(handler_name: str) -> FastAPI:
    from server.app import create_app
    from server.config import Settings
    from streams.filters import FILTERS, FrameFilter

    filters = dict(FILTERS)
    if handler_name == "slow200":
        filters["slow200"] = FrameFilter(make_handler("slow200"))
    return create_app(Settings(video_concurrency_limit=64, chat_concurrency_limit=64), video_filters=filters)


def ours_user_app(handler_name: str) -> FastAPI:
    """Anyone's handler served alone (`--streams`, BUILTIN_STREAMS empty), on the same `/video` route."""
    from server.app import create_app
    from server.config import Settings
    from streams import Stream

    stream = Stream(make_handler(handler_name), modality="video", mode="send-receive", name="video")
    return create_app(Settings(builtin_streams=[], video_concurrency_limit=64), streams=[stream])


def app() -> FastAPI:
    from server.ice import pin_host_addresses

    pin_host_addresses([a for a in os.environ.get("ICE_HOST_ADDRESSES", "").split(",") if a])
    kind = os.environ.get("BENCH_SERVER", "ours")
    handler = os.environ.get("BENCH_HANDLER", "pass")
    if kind == "raw":
        return raw_app(handler)
    if kind == "stock":
        return stock_app(handler, os.environ.get("BENCH_SKIP_FRAMES") == "1")
    if kind == "raw-audio-sink":
        return raw_audio_sink_app()
    if kind == "stock-chat":
        return stock_chat_app()
    if kind == "stock-generate":
        return stock_generate_app(int(os.environ.get("BENCH_FPS", "30")))
    if kind == "ours-user":
        return ours_user_app(handler)
    return ours_app(handler)
