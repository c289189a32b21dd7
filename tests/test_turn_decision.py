"""Semantic end of turn: Smart Turn judges each pause, silence alone is only the ceiling.

Speech comes from Piper (the joe voice, sampling noise off, so every run hears the same clip) and
espeak-ng, as in tests/test_smart_turn.py. `TurnDetector` is pure, so most tests drive it the way
`TurnTakingHandler` does: audio in 20 ms chunks, the model asked on `PauseDetected`, its answer
landing `MODEL_LATENCY_S` of stream time later (the one-thread figure on the development box), at
most one check in flight. The handler tests at the end run the real handler, in real time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import pytest

from server.app import _build_chat
from server.config import Settings
from server.ice import IceConfig
from streams import ReplyOnPause, SileroVadOptions
from streams.chat import ChatHandler
from streams.handlers import default_vad, smart_turn_executor
from streams.smart_turn import SmartTurn, default_smart_turn
from streams.turns import (
    PauseDetected,
    SpeechStarted,
    TurnDetector,
    TurnDiscarded,
    TurnEnded,
    TurnEvent,
    TurnSettings,
)
from streams.vad import SAMPLE_RATE
from tests import audio_client

CHUNK = SAMPLE_RATE // 50  # 20 ms, as WebRTC delivers it
MODEL_LATENCY_S = 0.085
HESITANT = ("I would like to order a, um,", 0.7, "large pizza with mushrooms.")
FINISHED = [
    "I would like to order a large pizza with mushrooms.",
    "What is the capital of France?",
    "My name is John Smith.",
]
VOICES = audio_client.VOICES


@cache
def say(text: str, voice: str = "piper") -> np.ndarray:
    """float32 mono speech at 16 kHz, silence trimmed off both ends (cached: tests reuse clips)."""
    return audio_client.say(text, voice, rate=SAMPLE_RATE)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), np.float32)


def utterance(
    *parts: str | float, voice: str = "piper", lead_s: float = 0.5, tail_s: float = 2.0
) -> np.ndarray:
    """Speech for each string and silence for each number, between a lead-in and a tail of silence."""
    pieces = [silence(p) if isinstance(p, float | int) else say(p, voice) for p in parts]
    return np.concatenate([silence(lead_s), *pieces, silence(tail_s)])


@dataclass
class Run:
    turns: list[TurnEnded] = field(default_factory=list)
    discarded: list[TurnDiscarded] = field(default_factory=list)
    checks: list[tuple[float, float]] = field(default_factory=list)  # (silence_ms, probability)


def stream_through(
    audio: np.ndarray, settings: TurnSettings, model: SmartTurn, latency_s: float = MODEL_LATENCY_S
) -> Run:
    """What `TurnTakingHandler` does with a detector, in stream time: one check in flight at most."""
    detector = TurnDetector(default_vad(), settings)
    run = Run()
    pending: tuple[float, int, float] | None = None  # (due at, check id, probability)

    def handle(event: TurnEvent | None) -> None:
        if isinstance(event, TurnEnded):
            run.turns.append(event)
        elif isinstance(event, TurnDiscarded):
            run.discarded.append(event)

    for start in range(0, len(audio), CHUNK):
        now_s = (start + CHUNK) / SAMPLE_RATE
        if pending is not None and now_s >= pending[0]:
            _, check_id, p = pending
            pending = None
            if p > settings.smart_threshold:
                handle(detector.end_if_still_paused(check_id, probability=p))
        for event in detector.feed(audio[start : start + CHUNK]):
            if isinstance(event, PauseDetected):
                if pending is None and settings.detector == "smart":
                    p = model.probability(event.audio)
                    run.checks.append((event.silence_ms, p))
                    pending = (event.at_s + latency_s, event.check_id, p)
            else:
                handle(event)
    return run


@pytest.fixture(scope="module")
def model() -> SmartTurn:
    return default_smart_turn()


SMART = TurnSettings(detector="smart")
VAD = TurnSettings(detector="vad")


# ---- the detector ----


@pytest.mark.parametrize("voice", VOICES)
def test_a_mid_sentence_hesitation_is_one_turn_in_smart_mode_and_a_false_end_in_vad_mode(model, voice):
    audio = utterance(*HESITANT, voice=voice)
    smart = stream_through(audio, SMART, model)
    vad = stream_through(audio, VAD, model)
    print(f"\n{voice}: checks (silence ms, p) {[(s, round(p, 3)) for s, p in smart.checks]}")
    assert len(smart.turns) == 1, [(t.decision, t.speech_end_s) for t in smart.turns]
    (turn,) = smart.turns
    assert turn.decision == "smart" and turn.turn_probability is not None and turn.turn_probability > 0.5
    assert len(turn.audio) / SAMPLE_RATE > len(say(HESITANT[0], voice)) / SAMPLE_RATE + 0.7, "both halves"
    assert [t.decision for t in vad.turns] == ["silence", "silence"], "VAD alone ends the turn at 'um,'"
    assert not vad.checks


@pytest.mark.parametrize("voice", VOICES)
@pytest.mark.parametrize("text", FINISHED)
def test_a_finished_sentence_ends_on_the_models_word_long_before_the_silence_ceiling(model, text, voice):
    smart = stream_through(utterance(text, voice=voice), SMART, model)
    vad = stream_through(utterance(text, voice=voice), VAD, model)
    (turn,) = smart.turns
    (vad_turn,) = vad.turns
    smart_ms = (turn.detected_s - turn.speech_end_s) * 1000
    vad_ms = (vad_turn.detected_s - vad_turn.speech_end_s) * 1000
    print(f"\n{voice} {text!r}: end of speech -> turn ended: smart {smart_ms:.0f} ms, vad {vad_ms:.0f} ms")
    assert turn.decision == "smart" and turn.turn_probability > 0.5
    assert smart_ms < 600
    assert turn.forced is False and vad_turn.decision == "silence"


def test_speech_resuming_makes_a_pending_decision_stale(model):
    detector = TurnDetector(default_vad(), SMART)
    events = detector.feed(utterance(HESITANT[0], tail_s=SMART.smart_pause_ms / 1000 + 0.05))
    *_, pause = [e for e in events if isinstance(e, PauseDetected)]  # the one after "um,"
    assert pause.silence_ms == pytest.approx(SMART.smart_pause_ms, abs=32)
    assert len(pause.audio) >= len(say(HESITANT[0])) + SMART.pre_roll_ms * SAMPLE_RATE / 1000
    detector.feed(say(HESITANT[2]))  # the speaker goes on while the model is being asked
    assert detector.end_if_still_paused(pause.check_id, probability=0.9) is None
    assert detector.speaking, "the turn goes on"
    later = detector.feed(silence(2.0))
    (turn,) = [e for e in later if isinstance(e, TurnEnded)]
    assert detector.end_if_still_paused(pause.check_id) is None, "and stays stale after the turn ended"
    assert len(turn.audio) > len(say(HESITANT[0])) + len(say(HESITANT[2])), "one turn, both halves"


def test_a_pause_that_is_still_going_on_ends_the_turn_when_the_model_says_so():
    detector = TurnDetector(default_vad(), SMART)
    audio = utterance("My name is John Smith.", tail_s=SMART.smart_pause_ms / 1000 + 0.1)
    pauses = [e for e in detector.feed(audio) if isinstance(e, PauseDetected)]
    assert pauses and detector.speaking, "a pause alone ends nothing in smart mode"
    turn = detector.end_if_still_paused(pauses[0].check_id, probability=0.97)  # a late answer, still valid
    assert isinstance(turn, TurnEnded) and turn.decision == "smart" and turn.turn_probability == 0.97
    assert turn.detected_s == pytest.approx(len(audio) // 512 * 512 / SAMPLE_RATE), (
        "ended now, in stream time"
    )
    assert not detector.speaking and detector.end_if_still_paused(pauses[0].check_id) is None


def test_the_ceiling_ends_a_turn_the_model_keeps_calling_unfinished(model):
    run = stream_through(utterance("So the thing is, um,", tail_s=2.5), SMART, model)
    (turn,) = run.turns
    pause_ms = (turn.detected_s - turn.speech_end_s) * 1000
    print(f"\nunfinished: checks {[(s, round(p, 3)) for s, p in run.checks]}; ended after {pause_ms:.0f} ms")
    assert turn.decision == "silence" and turn.turn_probability is None
    assert pause_ms == pytest.approx(SMART.max_silence_ms, abs=32)
    assert len(run.checks) == 1 + int((SMART.max_silence_ms - SMART.smart_pause_ms) // SMART.smart_recheck_ms)
    assert all(p < 0.5 for _, p in run.checks)


def test_vad_mode_ends_every_turn_after_silence_ms_and_never_asks():
    detector = TurnDetector(default_vad(), VAD)
    events = [e for chunk in np.array_split(utterance(*HESITANT), 200) for e in detector.feed(chunk)]
    turns = [e for e in events if isinstance(e, SpeechStarted | TurnEnded)]
    assert [type(e) for e in turns] == [SpeechStarted, TurnEnded, SpeechStarted, TurnEnded]
    pauses = [e for e in events if isinstance(e, PauseDetected)]
    assert {p.silence_ms for p in pauses} == {VAD.prepare_ms}, "one early-STT check a pause, no more"
    assert all(detector.end_if_still_paused(p.check_id, 0.99) is None for p in pauses), "never asks"
    for turn in turns[1::2]:
        last_pause = max(p.pause_id for p in pauses if p.at_s <= turn.detected_s)
        assert turn.pause_id == last_pause, "nothing was said after the check: its transcript stands"
        assert turn.decision == "silence" and turn.turn_probability is None
        assert turn.detected_s - turn.speech_end_s == pytest.approx(0.416, abs=0.001)  # 13 windows ≥ 400 ms


def test_a_cough_is_dropped_after_silence_ms_without_asking_the_model():
    blip = say("Hello there, how are you?")[: int(0.2 * SAMPLE_RATE)]
    detector = TurnDetector(default_vad(), SMART)
    events = detector.feed(np.concatenate([silence(0.5), blip, silence(1.0)]))
    assert [type(e) for e in events] == [SpeechStarted, TurnDiscarded]
    assert not detector.speaking


def test_settings_default_to_vad_with_the_documented_smart_pauses():
    s = TurnSettings()
    assert (s.detector, s.smart_pause_ms, s.smart_recheck_ms, s.max_silence_ms, s.smart_threshold) == (
        "vad", 256.0, 250.0, 1600.0, 0.5,
    )  # fmt: skip
    assert s.end_silence_ms == 400.0 and SMART.end_silence_ms == 1600.0


# ---- the handler ----


class Recorder:
    """A responder that keeps the turns it is given and says nothing."""

    def __init__(self) -> None:
        self.turns: list[TurnEnded] = []

    async def reply(self, turn: TurnEnded, session: ChatHandler) -> AsyncIterator[np.ndarray]:
        self.turns.append(turn)
        return
        yield


def chat_handler(
    settings: TurnSettings = SMART, smart_turn: SmartTurn | None = None
) -> tuple[ChatHandler, Recorder]:
    recorder = Recorder()
    handler = ChatHandler(default_vad(), {"echo": recorder}, turn_settings=settings)
    if smart_turn is not None:
        handler.smart_turn = smart_turn
    return handler, recorder


async def speak(handler: ChatHandler, audio: np.ndarray, realtime: bool = True) -> float:
    """Feed 20 ms frames of int16 at 16 kHz, paced in real time; returns when the last one went in."""
    start = time.monotonic()
    for n, i in enumerate(range(0, len(audio), CHUNK)):
        frame = (audio[i : i + CHUNK] * 32767).astype(np.int16).reshape(1, -1)
        await handler.receive((SAMPLE_RATE, frame))
        wait = start + (n + 1) * CHUNK / SAMPLE_RATE - time.monotonic() if realtime else 0
        await asyncio.sleep(max(0.0, wait))
    return time.monotonic()


@pytest.mark.serial
async def test_the_handler_ends_a_finished_sentence_on_the_models_word_in_real_time():
    handler, recorder = chat_handler()
    await speak(handler, utterance(FINISHED[0], tail_s=1.0))
    (turn,) = recorder.turns
    report = handler.last_turn
    print(f"\nhandler, real time: {report}")
    assert report["decision"] == "smart" and report["turn_probability"] > 0.5
    assert 0 < report["model_ms"] < 500 and report["pause_ms"] < 600
    assert report["silence_ms"] == SMART.max_silence_ms
    assert turn.decision == "smart"
    handler.shutdown()


async def test_the_handler_asks_in_one_shared_thread_and_never_queues_a_second_check():
    threads: list[str] = []
    in_flight = threading.Semaphore(1)
    release = threading.Event()

    class Held(SmartTurn):
        def __init__(self) -> None:  # no model: says "unfinished" once the test lets it
            pass

        def probability(self, audio: np.ndarray) -> float:
            assert in_flight.acquire(blocking=False), "two checks at once"
            threads.append(threading.current_thread().name)
            release.wait(5)
            in_flight.release()
            return 0.1

    handler, recorder = chat_handler(smart_turn=Held())
    two_checks_s = (SMART.smart_pause_ms + SMART.smart_recheck_ms) / 1000 + 0.05
    await speak(handler, utterance("So the thing is, um,", tail_s=two_checks_s), realtime=False)
    assert handler.turns.checks_issued == 2 and await wait_for(lambda: len(threads) == 1)
    await asyncio.sleep(0.2)
    assert len(threads) == 1, "the pause found while a check runs is skipped, not queued"
    release.set()
    await asyncio.wait_for(handler._check_task, 2)
    await speak(handler, silence(1.3), realtime=False)  # on to the ceiling
    await asyncio.sleep(0.1)
    assert set(threads) == {"smart-turn_0"} and smart_turn_executor()._max_workers == 1
    assert smart_turn_executor() is smart_turn_executor()
    (turn,) = recorder.turns
    assert turn.decision == "silence" and handler.last_turn["turn_probability"] == 0.1
    assert handler.last_turn["model_ms"] is not None
    handler.shutdown()


async def wait_for(predicate, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return predicate()


async def test_a_closing_session_leaves_no_check_behind():
    started = threading.Event()

    class Stuck(SmartTurn):
        def __init__(self) -> None:
            pass

        def probability(self, audio: np.ndarray) -> float:
            started.set()
            time.sleep(0.3)
            return 0.99

    handler, recorder = chat_handler(smart_turn=Stuck())
    await speak(handler, utterance(FINISHED[2], tail_s=SMART.smart_pause_ms / 1000 + 0.1), realtime=False)
    assert await asyncio.to_thread(started.wait, 2)
    task = handler._check_task
    handler.shutdown()
    await asyncio.sleep(0.5)
    assert task is not None and task.cancelled()
    assert not recorder.turns and handler.state == "listening"


async def test_a_failing_model_is_reported_once_and_the_ceiling_still_ends_the_turn(caplog):
    class Broken(SmartTurn):
        def __init__(self) -> None:
            pass

        def probability(self, audio: np.ndarray) -> float:
            raise RuntimeError("onnxruntime fell over")

    handler, recorder = chat_handler(smart_turn=Broken())
    with caplog.at_level(logging.ERROR, logger="streams.handlers"):
        for _ in range(2):  # a check fails at every pause; the log says so once
            await speak(handler, utterance("So the thing is, um,", tail_s=0.8), realtime=False)
            await asyncio.sleep(0.05)
        await speak(handler, silence(1.0), realtime=False)
    assert [t.decision for t in recorder.turns] == ["silence"]
    assert len([r for r in caplog.records if "end-of-turn model failed" in r.getMessage()]) == 1
    handler.shutdown()


def test_vad_mode_needs_no_model():
    handler, _ = chat_handler(VAD)
    assert handler.smart_turn is None


# ---- user handlers and settings ----


def test_reply_on_pause_can_be_smart_and_keeps_fastrtcs_options():
    def echo(audio: tuple[int, np.ndarray]):
        yield audio

    assert ReplyOnPause(echo).turn_settings.detector == "vad", "the default, as fastrtc's"
    handler = ReplyOnPause(
        echo,
        model_options=SileroVadOptions(threshold=0.6, min_speech_duration_ms=300),
        turn_settings=TurnSettings(detector="smart"),
    )
    assert handler.turn_settings.detector == "smart" and handler.smart_turn is default_smart_turn()
    assert (handler.turn_settings.threshold, handler.turn_settings.min_speech_ms) == (0.6, 300.0)
    copy = handler.copy()
    assert copy.turn_settings == handler.turn_settings and copy.smart_turn is handler.smart_turn
    plain = ReplyOnPause(echo, turn_settings=TurnSettings(detector="vad", silence_ms=600))
    assert plain.copy().turn_settings.detector == "vad" and plain.copy().smart_turn is None


@pytest.mark.parametrize("detector", ["smart", "vad"])
def test_chat_settings_choose_the_detector_and_its_pauses(detector: str):
    settings = Settings(
        assistant_enabled=False,
        chat_turn_detector=detector,
        chat_smart_pause_ms=224,
        chat_max_silence_ms=1200,
    )
    chat, _ = _build_chat(settings, IceConfig(settings))
    turn_settings = chat.handler.turn_settings
    assert (turn_settings.detector, turn_settings.smart_pause_ms, turn_settings.max_silence_ms) == (
        detector, 224, 1200,
    )  # fmt: skip
    assert turn_settings.silence_ms == 400


def test_the_turn_detector_setting_rejects_anything_else():
    with pytest.raises(ValueError, match="chat_turn_detector"):
        Settings(chat_turn_detector="magic")
