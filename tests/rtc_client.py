"""A real aiortc client peer for tests and benchmarks: sends numbered frames, reads them back.

Each sent frame carries its sequence number as 16 black/white blocks in a top and a bottom band,
and a white orientation square in the top-left: the receiver knows which frame came back, how
late, and whether it was flipped or mirrored.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aioice.ice
import httpx
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from streams.jitter import use_low_latency_jitter_buffers

BITS = 16
BAND = 32
MARK = (100, 160)  # orientation square: rows/cols 100..160 from the top-left corner


def session_http(
    base_url: str, webrtc_id: str, token: str | None = None, timeout: float = 10.0
) -> httpx.AsyncClient:
    """Requests about one session, as the page makes them: the id in the query string (a proxy routes
    on it) and the credential, if any, as a bearer header."""
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=timeout,
        params={"webrtc_id": webrtc_id},
        headers={"Authorization": f"Bearer {token}"} if token else {},
    )


async def issue_session(base_url: str, token: str | None = None) -> tuple[str, str | None]:
    """A server-issued (webrtc_id, session token) from POST /api/session."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        resp = await http.post("/api/session", headers=headers)
    resp.raise_for_status()
    body = resp.json()
    return body["webrtc_id"], body["token"]


def route(stream: str, path: str) -> str:
    """A stream's route; a stream mounted at the root (fastrtc's `stream.mount(app)`) has no prefix."""
    return f"/{stream}{path}" if stream else path


def pin_loopback() -> None:
    """aioice skips 127.0.0.1; on a loopback-only machine the client must offer it explicitly."""
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else []


def encode_frame(
    seq: int, width: int = 640, height: int = 480, background: np.ndarray | None = None
) -> np.ndarray:
    img = np.full((height, width, 3), 128, np.uint8) if background is None else background.copy()
    block = width // BITS
    for i in range(BITS):
        value = 255 if (seq >> i) & 1 else 0
        img[:BAND, i * block : (i + 1) * block] = value
        img[height - BAND :, i * block : (i + 1) * block] = value
    img[MARK[0] : MARK[1], MARK[0] : MARK[1]] = 255
    return img


@dataclass
class Decoded:
    seq: int
    orientation: str  # "upright", "flip", "mirror", "rotated" or "unknown"


def decode_frame(gray: np.ndarray) -> Decoded:
    h, w = gray.shape[:2]
    a, b = MARK
    corners = {
        "upright": gray[a:b, a:b].mean(),
        "flip": gray[h - b : h - a, a:b].mean(),
        "mirror": gray[a:b, w - b : w - a].mean(),
        "rotated": gray[h - b : h - a, w - b : w - a].mean(),
    }
    orientation = max(corners, key=corners.__getitem__)
    if corners[orientation] < 200:
        orientation = "unknown"
    bits = read_bits(gray)
    if orientation in ("mirror", "rotated"):
        bits = bits[::-1]
    return Decoded(sum(1 << i for i, bit in enumerate(bits) if bit), orientation)


def read_bits(gray: np.ndarray) -> list[bool]:
    """The 16 blocks of the top band, left to right, as bits (block centres only: edges blur)."""
    block = gray.shape[1] // BITS
    row = gray[BAND // 4 : BAND - BAND // 4]
    return [row[:, i * block + block // 4 : (i + 1) * block - block // 4].mean() > 128 for i in range(BITS)]


class NumberedTrack(VideoStreamTrack):
    """A camera that sends numbered frames at `fps`, remembering when each was sent."""

    def __init__(
        self, fps: int = 30, width: int = 640, height: int = 480, background: np.ndarray | None = None
    ):
        super().__init__()
        self.fps, self.width, self.height = fps, width, height
        self.background = background
        self.sent: dict[int, float] = {}
        self.seq = 0
        self._start: float | None = None

    async def recv(self) -> VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        target = self._start + self.seq / self.fps
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        seq = self.seq & 0xFFFF
        frame = VideoFrame.from_ndarray(
            encode_frame(seq, self.width, self.height, self.background), format="bgr24"
        )
        frame.pts = self.seq * (90000 // self.fps)
        frame.time_base = fractions.Fraction(1, 90000)
        self.sent[seq] = time.monotonic()
        self.seq += 1
        return frame


@dataclass
class Received:
    seq: int
    orientation: str
    latency_s: float
    at: float
    mean: float


@dataclass
class VideoClient:
    """One client session against a `/video`-style stream."""

    base_url: str
    stream: str = "video"
    webrtc_id: str = field(default_factory=lambda: f"test-{time.monotonic_ns()}")
    token: str | None = None  # sent as a bearer credential (AUTH_TOKEN or a session token)
    rtc_configuration: RTCConfiguration | None = None  # default: host candidates only (loopback)
    fps: int = 30
    width: int = 640
    height: int = 480
    background: np.ndarray | None = None
    received: list[Received] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    keep_frames: bool = False
    low_latency_receive: bool = True
    last_frame: np.ndarray | None = None

    async def connect(self, timeout: float = 15.0) -> dict[str, Any]:
        pin_loopback()
        self.pc = RTCPeerConnection(self.rtc_configuration or RTCConfiguration(iceServers=[]))
        self.channel = self.pc.createDataChannel("text")
        self.channel.on("message", lambda m: self.messages.append(json.loads(m)))
        self.track = NumberedTrack(self.fps, self.width, self.height, self.background)
        self.pc.addTrack(self.track)
        self._reader: asyncio.Task[None] | None = None
        self.pc.on("track", self._on_track)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer", "webrtc_id": self.webrtc_id}
        async with session_http(self.base_url, self.webrtc_id, self.token, timeout) as http:
            resp = await http.post(route(self.stream, "/webrtc/offer"), json=body)
        answer = resp.json()
        if resp.status_code != 200:
            raise RuntimeError(f"offer refused: {resp.status_code} {answer}")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        if self.low_latency_receive:  # like a browser: decode a frame when its last packet arrives
            use_low_latency_jitter_buffers(self.pc)
        return answer

    def _on_track(self, track: Any) -> None:
        self._reader = asyncio.ensure_future(self._read(track))

    async def _read(self, track: Any) -> None:
        try:
            while True:
                frame = await track.recv()
                now = time.monotonic()
                gray = frame.to_ndarray(format="gray")
                if self.keep_frames:
                    self.last_frame = frame.to_ndarray(format="bgr24")
                d = decode_frame(gray)
                sent = self.track.sent.get(d.seq)
                latency = now - sent if sent is not None else float("nan")
                self.received.append(Received(d.seq, d.orientation, latency, now, float(gray.mean())))
        except MediaStreamError:
            return

    async def wait_frames(self, count: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        start = len(self.received)
        while len(self.received) - start < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"got {len(self.received) - start} of {count} frames in {timeout}s")
            await asyncio.sleep(0.05)

    async def set_input(self, **params: Any) -> httpx.Response:
        async with session_http(self.base_url, self.webrtc_id, self.token) as http:
            return await http.post(route(self.stream, "/input"), json={"webrtc_id": self.webrtc_id, **params})

    def window(self, seconds: float) -> list[Received]:
        """Frames received in the last `seconds`."""
        now = time.monotonic()
        return [r for r in self.received if now - r.at <= seconds]

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        await self.pc.close()


def percentile(values: list[float], q: float) -> float:
    clean = sorted(v for v in values if v == v)
    if not clean:
        return float("nan")
    return clean[min(len(clean) - 1, int(round(q / 100 * (len(clean) - 1))))]


def decode_counter(gray: np.ndarray) -> int:
    """The generate stream's frame counter: 16 blocks across the top band, bit i left to right."""
    return sum(1 << i for i, bit in enumerate(read_bits(gray)) if bit)


@dataclass
class ReceiveClient:
    """A receive-only client of a `/generate`-style stream: records each frame's counter and arrival."""

    base_url: str
    stream: str = "generate"
    webrtc_id: str = field(default_factory=lambda: f"recv-{time.monotonic_ns()}")
    token: str | None = None
    frames: list[tuple[float, int, int]] = field(default_factory=list)  # (arrival, counter, width)
    messages: list[dict[str, Any]] = field(default_factory=list)  # data-channel JSON
    keep_last: bool = False
    last_frame: np.ndarray | None = None  # BGR, with keep_last

    async def connect(self, timeout: float = 15.0) -> None:
        pin_loopback()
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        channel = self.pc.createDataChannel("text")
        channel.on("message", lambda m: self.messages.append(json.loads(m)))
        self.pc.addTransceiver("video", direction="recvonly")
        self._reader: asyncio.Task[None] | None = None
        self.pc.on("track", lambda track: setattr(self, "_reader", asyncio.ensure_future(self._read(track))))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer", "webrtc_id": self.webrtc_id}
        async with session_http(self.base_url, self.webrtc_id, self.token, timeout) as http:
            resp = await http.post(route(self.stream, "/webrtc/offer"), json=body)
        if resp.status_code != 200:
            raise RuntimeError(f"offer refused: {resp.status_code} {resp.text}")
        answer = resp.json()
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        use_low_latency_jitter_buffers(self.pc)

    async def _read(self, track: Any) -> None:
        try:
            while True:
                frame = await track.recv()
                gray = frame.to_ndarray(format="gray")
                if self.keep_last:
                    self.last_frame = frame.to_ndarray(format="bgr24")
                self.frames.append((time.monotonic(), decode_counter(gray), frame.width))
        except MediaStreamError:
            return

    def rate(self, since: float, until: float | None = None) -> float:
        until = until or time.monotonic()
        n = sum(1 for t, _, _ in self.frames if since <= t < until)
        return n / (until - since)

    async def set_input(self, **params: Any) -> httpx.Response:
        async with session_http(self.base_url, self.webrtc_id, self.token) as http:
            return await http.post(route(self.stream, "/input"), json={"webrtc_id": self.webrtc_id, **params})

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        await self.pc.close()
