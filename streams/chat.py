"""Voice chat: the user talks, and when they pause the server replies with audio.

`ChatHandler` is a `TurnTakingHandler` (the base of this project's `ReplyOnPause`), served like
any user's audio handler on WebRTC, WebSocket and phone:

- end of turn from `streams.turns.TurnDetector` (32 ms VAD windows, not 0.6 s chunks);
- `emit()` waits on a queue: an idle session costs nothing (stock spins ~9,000 calls/s);
- barge-in: speech that lasts (`interrupt_ms`) cancels a reply and drops the queued audio at once;
  the assistant's history keeps the reply as far as it was heard;
- replies are paced to real time, so little is ever queued downstream of us;
- `CHAT_GREETING`: spoken on connect, synthesized once and reused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Literal, Protocol

import numpy as np

from streams.assistant import MAX_HISTORY
from streams.handlers import Spoken, TurnTakingHandler
from streams.stream import RtcConfigSource, Stream
from streams.turns import PauseDetected, TurnEnded, TurnSettings
from streams.vad import SAMPLE_RATE, SileroVAD, resample

logger = logging.getLogger(__name__)

OUTPUT_RATE = 24_000
ECHO_LEAD_IN = SAMPLE_RATE // 16  # 62 ms before detected speech: keeps soft onsets

ChatMode = Literal["echo", "assistant"]


class Responder(Protocol):
    """Turns one user turn into reply audio (float32 mono at 24 kHz, or `Spoken` with its words),
    chunk by chunk. It may also have `prepare(pause, session)`: early work on a pause."""

    def reply(self, turn: TurnEnded, session: ChatHandler) -> AsyncIterator[np.ndarray | Spoken]: ...


class Greeting:
    """`CHAT_GREETING`: the same words for every session, so synthesized once (on first use, in a
    thread) by whichever text-to-speech `voice()` returns, and reused."""

    def __init__(self, text: str, voice: Callable[[], Callable[[str], np.ndarray]]) -> None:
        self.text = text
        self._voice = voice
        self._audio: np.ndarray | None = None
        self._lock = asyncio.Lock()

    async def audio(self) -> np.ndarray:
        async with self._lock:
            if self._audio is None:
                synthesize = await asyncio.to_thread(self._voice)
                self._audio = await asyncio.to_thread(synthesize, self.text)
            return self._audio

    async def speak(self) -> AsyncIterator[Spoken]:
        yield Spoken(self.text, await self.audio())


class EchoResponder:
    """Replies with what the user said, from the first detected speech (the pre-roll is for STT)."""

    async def reply(self, turn: TurnEnded, session: ChatHandler) -> AsyncIterator[np.ndarray]:
        start = max(0, turn.speech_start - ECHO_LEAD_IN)
        yield resample(turn.audio[start:], SAMPLE_RATE, OUTPUT_RATE)


class ChatHandler(TurnTakingHandler):
    """The `/chat` handler: turn-taking from `TurnTakingHandler`, replies from a `Responder` chosen
    by the session's `mode` input."""

    def __init__(
        self,
        vad: SileroVAD,
        responders: Mapping[str, Responder],
        *,
        turn_settings: TurnSettings | None = None,
        default_mode: ChatMode = "echo",
        unavailable: Mapping[str, str] | None = None,
        greeting: Greeting | None = None,
    ) -> None:
        super().__init__(vad=vad, turn_settings=turn_settings, output_sample_rate=OUTPUT_RATE)
        self.responders = responders
        self.unavailable = dict(unavailable or {})
        self.default_mode: ChatMode = default_mode
        self.greeting = greeting
        self.history: list[dict[str, str]] = []  # the assistant's conversation, this session only
        self.early_transcript: Any = None  # the assistant's speech to text started on a pause

    def copy(self) -> ChatHandler:
        return ChatHandler(
            self.vad,
            self.responders,
            turn_settings=self.turn_settings,
            default_mode=self.default_mode,
            unavailable=self.unavailable,
            greeting=self.greeting,
        )

    async def start_up(self) -> None:
        await super().start_up()
        if self.greeting is not None:
            self.publish_text("reply", self.greeting.text)
            self._start_reply(self.greeting.speak(), answers_turn=False)

    def prepare(self, pause: PauseDetected) -> None:
        prepare = getattr(self.responders.get(self.mode), "prepare", None)
        if callable(prepare):
            prepare(pause, self)

    def reply_done(self, heard: str, interrupted: bool) -> None:
        """The assistant remembers what the user heard of each reply: an interrupted one ends
        where they cut in (marked with "…"), so the model does not think it said the rest."""
        if heard:
            self.history.append({"role": "assistant", "content": heard + (" …" if interrupted else "")})
            del self.history[:-MAX_HISTORY]

    @property
    def mode(self) -> str:
        args = self.latest_args
        return str(args[1]) if len(args) > 1 and args[0] == "__webrtc_value__" else self.default_mode

    def check_inputs(self, values: dict[str, Any]) -> None:
        """A mode is refused while it cannot answer (disabled, or its models failed to load)."""
        mode = values.get("mode", self.default_mode)
        reason = self.unavailable.get(mode) or getattr(self.responders.get(mode), "unavailable_reason", None)
        if mode not in self.responders or reason:
            raise ValueError(f"mode {mode!r} is unavailable: {reason or 'not configured'}")

    def respond(self, turn: TurnEnded) -> AsyncIterator[np.ndarray]:
        return self.responders[self.mode].reply(turn, self)

    def publish_text(self, kind: Literal["transcript", "reply"], text: str) -> None:
        self.publish({"type": kind, "text": text})


def create_chat_stream(
    *,
    vad: SileroVAD,
    responders: Mapping[str, Responder],
    turn_settings: TurnSettings,
    default_mode: ChatMode,
    unavailable: Mapping[str, str],
    greeting: Greeting | None = None,
    concurrency_limit: int,
    time_limit: float | None,
    server_rtc_configuration: RtcConfigSource,
) -> Stream:
    """The `/chat` stream: an audio `Stream` around a `ChatHandler` (WebRTC, WebSocket and phone)."""
    import gradio as gr

    handler = ChatHandler(
        vad,
        responders,
        turn_settings=turn_settings,
        default_mode=default_mode,
        unavailable=unavailable,
        greeting=greeting,
    )
    return Stream(
        handler,
        modality="audio",
        mode="send-receive",
        additional_inputs=[
            gr.Dropdown(
                choices=list(dict.fromkeys([*responders, *unavailable])), value=default_mode, label="mode"
            )
        ],
        concurrency_limit=concurrency_limit,
        time_limit=time_limit,
        server_rtc_configuration=server_rtc_configuration,
        name="chat",
    )
