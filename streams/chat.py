"""Voice chat: the user talks, and when they pause the server replies with audio.

`ChatHandler` is a fastrtc `AsyncStreamHandler` (so fastrtc's WebRTC, WebSocket and telephone
transports all drive it) that replaces stock `ReplyOnPause`:

- end of turn from `streams.turns.TurnDetector` (32 ms VAD windows, not 0.6 s chunks);
- `emit()` waits on a queue: an idle session costs nothing (stock spins ~9,000 calls/s);
- barge-in: speech during a reply cancels it and drops the queued audio at once;
- replies are paced to real time, so little is ever queued downstream of us.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any, Literal, Protocol

import av
import numpy as np
from fastrtc import AsyncStreamHandler
from fastrtc.utils import create_message
from pydantic import BaseModel, ConfigDict

from streams.runtime import HardenedStream, ReportChannel, RtcConfigSource
from streams.turns import SpeechStarted, TurnDetector, TurnDiscarded, TurnEnded, TurnSettings
from streams.vad import SAMPLE_RATE, SileroVAD, resample, to_float_mono

logger = logging.getLogger(__name__)

OUTPUT_RATE = 24_000
CHUNK = OUTPUT_RATE // 50  # 20 ms
PLAYBACK_LEAD_S = 0.08
ECHO_LEAD_IN = (
    SAMPLE_RATE // 16
)  # 62 ms before detected speech: keeps soft onsets  # how far ahead of real time replies are handed downstream

ChatMode = Literal["echo", "assistant"]


class ChatParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: ChatMode = "echo"


class Responder(Protocol):
    """Turns one user turn into reply audio (float32 mono at 24 kHz), chunk by chunk."""

    def reply(self, turn: TurnEnded, session: ChatHandler) -> AsyncIterator[np.ndarray]: ...


class EchoResponder:
    """Replies with what the user said, from the first detected speech (the pre-roll is for STT)."""

    async def reply(self, turn: TurnEnded, session: ChatHandler) -> AsyncIterator[np.ndarray]:
        start = max(0, turn.speech_start - ECHO_LEAD_IN)
        yield resample(turn.audio[start:], SAMPLE_RATE, OUTPUT_RATE)


class ChatHandler(AsyncStreamHandler):
    def __init__(
        self,
        vad: SileroVAD,
        responders: Mapping[str, Responder],
        *,
        turn_settings: TurnSettings | None = None,
        default_mode: ChatMode = "echo",
        unavailable: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            expected_layout="mono", output_sample_rate=OUTPUT_RATE, input_sample_rate=SAMPLE_RATE
        )
        self.vad = vad
        self.responders = responders
        self.turn_settings = turn_settings or TurnSettings()
        self.unavailable = dict(unavailable or {})
        self.params = ChatParams(mode=default_mode)
        self.session_id = "unbound"
        self.reports: ReportChannel | None = None
        self.state: Literal["listening", "thinking", "speaking"] = "listening"
        self.turns = TurnDetector(vad, self.turn_settings)
        self.closed = False
        self.on_interrupt: Callable[[], None] | None = None  # transports add their own (Twilio "clear")
        self._out: asyncio.Queue[np.ndarray] = asyncio.Queue()
        self._reply_task: asyncio.Task[None] | None = None
        self._play_clock: float | None = None
        self._turn_started = 0.0
        self._first_audio_pending = False
        self.last_turn: dict[str, Any] = {}
        self.history: list[dict[str, str]] = []  # the assistant's conversation, this session only

    def copy(self) -> ChatHandler:
        return ChatHandler(
            self.vad,
            self.responders,
            turn_settings=self.turn_settings,
            default_mode=self.params.mode,
            unavailable=self.unavailable,
        )

    def bind(self, session_id: str, reports: ReportChannel) -> ChatHandler:
        """Give the per-connection copy its id and report channel (done by the stream on connect)."""
        self.session_id, self.reports = session_id, reports
        return self

    # ---- live parameters ----
    def update(self, changes: dict[str, Any]) -> dict[str, Any]:
        params = ChatParams.model_validate(self.params.model_dump() | changes)
        reason = self.unavailable.get(params.mode) or getattr(
            self.responders.get(params.mode), "unavailable_reason", None
        )
        if params.mode not in self.responders or reason:
            raise ValueError(f"mode {params.mode!r} is unavailable: {reason or 'not configured'}")
        self.params = params
        logger.info("session %s: chat mode %s", self.session_id, params.mode)
        return params.model_dump()

    # ---- audio in ----
    def resample(self, frame: av.AudioFrame) -> Iterator[av.AudioFrame]:
        """Stock fastrtc sets the resampler's frame size to the *input* frame's sample count, so at
        48 kHz → 16 kHz each output frame waits for 60 ms of audio; pass samples on as they come."""
        if self._resampler is None:
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=self.input_sample_rate)
        yield from self._resampler.resample(frame)

    async def receive(self, frame: tuple[int, np.ndarray]) -> None:
        sr, samples = frame
        mono = to_float_mono(samples)
        if sr != SAMPLE_RATE:
            mono = resample(mono, sr, SAMPLE_RATE)
        for event in self.turns.feed(mono):
            if isinstance(event, SpeechStarted):
                self._on_speech_started()
            elif isinstance(event, TurnEnded):
                self._on_turn_ended(event)
            elif isinstance(event, TurnDiscarded):
                logger.debug("session %s: %.0f ms of speech is not a turn", self.session_id, event.speech_ms)

    def _on_speech_started(self) -> None:
        self._log("started_talking")
        if self.state != "listening":
            self.interrupt()

    def interrupt(self) -> None:
        """Barge-in: stop the reply now and drop every queued sample, here and downstream."""
        if self._reply_task is not None:
            self._reply_task.cancel()
            self._reply_task = None
        dropped = self._out.qsize()
        while not self._out.empty():
            self._out.get_nowait()
        if self._clear_queue is not None:
            self._clear_queue()  # fastrtc's WebRTC track queue
        if self.on_interrupt is not None:
            self.on_interrupt()
        self._play_clock = None
        logger.info("session %s: barge-in, reply stopped (%d chunks dropped)", self.session_id, dropped)
        self._publish({"type": "interrupted"})
        self._set_state("listening")

    def _on_turn_ended(self, event: TurnEnded) -> None:
        self._log("pause_detected")
        self._turn_started = time.monotonic()
        self._first_audio_pending = True
        self.last_turn = {
            "speech_s": round(len(event.audio) / SAMPLE_RATE, 2),
            "forced": event.forced,
            "silence_ms": self.turn_settings.silence_ms,
        }
        self._set_state("thinking")
        responder = self.responders[self.params.mode]
        self._reply_task = asyncio.create_task(self._run_reply(responder, event))

    async def _run_reply(self, responder: Responder, turn: TurnEnded) -> None:
        try:
            async for audio in responder.reply(turn, self):
                for start in range(0, len(audio), CHUNK):
                    self._out.put_nowait(audio[start : start + CHUNK])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("session %s: reply failed", self.session_id)
            message = f"the reply failed ({type(exc).__name__}: {exc})"
            await self.send_message(json.dumps({"type": "error", "message": message}))
            self._publish({"type": "error", "message": message})
            self._set_state("listening")

    # ---- audio out ----
    async def emit(self) -> tuple[int, np.ndarray] | None:
        """Blocks (briefly, with a timeout so fastrtc can notice a closed session) until audio is due."""
        try:
            chunk = await asyncio.wait_for(self._out.get(), timeout=0.5)
        except (TimeoutError, asyncio.TimeoutError):
            if self.state != "listening" and (self._reply_task is None or self._reply_task.done()):
                self._set_state("listening")  # the reply has finished playing
                self._play_clock = None
            return None
        now = time.monotonic()
        if self._play_clock is None or self._play_clock < now:
            self._play_clock = now
        ahead = self._play_clock - now - PLAYBACK_LEAD_S
        if ahead > 0:
            await asyncio.sleep(ahead)
        self._play_clock += len(chunk) / OUTPUT_RATE
        if self._first_audio_pending:
            self._first_audio_pending = False
            self._set_state("speaking")
            self._log("response_starting")
            self.last_turn["pause_to_first_audio_ms"] = round((time.monotonic() - self._turn_started) * 1000)
            self._publish({"type": "turn", **self.last_turn})
        return OUTPUT_RATE, (np.clip(chunk, -1, 1) * 32767).astype(np.int16).reshape(1, -1)

    # ---- reporting ----
    def _set_state(self, state: Literal["listening", "thinking", "speaking"]) -> None:
        if state != self.state:
            self.state = state
            self._publish({"type": "state", "state": state})

    def _publish(self, report: dict[str, Any]) -> None:
        if self.reports is not None:
            self.reports.publish(report)

    def publish_text(self, kind: Literal["transcript", "reply"], text: str) -> None:
        self._publish({"type": kind, "text": text})

    def _log(self, what: str) -> None:
        if self.channel is not None:
            with contextlib.suppress(Exception):
                self.channel.send(create_message("log", what))

    # ---- lifecycle ----
    async def start_up(self) -> None:
        self._publish({"type": "state", "state": self.state})

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._reply_task is not None:
            self._reply_task.cancel()
        if self.reports is not None:
            self.reports.close()
        logger.info("session %s: chat closed", self.session_id)

    def shutdown(self) -> None:
        self.close()


def create_chat_stream(
    *,
    vad: SileroVAD,
    responders: Mapping[str, Responder],
    turn_settings: TurnSettings,
    default_mode: ChatMode,
    unavailable: Mapping[str, str],
    concurrency_limit: int,
    time_limit: float | None,
    server_rtc_configuration: RtcConfigSource,
) -> HardenedStream:
    """The `/chat` stream: a fastrtc audio `Stream` around a `ChatHandler`."""
    handler = ChatHandler(
        vad, responders, turn_settings=turn_settings, default_mode=default_mode, unavailable=unavailable
    )

    def bind(session_id: str, connection_handler: ChatHandler) -> ChatHandler:
        return connection_handler.bind(session_id, ReportChannel(asyncio.get_running_loop()))

    return HardenedStream(
        handler=handler,
        session_factory=bind,
        modality="audio",
        mode="send-receive",
        concurrency_limit=concurrency_limit,
        time_limit=time_limit,
        server_rtc_configuration=server_rtc_configuration,
    )
