"""A Python WebRTC client for `/video`: sends a moving test pattern, counts the frames that come back.

    python examples/webrtc_client.py --server http://127.0.0.1:8000 --seconds 10 --filter edges

Needs `pip install aiortc httpx numpy`. Prints, once a second, the frames received and the server's
latest report from `/video/outputs`, then a summary; exits 1 if no frame came back.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import time
from typing import Any

import httpx
import numpy as np
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

WIDTH, HEIGHT, FPS = 640, 480, 30


class PatternTrack(VideoStreamTrack):
    """A synthetic camera: colour bars sliding sideways, with a white square bouncing over them."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0
        self.bars = np.repeat(np.linspace(0, 255, WIDTH, dtype=np.uint8)[None, :, None], HEIGHT, 0)
        self.bars = np.concatenate([self.bars, self.bars[:, ::-1], np.full_like(self.bars, 128)], 2)
        self.start = time.monotonic()

    async def recv(self) -> VideoFrame:
        await asyncio.sleep(max(0.0, self.start + self.sent / FPS - time.monotonic()))
        img = np.roll(self.bars, self.sent * 4, axis=1)
        x = int((WIDTH - 80) * abs((self.sent % 120) / 60 - 1))
        img[200:280, x : x + 80] = 255
        frame = VideoFrame.from_ndarray(img, format="bgr24")
        frame.pts, frame.time_base = self.sent * 3000, fractions.Fraction(1, 90_000)
        self.sent += 1
        return frame


async def read_outputs(http: httpx.AsyncClient, reports: list[dict[str, Any]]) -> None:
    """Server-sent events: `event: output` then `data: <json>` per report, `event: end` at the end."""
    async with http.stream("GET", "/video/outputs", timeout=None) as resp:
        event = "message"
        async for line in resp.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "output":
                reports.append(json.loads(line[5:]))
            elif line.startswith("data:") and event == "end":
                return


async def count_frames(track: Any, arrivals: list[float]) -> None:
    try:
        while True:
            await track.recv()
            arrivals.append(time.monotonic())
    except MediaStreamError:
        return


async def main(server: str, token: str | None, seconds: float, video_filter: str) -> int:
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=server, headers=auth, timeout=15) as http:
        # A server-issued session id (and a session token when the server requires tokens).
        resp = await http.post("/api/session")
        if resp.status_code != 200:
            print(f"refused: {resp.status_code} {resp.json().get('message', resp.text)}")
            return 1
        session = resp.json()
        webrtc_id = session["webrtc_id"]
        if session.get("token"):  # valid for this session only
            http.headers["Authorization"] = f"Bearer {session['token']}"
        http.params = {"webrtc_id": webrtc_id}  # on every request: a proxy routes on it
        config = (await http.get("/api/rtc-config")).json()
        ice = [RTCIceServer(**{k: s[k] for k in ("urls", "username", "credential") if k in s})
               for s in config.get("iceServers", [])]  # fmt: skip

        pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
        channel = pc.createDataChannel("text")  # before the offer: fastrtc sends nothing without one
        channel.on("message", lambda message: print(f"data channel: {message}"))
        camera = PatternTrack()
        pc.addTrack(camera)
        arrivals: list[float] = []
        readers: list[asyncio.Task[None]] = []
        pc.on("track", lambda track: readers.append(asyncio.ensure_future(count_frames(track, arrivals))))

        await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers every candidate here
        offer = {"type": "offer", "webrtc_id": webrtc_id, "sdp": pc.localDescription.sdp}
        resp = await http.post("/video/webrtc/offer", json=offer)
        if resp.status_code != 200:
            print(f"offer refused: {resp.status_code} {resp.json().get('message', resp.text)}")
            await pc.close()
            return 1
        await pc.setRemoteDescription(RTCSessionDescription(**resp.json()))
        print(f"session {webrtc_id}: offer answered")
        params = {"webrtc_id": webrtc_id, "filter": video_filter}
        resp = await http.post("/video/input", json=params)
        print(f"input {params}: {resp.status_code} {resp.json()}")

        reports: list[dict[str, Any]] = []
        outputs = asyncio.create_task(read_outputs(http, reports))
        start = time.monotonic()
        for second in range(1, int(seconds) + 1):
            await asyncio.sleep(start + second - time.monotonic())
            got = sum(1 for t in arrivals if t > start + second - 1)
            latest = reports[-1] if reports else {}
            server_side = {k: latest[k] for k in ("fps", "processing_ms", "params") if k in latest}
            print(
                f"{second:3d} s: {got} frames/s received, connection {pc.connectionState}, report {server_side}"
            )

        for task in (outputs, *readers):
            task.cancel()
        await pc.close()
    print(
        f"summary: sent {camera.sent} frames, received {len(arrivals)} frames, {len(reports)} output reports"
    )
    return 0 if arrivals else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", default="http://127.0.0.1:8000", help="the server's base URL")
    parser.add_argument("--token", help="the server's AUTH_TOKEN, if it has one")
    parser.add_argument("--seconds", type=float, default=10, help="how long to stream")
    parser.add_argument("--filter", default="edges", help="none, flip, mirror, gray, edges, cartoon, ...")
    args = parser.parse_args()
    raise SystemExit(asyncio.run(main(args.server.rstrip("/"), args.token, args.seconds, args.filter)))
