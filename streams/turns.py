"""Turn-taking: streaming end-of-turn detection on Silero VAD in its native 32 ms windows.

Stock `ReplyOnPause` runs the VAD once per 0.6 s chunk, so it notices a pause 0.6–1.2 s late
(measured 0.98–1.18 s from end of speech to first reply). Here every 32 ms window is scored as it
arrives: speech starts after `start_ms` above the threshold (fast enough to stop a reply on
barge-in), and the turn ends after `silence_ms` below a lower threshold (hysteresis), so the delay
from end of speech to end of turn is the silence setting plus at most one window.

Silence alone cannot tell "I would like to order a, um… [pause] large pizza" from a finished
sentence. With `detector="smart"` (opt-in, see below) a pause of `smart_pause_ms` does not end the turn:
`feed` returns `PauseDetected` with the utterance so far, the caller asks Smart Turn
(`streams.smart_turn`, ~100 ms, so never inside `feed`) and, if it says the turn is complete, calls
`end_if_still_paused`. While undecided it is asked again every `smart_recheck_ms`, and the turn ends
anyway after `max_silence_ms`. `detector="vad"` ends every turn after `silence_ms`, as before.

Barge-in: speech over a reply is `SpeechStarted` after `start_ms` (96 ms), but a reply stops only
at `SpeechConfirmed`, after `interrupt_ms` of speech: Silero scores voiced bursts as speech too
(0.9+), and on 12 bursts of 150 ms cut from 6 words in Piper and espeak-ng voices it counted at most
6 windows (192 ms) of speech, against 7-8 for 200 ms ones. So a cough, a click or a short "mm" does not
stop the reply; "stop please" does, ~200 ms later than on onset alone (bench/turns.py: 341-346 ms
from its start to the last reply audio, against 131-151 ms before).

Why the model is first asked after 256 ms and not sooner: pauses at commas and between sentences
last 190-320 ms (Piper and espeak-ng), and the model calls many of the phrases before them
complete ("Hello." before "What time is it?"). An answer is stale once speech resumes, so a turn
ends at the earliest `smart_pause_ms` plus the model's latency (~100 ms on one core). Asking at
160 ms cut 16 of 40 synthetic sentences with commas in two; at 256 ms none, and a finished sentence
still ends ~350 ms after its last word (416 ms with `detector="vad"`). A much faster CPU answers
sooner, so cuts more: there, ask later (320 ms cut none even with 20 ms answers).

Why `vad` stays the default: in bench/turns.py (same run, WebRTC echo) the model judged 4 of 5 long
espeak-ng sentences and 1 of 5 Piper ones unfinished (p 0.01-0.19), so they waited for the
1600 ms ceiling: median end of speech -> reply 1481 ms, against 533 ms with `vad`; and it still
called 2 of 5 Piper hesitations finished. Synthetic voices are not people, but until the model is
shown to help on real speech, a slower default would be a regression nobody asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from streams.vad import SAMPLE_RATE, WINDOW, SileroVAD

WINDOW_MS = WINDOW * 1000 / SAMPLE_RATE
TAIL_MS = 256.0  # audio kept after the VAD's last speech window


@dataclass(frozen=True)
class TurnSettings:
    silence_ms: float = 400.0  # pause that ends a turn; ordinary word gaps are 100–250 ms
    min_speech_ms: float = 250.0  # shorter utterances (coughs, clicks) are not turns
    threshold: float = 0.5  # speech probability that counts as speech
    max_utterance_s: float = 30.0  # a turn is cut here even without a pause
    start_ms: float = 96.0  # speech this long starts a turn (and interrupts a reply)
    pre_roll_ms: float = 192.0  # audio kept from before the start, so first syllables are not lost
    detector: Literal["vad", "smart"] = "vad"  # smart: Smart Turn decides, silence alone is the ceiling
    smart_pause_ms: float = 256.0  # smart: silence after which the model is first asked (see above)
    smart_recheck_ms: float = 250.0  # smart: asked again every this much more silence while undecided
    max_silence_ms: float = 1600.0  # smart: the turn ends after this much silence whatever the model says
    smart_threshold: float = 0.5  # smart: the model's probability above which the turn is complete
    interrupt_ms: float = 224.0  # speech this long stops a reply (a 150 ms burst scores <= 192 ms)
    prepare_ms: float = 192.0  # vad: a pause this long lets the caller start speech-to-text early

    @property
    def end_silence_ms(self) -> float:
        """Silence that ends a turn without asking anyone: `silence_ms`, or the smart ceiling."""
        return self.max_silence_ms if self.detector == "smart" else self.silence_ms


@dataclass
class SpeechStarted:
    at_s: float  # stream time of the first speech window


@dataclass
class SpeechConfirmed:
    """The speech that started has lasted `interrupt_ms`: long enough to stop a reply."""

    at_s: float


@dataclass
class TurnEnded:
    audio: np.ndarray  # float32 mono 16 kHz, pre-roll included, trailing silence trimmed
    speech_start: int  # sample index in `audio` where speech was first detected (after the pre-roll)
    speech_end_s: float  # stream time where speech stopped
    detected_s: float  # stream time when the pause was confirmed
    forced: bool = False  # cut at max_utterance_s
    decision: str = "silence"  # "smart" (the model), "silence" (the pause alone) or "max_utterance"
    turn_probability: float | None = None  # the model's (last) answer; None: not asked
    pause_id: int | None = None  # the pause that ended the turn (`PauseDetected.pause_id`), if checked


@dataclass
class PauseDetected:
    """Speech paused. Smart mode: ask the model, then `TurnDetector.end_if_still_paused(check_id)`.
    Both modes (vad: once a pause, at `prepare_ms`): speech-to-text may start on `audio` now; if the
    turn then ends with `TurnEnded.pause_id == pause_id`, nothing was said since and it stands."""

    audio: np.ndarray  # the utterance so far, pre-roll and the pause included: what the model judges
    silence_ms: float  # how long the pause has lasted
    check_id: int  # stale once speech resumes or the turn ends
    pause_id: int = 0  # the same for every check of one pause (its first check's id): same speech
    at_s: float = 0.0  # stream time of the check


@dataclass
class TurnDiscarded:
    speech_ms: float


TurnEvent = SpeechStarted | SpeechConfirmed | TurnEnded | TurnDiscarded | PauseDetected


class TurnDetector:
    """Feed 16 kHz float32 samples in any chunk size; get turn events back."""

    def __init__(self, vad: SileroVAD, settings: TurnSettings | None = None) -> None:
        self.settings = settings or TurnSettings()
        self.vad_stream = vad.stream()
        self._pending = np.zeros(0, np.float32)
        self._windows: list[np.ndarray] = []  # the current turn (or the pre-roll while idle)
        self._speaking = False
        self._run_ms = 0.0  # consecutive speech while idle
        self._silence_ms = 0.0
        self._speech_ms = 0.0
        self._samples_seen = 0
        self._last_speech_end = 0
        self._onset = 0
        self._confirmed = False  # this turn's speech has lasted interrupt_ms
        self._next_check_ms = self._first_check_ms()
        self._checks_issued = 0
        self._checks_valid_from = 1  # ids below this are stale: speech resumed, or the turn ended
        self._turn_first_check = 1  # ids below this were about a turn that has ended
        self.last_probability = 0.0

    @property
    def speaking(self) -> bool:
        return self._speaking

    @property
    def checks_issued(self) -> int:
        """The id of the latest `PauseDetected` (0: none yet)."""
        return self._checks_issued

    def feed(self, samples: np.ndarray) -> list[TurnEvent]:
        events: list[TurnEvent] = []
        data = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        n = len(data) // WINDOW * WINDOW
        self._pending = data[n:]
        for i in range(0, n, WINDOW):
            event = self._window(data[i : i + WINDOW])
            if event is not None:
                events.append(event)
            if self._speaking and not self._confirmed and self._speech_ms >= self.settings.interrupt_ms:
                self._confirmed = True
                events.append(SpeechConfirmed(at_s=self._samples_seen / SAMPLE_RATE))
        return events

    def _first_check_ms(self) -> float:
        s = self.settings
        return s.smart_pause_ms if s.detector == "smart" else s.prepare_ms

    def _window(self, window: np.ndarray) -> TurnEvent | None:
        s = self.settings
        p = self.vad_stream.probability(window)
        self.last_probability = p
        self._samples_seen += WINDOW
        now_s = self._samples_seen / SAMPLE_RATE
        self._windows.append(window)
        if not self._speaking:
            self._run_ms = self._run_ms + WINDOW_MS if p >= s.threshold else 0.0
            if self._run_ms >= s.start_ms:
                self._speaking = True
                self._confirmed = False
                self._speech_ms = self._run_ms
                self._silence_ms = 0.0
                keep = int((s.pre_roll_ms + self._run_ms) / WINDOW_MS)
                self._windows = self._windows[-keep:]
                self._onset = max(0, len(self._windows) - int(self._run_ms / WINDOW_MS)) * WINDOW
                return SpeechStarted(at_s=now_s - self._run_ms / 1000)
            keep = int((s.pre_roll_ms + s.start_ms) / WINDOW_MS) + 1
            del self._windows[:-keep]
            return None
        if p >= s.threshold - 0.15:  # hysteresis: dips just under the threshold are still speech
            if self._silence_ms:
                self._cancel_checks()
            self._silence_ms = 0.0
            self._speech_ms += WINDOW_MS
            self._last_speech_end = self._samples_seen
        else:
            self._silence_ms += WINDOW_MS
        forced = len(self._windows) * WINDOW >= s.max_utterance_s * SAMPLE_RATE
        if self._silence_ms >= s.end_silence_ms or forced:
            return self._end(now_s, forced)
        if s.detector == "smart" and self._speech_ms < s.min_speech_ms and self._silence_ms >= s.silence_ms:
            return self._end(now_s, forced)  # a cough or a click: dropped as soon as in vad mode
        if self._silence_ms >= self._next_check_ms and self._speech_ms >= s.min_speech_ms:
            # smart: ask the model now and again every recheck; vad: once a pause, for early STT
            self._next_check_ms += s.smart_recheck_ms if s.detector == "smart" else float("inf")
            self._checks_issued += 1
            return PauseDetected(
                audio=np.concatenate(self._windows),
                silence_ms=self._silence_ms,
                check_id=self._checks_issued,
                pause_id=self._checks_valid_from,
                at_s=now_s,
            )
        return None

    def in_current_turn(self, check_id: int) -> bool:
        """Whether check `check_id` was about the turn still going on (its answer is worth keeping)."""
        return check_id >= self._turn_first_check

    def end_if_still_paused(
        self, check_id: int, probability: float | None = None
    ) -> TurnEnded | TurnDiscarded | None:
        """The model said check `check_id`'s pause ends the turn: end it now, unless speech resumed
        (or the turn ended) since, in which case the answer is stale and None is returned."""
        if self.settings.detector != "smart":
            return None  # vad mode's pause checks are for early speech-to-text: silence ends turns
        if not self._speaking or not self._checks_valid_from <= check_id <= self._checks_issued:
            return None
        event = self._end(self._samples_seen / SAMPLE_RATE, forced=False, decision="smart")
        if isinstance(event, TurnEnded):
            event.turn_probability = probability
        return event

    def _cancel_checks(self) -> None:
        self._checks_valid_from = self._checks_issued + 1
        self._next_check_ms = self._first_check_ms()

    def _end(self, now_s: float, forced: bool, decision: str = "silence") -> TurnEnded | TurnDiscarded:
        s = self.settings
        latest = self._checks_issued
        pause_id = self._checks_valid_from if self._checks_valid_from <= latest else None
        self._cancel_checks()
        self._turn_first_check = self._checks_issued + 1
        trailing = int(max(0.0, self._silence_ms - TAIL_MS) / WINDOW_MS)  # soft word endings score low
        audio = np.concatenate(self._windows[: len(self._windows) - trailing] if trailing else self._windows)
        speech_ms = self._speech_ms
        self._speaking = False
        self._windows = []
        self._run_ms = self._silence_ms = self._speech_ms = 0.0
        self._confirmed = False
        if speech_ms < s.min_speech_ms and not forced:
            return TurnDiscarded(speech_ms)
        return TurnEnded(
            audio=audio,
            speech_start=self._onset,
            speech_end_s=self._last_speech_end / SAMPLE_RATE,
            detected_s=now_s,
            forced=forced,
            decision="max_utterance" if forced else decision,
            pause_id=None if forced else pause_id,
        )
