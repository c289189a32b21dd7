"""WebSocket and Twilio Media Streams clients for the chat stream (the `websockets` library)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import websockets

from streams.telephony import decode_mulaw, encode_mulaw
from streams.vad import resample


@dataclass
class AudioSocketClient:
    """Speaks fastrtc's WebSocket protocol (phone=False) or Twilio's (phone=True) in real time."""

    url: str
    session_id: str = field(default_factory=lambda: f"ws-{time.monotonic_ns()}")
    phone: bool = False
    input_rate: int | None = None  # fastrtc's protocol: the handler's input rate (ours 16 kHz)
    start_parameters: dict[str, str] = field(default_factory=dict)  # Twilio's <Parameter>s from TwiML
    output_rate: int | None = None  # fastrtc's protocol: stated in `start` when set
    echo_marks: bool = True  # Twilio echoes each mark once the audio before it has played
    mark_delay_s: float = 0.0  # how long this "phone" buffers audio before playing it
    media: list[tuple[float, float]] = field(default_factory=list)  # (arrival, rms)
    media_sizes: list[int] = field(default_factory=list)  # samples in each media message
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    @property
    def rate(self) -> int:
        return 8000 if self.phone else (self.input_rate or 16000)

    async def __aenter__(self) -> AudioSocketClient:
        self.ws = await websockets.connect(self.url, max_size=2**22)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._reader.cancel()
        with contextlib.suppress(Exception):
            await self.ws.close()

    async def start(self) -> None:
        if self.phone:
            await self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
            await self.send({"event": "start", "streamSid": self.session_id,
                             "start": {"streamSid": self.session_id, "customParameters": self.start_parameters,
                                       "mediaFormat": {"encoding": "audio/x-mulaw",
                                       "sampleRate": 8000, "channels": 1}}})  # fmt: skip
        else:
            start: dict[str, Any] = {"event": "start", "websocket_id": self.session_id}
            if self.input_rate is not None:
                start["input_sample_rate"] = self.input_rate
            if self.output_rate is not None:
                start["output_sample_rate"] = self.output_rate
            await self.send(start)

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                now = time.monotonic()
                msg = json.loads(raw)
                if msg.get("event") == "media":
                    pcm = decode_mulaw(msg["media"]["payload"])
                    self.media.append((now, float(np.sqrt(np.mean(pcm**2))) if len(pcm) else 0.0))
                    self.media_sizes.append(len(pcm))
                else:
                    self.events.append((now, msg))
                    if msg.get("event") == "mark" and self.phone and self.echo_marks:
                        echo = {"event": "mark", "streamSid": self.session_id, "mark": msg["mark"]}
                        asyncio.get_running_loop().call_later(
                            self.mark_delay_s, lambda m=echo: asyncio.ensure_future(self.send(m))
                        )

    async def speak(self, audio48k: np.ndarray | None, seconds_of_silence: float = 0.0) -> float:
        """Send audio (and then silence) as 20 ms media messages in real time; returns when speech ended."""
        audio = resample(audio48k, 48000, self.rate) if audio48k is not None else np.zeros(0, np.float32)
        audio = np.concatenate([audio, np.zeros(int(seconds_of_silence * self.rate), np.float32)])
        step = self.rate // 50
        start = time.monotonic()
        speech_end = start + (len(audio) - int(seconds_of_silence * self.rate)) / self.rate
        for i, offset in enumerate(range(0, len(audio), step)):
            chunk = audio[offset : offset + step]
            msg: dict[str, Any] = {
                "event": "media",
                "media": {"payload": encode_mulaw(chunk, self.rate, self.rate)},
            }
            if self.phone:
                msg["streamSid"] = self.session_id
            await self.send(msg)
            delay = start + (i + 1) * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        return speech_end

    def audible_after(self, t: float, threshold: float = 0.01) -> list[float]:
        return [at for at, rms in self.media if at > t and rms > threshold]

    def event_types(self) -> list[str]:
        return [m.get("event") or m.get("type") or "?" for _, m in self.events]

    async def closed(self, timeout: float = 5.0) -> int | None:
        with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
            await asyncio.wait_for(self.ws.wait_closed(), timeout)
        return self.ws.close_code

    @property
    def close_reason(self) -> str | None:
        return self.ws.close_reason

    def refusal(self) -> str | None:
        """Why the server ended the session: the `error` event's code (fastrtc's protocol), or the
        close reason's `code:` prefix (Twilio's, which has no error event)."""
        errors = [m for _, m in self.events if m.get("event") == "error"]
        if errors:
            return errors[-1]["meta"]["error"]
        reason = self.ws.close_reason or ""
        return reason.split(":", 1)[0] or None

    def twilio_violations(self) -> list[dict[str, Any]]:
        """Messages Twilio would reject (it accepts only media, mark and clear, with the streamSid)."""
        return [m for _, m in self.events
                if m.get("event") not in ("mark", "clear") or m.get("streamSid") != self.session_id]  # fmt: skip
