"""Turn-taking: streaming end-of-turn detection on Silero VAD in its native 32 ms windows.

Stock `ReplyOnPause` runs the VAD once per 0.6 s chunk, so it notices a pause 0.6–1.2 s late
(measured 0.98–1.18 s from end of speech to first reply). Here every 32 ms window is scored as it
arrives: speech starts after `start_ms` above the threshold (fast enough to stop a reply on
barge-in), and the turn ends after `silence_ms` below a lower threshold (hysteresis), so the delay
from end of speech to end of turn is the silence setting plus at most one window.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class SpeechStarted:
    at_s: float  # stream time of the first speech window


@dataclass
class TurnEnded:
    audio: np.ndarray  # float32 mono 16 kHz, pre-roll included, trailing silence trimmed
    speech_start: int  # sample index in `audio` where speech was first detected (after the pre-roll)
    speech_end_s: float  # stream time where speech stopped
    detected_s: float  # stream time when the pause was confirmed
    forced: bool = False  # cut at max_utterance_s


@dataclass
class TurnDiscarded:
    speech_ms: float


TurnEvent = SpeechStarted | TurnEnded | TurnDiscarded


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
        self.last_probability = 0.0

    @property
    def speaking(self) -> bool:
        return self._speaking

    def feed(self, samples: np.ndarray) -> list[TurnEvent]:
        events: list[TurnEvent] = []
        data = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        n = len(data) // WINDOW * WINDOW
        self._pending = data[n:]
        for i in range(0, n, WINDOW):
            event = self._window(data[i : i + WINDOW])
            if event is not None:
                events.append(event)
        return events

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
            self._silence_ms = 0.0
            self._speech_ms += WINDOW_MS
            self._last_speech_end = self._samples_seen
        else:
            self._silence_ms += WINDOW_MS
        forced = len(self._windows) * WINDOW >= s.max_utterance_s * SAMPLE_RATE
        if self._silence_ms >= s.silence_ms or forced:
            return self._end(now_s, forced)
        return None

    def _end(self, now_s: float, forced: bool) -> TurnEvent:
        s = self.settings
        trailing = int(max(0.0, self._silence_ms - TAIL_MS) / WINDOW_MS)  # soft word endings score low
        audio = np.concatenate(self._windows[: len(self._windows) - trailing] if trailing else self._windows)
        speech_ms = self._speech_ms
        self._speaking = False
        self._windows = []
        self._run_ms = self._silence_ms = self._speech_ms = 0.0
        if speech_ms < s.min_speech_ms and not forced:
            return TurnDiscarded(speech_ms)
        return TurnEnded(
            audio=audio,
            speech_start=self._onset,
            speech_end_s=self._last_speech_end / SAMPLE_RATE,
            detected_s=now_s,
            forced=forced,
        )
