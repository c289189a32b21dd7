"""Handler shapes under fastrtc's names, hardened: `VideoStreamHandler`, `ReplyOnPause`.

`ReplyOnPause` keeps fastrtc's constructor, but ends turns with `streams.turns.TurnDetector`
(Silero v6 in 32 ms windows, shipped with faster-whisper, no download), waits on a queue instead
of spinning when idle, runs a synchronous `fn` in the session's worker thread, paces the reply to
real time, and stops it at once when the user talks over it (`can_interrupt=True`).
`TurnTakingHandler` is the shared base: the built-in `/chat` is another subclass of it. With
`TurnSettings(detector="smart")` a pause ends the turn only when Smart Turn says the speaker has
finished, or after `max_silence_ms` of silence whatever it says.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from streams import fastrtc_adapter as adapter
from streams import incidents
from streams.media import outputs_report
from streams.turns import (
    PauseDetected,
    SpeechConfirmed,
    SpeechStarted,
    TurnDetector,
    TurnDiscarded,
    TurnEnded,
    TurnSettings,
)
from streams.vad import SAMPLE_RATE, SileroVAD, resample, to_float_mono

if TYPE_CHECKING:
    from streams.session import Session
    from streams.smart_turn import SmartTurn

logger = logging.getLogger(__name__)

PLAYBACK_LEAD_S = 0.08  # how far ahead of real time replies are handed downstream
AUDIO_GAP_S = 0.6  # no audio this long during a turn counts as silence (longer than DTX's 400 ms)


@dataclass
class Spoken:
    """Reply audio with the words it says: a reply cut short is remembered as far as it was heard."""

    text: str
    audio: np.ndarray  # float32 mono at the handler's output rate


def heard_text(segments: list[tuple[str, int, int]], played: int) -> str:
    """The words of `segments` (text, first sample, end sample) the listener heard by sample
    `played`; within a segment, words in proportion to its samples played."""
    words: list[str] = []
    for text, start, end in segments:
        if played >= end:
            words += text.split()
            continue
        if played > start:
            part = text.split()
            words += part[: int(len(part) * (played - start) / (end - start))]
        break
    return " ".join(words)


@dataclass
class Reply:
    """One reply in progress: its task, what it has said, and where its audio started playing."""

    task: asyncio.Task[None]
    answers_turn: bool = True  # False: a greeting (reported without turn timings)
    segments: list[tuple[str, int, int]] = field(default_factory=list)
    queued: int = 0  # output samples handed to the queue so far
    started_at_s: float | None = None  # the session's output clock when its first sample went out


@dataclass
class VideoStreamHandler:
    """fastrtc's `VideoStreamHandler(callable, fps, skip_frames)`, plus two knobs of ours.

    - send-receive: `skip_frames=True` processes only the newest frame (lowest latency);
      `False` processes every frame through a queue of `queue_size`, dropping (and counting) the
      oldest when the handler falls further behind.
    - receive: `callable` is a generator; frames are sent at `fps`, changeable live as the input `fps`.
    - `frame_format="av"` hands the handler `av.VideoFrame`s instead of BGR arrays (no conversion).
    """

    callable: Callable[..., Any]
    fps: float | None = 30
    skip_frames: bool = False
    queue_size: int = 4
    frame_format: Literal["bgr24", "av"] = "bgr24"


_shared_vad: SileroVAD | None = None


def default_vad() -> SileroVAD:
    """The Silero VAD every turn-taking handler shares (one onnxruntime session, per-stream state)."""
    global _shared_vad
    if _shared_vad is None:
        _shared_vad = SileroVAD()
        _shared_vad.warmup()
    return _shared_vad


_smart_turn_executor: ThreadPoolExecutor | None = None


def smart_turn_executor() -> ThreadPoolExecutor:
    """The one thread every session's Smart Turn checks run in: off the event loop, out of the
    default pool (aiortc encodes there), and one at a time (~85 ms each) however many sessions pause."""
    global _smart_turn_executor
    if _smart_turn_executor is None:
        _smart_turn_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="smart-turn")
    return _smart_turn_executor


State = Literal["listening", "thinking", "speaking"]


class TurnTakingHandler(adapter.AsyncStreamHandler):
    """Listens in 32 ms windows, ends a turn on a pause, answers with `respond(turn)`, stops the
    answer when the user talks over it for `interrupt_ms`. Subclasses implement `respond` and
    `copy`, and may override `prepare` (early work on a pause) and `reply_done` (what was heard)."""

    def __init__(
        self,
        *,
        vad: SileroVAD | None = None,
        turn_settings: TurnSettings | None = None,
        can_interrupt: bool = True,
        output_sample_rate: int = 24_000,
        expected_layout: Literal["mono", "stereo"] = "mono",
        smart_turn: SmartTurn | None = None,
    ) -> None:
        super().__init__(
            expected_layout=expected_layout,
            output_sample_rate=output_sample_rate,
            input_sample_rate=SAMPLE_RATE,
        )
        self.vad = vad or default_vad()
        self.turn_settings = turn_settings or TurnSettings()
        self.can_interrupt = can_interrupt
        self.session: Session | None = None
        self.session_id = "unbound"
        self.state: State = "listening"
        self.turns = TurnDetector(self.vad, self.turn_settings)
        self.smart_turn: SmartTurn | None = None
        if self.turn_settings.detector == "smart":
            from streams.smart_turn import default_smart_turn  # only then: it imports faster-whisper

            self.smart_turn = smart_turn or default_smart_turn()
        self._check_task: asyncio.Task[None] | None = None
        self._answer: tuple[float, float] | None = None  # this turn's latest (probability, model ms)
        self._model_failed = False
        self.closed = False
        self.chunk = output_sample_rate // 50  # 20 ms
        self._out: asyncio.Queue[np.ndarray] = asyncio.Queue(maxsize=500)  # 10 s ahead at most
        self._reply: Reply | None = None
        self._play_clock: float | None = None
        self._emitted_s = 0.0  # seconds of audio this session has emitted (the output clock)
        self._audio_at = time.monotonic()  # when audio last came in
        self._gap_task: asyncio.Task[None] | None = None
        self._turn_started = 0.0
        self._first_audio_pending = False
        self.last_turn: dict[str, Any] = {}

    def bind_session(self, session: Session) -> None:
        """Called by the runtime on the per-session copy before media flows."""
        self.session, self.session_id = session, session.id

    # ---- subclass API ----
    def respond(self, turn: TurnEnded) -> AsyncIterator[np.ndarray | Spoken | adapter.AdditionalOutputs]:
        """The reply to one turn: float32 mono chunks at `output_sample_rate` (as `Spoken` when the
        words are known), or outputs."""
        raise NotImplementedError

    def prepare(self, pause: PauseDetected) -> None:
        """A pause began: work that may start before the turn is known to have ended (speech to
        text). It stands if the turn ends with `pause_id == pause.pause_id`."""

    def reply_done(self, heard: str, interrupted: bool) -> None:
        """A reply has ended: `heard` is what the listener heard of its `Spoken` words (all of them
        unless `interrupted`)."""

    def note_stage(self, stage: str, ms: float) -> None:
        """A responder's timing for this turn (`stt_ms`, `first_sentence_ms`, `tts_ms`), reported
        with the turn's other timings at its first audio."""
        self.last_turn[stage] = round(ms)

    # ---- audio in ----
    async def receive(self, frame: tuple[int, np.ndarray]) -> None:
        sr, samples = frame
        self._audio_at = time.monotonic()
        mono = to_float_mono(samples)
        if sr != SAMPLE_RATE:
            mono = resample(mono, sr, SAMPLE_RATE)
        self._feed(mono)

    def _feed(self, mono: np.ndarray) -> None:
        for event in self.turns.feed(mono):
            if isinstance(event, SpeechStarted):
                self._log("started_talking")
            elif isinstance(event, SpeechConfirmed):
                self._on_speech_confirmed()
            elif isinstance(event, PauseDetected):
                self._on_pause(event)
            elif isinstance(event, TurnEnded):
                self._on_turn_ended(event)
            elif isinstance(event, TurnDiscarded):
                self._on_turn_discarded(event)

    async def _fill_gaps(self) -> None:
        """A client that stops sending mid-turn (a WebSocket client done talking, a muted
        browser) must not leave the turn open: after `AUDIO_GAP_S` without audio, the time that
        passed is fed as silence, so pauses and the smart ceiling run on the wall clock."""
        while not self.closed:
            await asyncio.sleep(AUDIO_GAP_S / 3)
            gap = time.monotonic() - self._audio_at
            if gap >= AUDIO_GAP_S and self.turns.speaking:
                self._audio_at += gap
                self._feed(np.zeros(int(gap * SAMPLE_RATE), np.float32))

    def _on_pause(self, pause: PauseDetected) -> None:
        if self.closed:
            return
        self.prepare(pause)
        if self.smart_turn is None:
            return
        if self._check_task is not None and not self._check_task.done():
            return  # one check per session at a time: a later one, or the ceiling, decides
        self._check_task = asyncio.create_task(self._check_pause(pause))

    async def _check_pause(self, pause: PauseDetected) -> None:
        """Ask Smart Turn in its own thread; end the turn if it says complete and nobody spoke since."""
        assert self.smart_turn is not None
        started = time.perf_counter()
        try:
            p = await asyncio.get_running_loop().run_in_executor(
                smart_turn_executor(), self.smart_turn.probability, pause.audio
            )
        except Exception as exc:  # the silence ceiling still ends the turn
            if not self._model_failed:  # once a session: it would fail at every pause
                self._model_failed = True
                incidents.report(logger, self.session_id, "the end-of-turn model failed", exc)
            return
        model_ms = (time.perf_counter() - started) * 1000
        if self.closed or not self.turns.in_current_turn(pause.check_id):
            return  # asked about a turn that has ended since
        self._answer = (p, model_ms)
        logger.debug(
            "session %s: after %.0f ms of silence the turn is %.2f complete (%.0f ms)",
            self.session_id, pause.silence_ms, p, model_ms,
        )  # fmt: skip
        if p <= self.turn_settings.smart_threshold:
            return
        event = self.turns.end_if_still_paused(pause.check_id, probability=p)
        if isinstance(event, TurnEnded):
            self._on_turn_ended(event)
        elif isinstance(event, TurnDiscarded):
            self._on_turn_discarded(event)

    def _on_turn_discarded(self, event: TurnDiscarded) -> None:
        self._turn_over()
        logger.debug("session %s: %.0f ms of speech is not a turn", self.session_id, event.speech_ms)

    def _turn_over(self) -> tuple[float, float] | None:
        """Forget the model's answers about the turn that just ended; returns the latest one."""
        answer, self._answer = self._answer, None
        return answer

    def _on_speech_confirmed(self) -> None:
        reply = self._reply
        if reply is None or not self.can_interrupt:
            return
        if reply.task.done() and self._out.empty() and self._played_samples(reply) >= reply.queued:
            self._end_reply(interrupted=False)  # it had just finished playing: nothing to stop
            self._set_state("listening")
            return
        self.interrupt()

    def interrupt(self) -> None:
        """Barge-in: stop the reply now and drop every queued sample, here and downstream."""
        dropped = self._out.qsize()
        self._end_reply(interrupted=True)
        while not self._out.empty():
            self._out.get_nowait()
        clear = self.clear_queue  # the transport's queue (WebRTC track, Twilio "clear"); set per session
        if clear is not None:
            clear()
        self._play_clock = None
        logger.info("session %s: barge-in, reply stopped (%d chunks dropped)", self.session_id, dropped)
        self.publish({"type": "interrupted"})
        self._set_state("listening")

    def _end_reply(self, interrupted: bool) -> None:
        """Every way a reply ends goes through here once: its task stops and `reply_done` hears
        how much of it was played."""
        reply, self._reply = self._reply, None
        if reply is None:
            return
        reply.task.cancel()
        played = reply.queued if not interrupted else self._played_samples(reply)
        self.reply_done(heard_text(reply.segments, played), interrupted and played < reply.queued)

    def _played_samples(self, reply: Reply) -> int:
        """How much of `reply` the listener has heard: on a phone, what Twilio's marks confirmed;
        elsewhere what was emitted, less what is still on its way."""
        if reply.started_at_s is None:
            return 0
        media = getattr(self.session, "media", None)
        confirmed = getattr(media, "played_s", None)
        if self.session is not None and self.session.transport == "phone" and confirmed is not None:
            played_s = confirmed - reply.started_at_s
        else:
            played_s = self._emitted_s - reply.started_at_s - 2 * PLAYBACK_LEAD_S
        return max(0, min(reply.queued, int(played_s * self.output_sample_rate)))

    def _on_turn_ended(self, event: TurnEnded) -> None:
        answer = self._turn_over()
        if event.turn_probability is None and answer is not None:
            event.turn_probability = answer[0]  # ended by silence: what the model last said
        if self._reply is not None:
            if not self.can_interrupt:
                logger.info("session %s: turn ignored while replying (can_interrupt=False)", self.session_id)
                return
            self.interrupt()
        self._log("pause_detected")
        self.last_turn = {
            "speech_s": round(len(event.audio) / SAMPLE_RATE, 2),
            "forced": event.forced,
            "silence_ms": self.turn_settings.end_silence_ms,
            "decision": event.decision,
            "pause_ms": round((event.detected_s - event.speech_end_s) * 1000),
            "turn_probability": None if event.turn_probability is None else round(event.turn_probability, 3),
            "model_ms": None if answer is None else round(answer[1]),
        }
        self._start_reply(self.respond(event))

    def _start_reply(self, items: AsyncIterator[Any], answers_turn: bool = True) -> None:
        self._turn_started = time.monotonic()
        self._first_audio_pending = True
        if not answers_turn:
            self.last_turn = {}
        self._set_state("thinking")
        task = asyncio.create_task(self._run_reply(items))
        self._reply = Reply(task, answers_turn)

    async def _run_reply(self, items: AsyncIterator[Any]) -> None:
        reply = self._reply  # set by `_start_reply` before this task first runs
        try:
            async for item in items:
                if isinstance(item, adapter.AdditionalOutputs):
                    self.publish(outputs_report(item))
                    continue
                if isinstance(item, adapter.CloseStream):
                    if self.session is not None:
                        self.session.end_soon("closed_by_handler")
                    return
                if isinstance(item, Spoken):
                    if reply is not None:
                        reply.segments.append((item.text, reply.queued, reply.queued + len(item.audio)))
                    item = item.audio
                for start in range(0, len(item), self.chunk):
                    chunk = item[start : start + self.chunk]
                    await self._out.put(chunk)
                    if reply is not None:
                        reply.queued += len(chunk)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            message = incidents.report(logger, self.session_id, "the reply failed", exc)
            await self.send_message(json.dumps({"type": "error", "message": message}))
            self.publish({"type": "error", "message": message})
            if reply is not None and reply.queued == 0:
                self._end_reply(interrupted=False)
                self._set_state("listening")

    # ---- audio out ----
    async def emit(self) -> tuple[int, np.ndarray] | None:
        """Waits (briefly, so a closed session is noticed) until audio is due; never spins."""
        try:
            chunk = await asyncio.wait_for(self._out.get(), timeout=0.5)
        except (TimeoutError, asyncio.TimeoutError):
            reply = self._reply
            if (
                (reply is None or reply.task.done())
                and self.state != "listening"
                and not self._client_still_playing()
            ):
                self._end_reply(interrupted=False)  # it has finished playing
                self._set_state("listening")
                self._play_clock = None
            return None
        now = time.monotonic()
        if self._play_clock is None or self._play_clock < now:
            self._play_clock = now
        ahead = self._play_clock - now - PLAYBACK_LEAD_S
        if ahead > 0:
            await asyncio.sleep(ahead)
        if self._play_clock is None:  # interrupted while waiting: this chunk was already dropped
            return None
        self._play_clock += len(chunk) / self.output_sample_rate
        if self._first_audio_pending:
            self._first_audio_pending = False
            reply = self._reply
            if reply is not None:
                reply.started_at_s = self._emitted_s
            self._set_state("speaking")
            self._log("response_starting")
            if reply is None or reply.answers_turn:
                self._report_turn()
        self._emitted_s += len(chunk) / self.output_sample_rate
        return self.output_sample_rate, (np.clip(chunk, -1, 1) * 32767).astype(np.int16).reshape(1, -1)

    def _report_turn(self) -> None:
        """The turn's timings, at its first reply audio: `turn` output, and metrics through it."""
        turn = self.last_turn
        turn["pause_to_first_audio_ms"] = round((time.monotonic() - self._turn_started) * 1000)
        if "pause_ms" in turn:
            turn["speech_end_to_first_audio_ms"] = turn["pause_ms"] + turn["pause_to_first_audio_ms"]
        self.publish({"type": "turn", **turn})

    def _client_still_playing(self) -> bool:
        """A phone plays what it was sent after we sent it: the reply lasts until its mark returns
        (so talking over its tail still interrupts it)."""
        media = getattr(self.session, "media", None)
        playing = getattr(media, "playing_on_client", None)
        return bool(playing()) if callable(playing) else False

    # ---- reporting ----
    def _set_state(self, state: State) -> None:
        if state != self.state:
            self.state = state
            self.publish({"type": "state", "state": state})

    def publish(self, report: dict[str, Any]) -> None:
        if self.session is not None:
            self.session.publish(report)

    def _log(self, what: str) -> None:
        channel = self.channel
        if channel is not None:
            try:
                channel.send(adapter.message("log", what))
            except Exception as exc:
                logger.debug("session %s: log not sent: %s", self.session_id, exc)

    # ---- lifecycle ----
    async def start_up(self) -> None:
        self.publish({"type": "state", "state": self.state})
        self._gap_task = asyncio.create_task(self._fill_gaps())

    def shutdown(self) -> None:
        if self.closed:
            return
        self.closed = True
        reply, self._reply = self._reply, None
        for task in (reply.task if reply else None, self._check_task, self._gap_task):
            if task is not None:
                task.cancel()
        logger.info("session %s: voice handler closed", self.session_id)


def _turn_settings_from(model_options: Any, algo_options: Any, base: TurnSettings | None) -> TurnSettings:
    """fastrtc's `SileroVadOptions`/`AlgoOptions` mapped onto 32 ms-window turn-taking."""
    settings = base or TurnSettings()
    changes: dict[str, Any] = {}
    if model_options is not None:
        threshold = getattr(model_options, "threshold", None)
        if isinstance(threshold, float | int) and 0 < threshold < 1:
            changes["threshold"] = float(threshold)
        min_speech = getattr(model_options, "min_speech_duration_ms", None)
        if isinstance(min_speech, int | float) and min_speech > 0:
            changes["min_speech_ms"] = float(min_speech)
    if algo_options is not None:
        longest = getattr(algo_options, "max_continuous_speech_s", None)
        if isinstance(longest, int | float) and 0 < longest < float("inf"):
            changes["max_utterance_s"] = float(longest)
    if not changes:
        return settings
    values = {f.name: getattr(settings, f.name) for f in fields(settings)} | changes
    return TurnSettings(**values)


class ReplyOnPause(TurnTakingHandler):
    """fastrtc's `ReplyOnPause(fn, ...)`: `fn((rate, int16 audio), *inputs)` is called when the user
    pauses and yields `(rate, audio)` chunks (or `AdditionalOutputs`, or `CloseStream`).

    The turn's audio is 16 kHz mono, shape (1, N). `startup_fn(*inputs)` runs on connect and may
    yield a greeting the same way. `model` (fastrtc's pause model) is accepted and not used: pauses
    are found by Silero v6 in 32 ms windows and end the turn after `silence_ms`; with
    `TurnSettings(detector="smart")` Smart Turn judges each pause instead (a pause after "I would
    like, um," does not end the turn); `turn_settings` sets the pauses and thresholds.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        startup_fn: Callable[..., Any] | None = None,
        algo_options: Any = None,
        model_options: Any = None,
        can_interrupt: bool = True,
        expected_layout: Literal["mono", "stereo"] = "mono",
        output_sample_rate: int = 24_000,
        output_frame_size: int | None = None,
        input_sample_rate: int = 48_000,
        model: Any = None,
        needs_args: bool = False,
        *,
        turn_settings: TurnSettings | None = None,
        vad: SileroVAD | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError("ReplyOnPause needs a function: fn((rate, audio), *inputs) -> chunks")
        super().__init__(
            vad=vad,
            turn_settings=_turn_settings_from(model_options, algo_options, turn_settings),
            can_interrupt=can_interrupt,
            output_sample_rate=output_sample_rate,
            expected_layout=expected_layout,
        )
        self.fn = fn
        self.startup_fn = startup_fn
        self.algo_options = algo_options
        self.model_options = model_options
        self._ctor = dict(startup_fn=startup_fn, algo_options=algo_options, model_options=model_options,
                          can_interrupt=can_interrupt, expected_layout=expected_layout,
                          output_sample_rate=output_sample_rate, turn_settings=turn_settings, vad=self.vad)  # fmt: skip

    def copy(self) -> ReplyOnPause:
        return ReplyOnPause(self.fn, **self._ctor)

    @property
    def inputs(self) -> list[Any]:
        """The stream's current input values, in the function's parameter order."""
        args = list(self.latest_args)
        return args[1:] if args and args[0] == "__webrtc_value__" else args

    async def start_up(self) -> None:
        await super().start_up()
        if self.startup_fn is not None:
            self._start_reply(self.respond(None), answers_turn=False)

    async def respond(self, turn: TurnEnded | None) -> AsyncIterator[Any]:  # type: ignore[override]
        if turn is None:
            assert self.startup_fn is not None
            result = self.startup_fn(*self.inputs)
        else:
            audio = (np.clip(turn.audio, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
            result = self.fn((SAMPLE_RATE, audio), *self.inputs)
        async for item in self._iterate(result):
            out, extra = adapter.split_output(item)
            if extra is not None:
                yield extra
            if out is None:
                continue
            rate, samples = out[0], np.asarray(out[1])
            mono = to_float_mono(
                samples.reshape(-1) if samples.ndim > 1 and min(samples.shape) == 1 else samples
            )
            if rate != self.output_sample_rate:
                mono = resample(mono, int(rate), self.output_sample_rate)
            yield mono

    async def _iterate(self, result: Any) -> AsyncIterator[Any]:
        """A sync generator runs in the session's worker thread, an async one on the loop."""
        if inspect.isawaitable(result):
            result = await result
        if result is None:
            return
        if hasattr(result, "__aiter__"):
            async for item in result:
                yield item
            return
        if isinstance(result, tuple):  # a plain return value, not a generator
            yield result
            return
        iterator = iter(result)
        done = object()
        worker = self.session.worker if self.session is not None else None
        try:
            while True:
                if worker is not None:
                    item = await worker.run(next, iterator, done)
                else:
                    item = await asyncio.to_thread(next, iterator, done)
                if item is done:
                    return
                yield item
        finally:
            close = getattr(iterator, "close", None)
            if callable(close) and worker is not None and not worker.closed:
                asyncio.ensure_future(worker.run(close))
