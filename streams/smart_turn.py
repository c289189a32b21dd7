"""Semantic end of turn: Pipecat's Smart Turn v3.2 says whether a pause ends the speaker's turn.

A VAD only hears silence; "I would like to order a…" followed by a pause is not a finished turn.
Smart Turn (BSD-2-Clause, pipecat-ai/smart-turn; `models/README.md`) is a Whisper-tiny encoder with
a classifier on top, int8, reading the last 8 s of 16 kHz audio that ends at the pause. Offline.

The input must be exactly what Pipecat feeds it, or the probabilities drift. From Pipecat's
`LocalSmartTurnAnalyzerV3._predict_endpoint` (src/pipecat/audio/turn/smart_turn/local_smart_turn_v3.py)
and pipecat-ai/smart-turn `inference.py`, which calls `transformers.WhisperFeatureExtractor(chunk_length=8)`:

- float32 mono at 16 kHz, samples in [-1, 1] (Pipecat divides int16 by 32768);
- keep the last 8 s (128 000 samples); pad shorter audio with zeros at the START, so the end of
  speech always sits at the right edge of the window, where the model was trained to look;
- `do_normalize=True`: zero mean, unit variance over the whole padded 8 s window (leading zeros
  included, so short clips are scaled up more), `(x - mean) / sqrt(var + 1e-7)`, in float32;
- Whisper log-mel: 80 Slaney mel bands, 400-point periodic Hann window, hop 160, centred STFT with
  reflect padding, power spectrum, last frame dropped (801 → 800 frames), log10 floored at 1e-10,
  clamped to (max - 8), then `(x + 4) / 4`. faster-whisper's numpy `FeatureExtractor` computes the
  same, given `padding=0` (its default appends 160 zeros, which would add a frame and move the
  clamp). It works in float32/complex64 where transformers uses float64: on speech the features
  differ from Pipecat's own numpy copy of transformers' extractor (`_whisper_features.py`) by
  under 1e-5, and the probabilities agree to the printed digit;
- input `input_features` float32 [1, 80, 800]; output `logits` [1, 1] is already a sigmoid
  probability that the turn is complete (Pipecat calls it complete above 0.5).

Silence alone, or almost none, reads as complete (~0.99): ask only once speech has ended a turn.

Cost of one call on 8 s of audio, one thread, measured on the 2-core development box (median of
40): about 4 ms of features plus 80 ms of inference when the other core is idle; about 130 ms in
all while a test run keeps the other core busy. The first run after loading takes 100-250 ms,
hence `warmup()`.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from faster_whisper.feature_extractor import FeatureExtractor

SAMPLE_RATE = 16_000
WINDOW_S = 8
WINDOW = WINDOW_S * SAMPLE_RATE  # 128 000 samples
N_MELS = 80
N_FRAMES = 800
INPUT_NAME = "input_features"
OUTPUT_NAME = "logits"
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "smart-turn-v3.2-cpu.onnx"


def fit_window(audio: np.ndarray) -> np.ndarray:
    """The last 8 s, zero-padded at the start: Pipecat's `truncate_audio_to_last_n_seconds`."""
    samples = np.asarray(audio, dtype=np.float32).reshape(-1)
    if not np.isfinite(samples).all():  # one NaN would otherwise turn the whole window into NaN
        samples = np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)
    if len(samples) >= WINDOW:
        return samples[-WINDOW:]
    return np.concatenate([np.zeros(WINDOW - len(samples), np.float32), samples])


class SmartTurn:
    """One onnxruntime session, shared by every stream.

    Safe to call from several threads, and meant for one worker thread at a time: onnxruntime's CPU
    sessions may be shared, and the lock serialises whole calls so that concurrent turns queue
    (~85 ms each) instead of taking every core from the audio and video work on small machines.
    """

    def __init__(self, model_path: str | Path = DEFAULT_MODEL) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Smart Turn model not found: {path} (copy smart-turn-v3.2-cpu.onnx into models/, "
                "see models/README.md)"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
            raise RuntimeError(f"could not load the Smart Turn model {path}: {exc}") from exc
        self.model_path = path
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if [i.name for i in inputs] != [INPUT_NAME] or list(inputs[0].shape[1:]) != [N_MELS, N_FRAMES]:
            raise RuntimeError(
                f"{path.name} is not a Smart Turn v3 model: inputs "
                f"{[(i.name, i.shape) for i in inputs]}, expected {INPUT_NAME} [batch, {N_MELS}, {N_FRAMES}]"
            )
        if OUTPUT_NAME not in [o.name for o in outputs]:
            raise RuntimeError(f"{path.name} has no '{OUTPUT_NAME}' output: {[o.name for o in outputs]}")
        self.features = FeatureExtractor(
            feature_size=N_MELS, sampling_rate=SAMPLE_RATE, chunk_length=WINDOW_S
        )
        self._lock = threading.Lock()

    def input_features(self, audio: np.ndarray) -> np.ndarray:
        """float32 [1, 80, 800] log-mel features of the last 8 s, as Pipecat computes them."""
        x = fit_window(audio)
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)  # do_normalize=True, over the padded window
        mel = self.features(x, padding=0)  # padding=0: 128 000 samples → 801 frames, last one dropped
        return np.ascontiguousarray(mel[np.newaxis, :, :N_FRAMES], dtype=np.float32)

    def probability(self, audio: np.ndarray) -> float:
        """Probability that the turn is complete, for float32 mono 16 kHz audio that ends at the
        pause (any length: only the last 8 s count; empty audio reads as 8 s of silence)."""
        with self._lock:
            features = self.input_features(audio)
            (out,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: features})
        return float(np.clip(np.asarray(out).reshape(-1)[0], 0.0, 1.0))

    def complete(self, audio: np.ndarray, threshold: float = 0.5) -> bool:
        """Has the speaker finished? Pipecat's rule: complete above `threshold` (0.5)."""
        return self.probability(audio) > threshold

    def warmup(self) -> float:
        """One inference on zeros, so the first real turn does not pay for onnxruntime's first run;
        returns how long it took, in milliseconds."""
        t0 = time.perf_counter()
        self.probability(np.zeros(WINDOW, np.float32))
        return (time.perf_counter() - t0) * 1000


_shared: SmartTurn | None = None
_shared_lock = threading.Lock()


def default_smart_turn() -> SmartTurn:
    """The Smart Turn model every handler shares (one session, ~9 MB), loaded and warmed on first use."""
    global _shared
    with _shared_lock:
        if _shared is None:
            model = SmartTurn()
            model.warmup()
            _shared = model
        return _shared
