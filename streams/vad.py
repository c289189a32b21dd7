"""Silero voice activity detection from an installed package's ONNX file: no download, no torch.

Stock fastrtc's `ReplyOnPause` downloads its VAD from the Hugging Face hub and expects the old v4
graph. The v6 graph ships inside `faster-whisper` (`faster_whisper/assets/silero_vad_v6.onnx`);
it takes 512 new samples at 16 kHz plus 64 samples of context per call and carries an LSTM state.
"""

from __future__ import annotations

import importlib.util
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from scipy.signal import resample_poly  # imported up front: the first import costs ~0.7 s

SAMPLE_RATE = 16_000
WINDOW = 512  # 32 ms
CONTEXT = 64
SILENT = 1e-4  # a window whose samples all stay below this (int16: |x| <= 3) is digital silence


def find_silero_model() -> Path:
    """The ONNX file inside an installed package, found without importing the package (silero-vad's
    own `__init__` imports torch)."""
    candidates = [("faster_whisper", "assets/silero_vad_v6.onnx"), ("silero_vad", "data/silero_vad.onnx")]
    for package, relative in candidates:
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            for folder in spec.submodule_search_locations:
                path = Path(folder) / relative
                if path.is_file():
                    return path
    raise FileNotFoundError("no Silero VAD model found: install faster-whisper (it ships silero_vad_v6.onnx)")


class SileroVAD:
    """One shared onnxruntime session; per-stream state lives in `VadStream`."""

    def __init__(self, model_path: Path | None = None) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.model_path = model_path or find_silero_model()
        self.session = ort.InferenceSession(
            str(self.model_path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        names = {i.name for i in self.session.get_inputs()}
        self.lstm_state = {"h", "c"} <= names  # faster-whisper's v6 export: input, h, c
        if not self.lstm_state and not {"input", "state", "sr"} <= names:
            raise ValueError(f"unrecognised Silero VAD inputs: {sorted(names)}")

    def stream(self) -> VadStream:
        return VadStream(self)

    # fastrtc's PauseDetectionModel protocol, so this can also drive stock `ReplyOnPause(model=...)`.
    def vad(self, audio: tuple[int, np.ndarray], options: Any = None) -> tuple[float, list[dict[str, int]]]:
        """Seconds of speech in a clip, and the speech chunks (sample offsets at 16 kHz)."""
        sr, samples = audio
        mono = to_float_mono(samples)
        if sr != SAMPLE_RATE:
            mono = resample(mono, sr, SAMPLE_RATE)
        threshold = getattr(options, "threshold", 0.5) if options is not None else 0.5
        stream = self.stream()
        chunks: list[dict[str, int]] = []
        start = None
        for i in range(0, len(mono) - WINDOW + 1, WINDOW):
            speaking = stream.probability(mono[i : i + WINDOW]) >= threshold
            if speaking and start is None:
                start = i
            elif not speaking and start is not None:
                chunks.append({"start": start, "end": i})
                start = None
        if start is not None:
            chunks.append({"start": start, "end": len(mono)})
        return sum(c["end"] - c["start"] for c in chunks) / SAMPLE_RATE, chunks

    def warmup(self) -> None:
        stream = self.stream()
        quiet = np.linspace(-0.01, 0.01, WINDOW, dtype=np.float32)  # zeros would skip the model
        for _ in range(4):
            stream.probability(quiet)


class VadStream:
    """Streaming state for one audio stream: call `probability` on consecutive 512-sample windows."""

    def __init__(self, vad: SileroVAD) -> None:
        self.vad = vad
        self.context = np.zeros((1, CONTEXT), np.float32)
        if vad.lstm_state:
            self.state = {"h": np.zeros((1, 1, 128), np.float32), "c": np.zeros((1, 1, 128), np.float32)}
        else:
            self.state = {"state": np.zeros((2, 1, 128), np.float32)}

    def probability(self, window: np.ndarray) -> float:
        """Speech probability of the next window. Digital silence (DTX gaps filled with zeros, a
        muted WebSocket or phone client) is 0.0 without running the model: an idle session costs
        no inference. The context still moves on; the LSTM state is kept as it was."""
        x = np.concatenate([self.context, window.reshape(1, WINDOW).astype(np.float32)], axis=1)
        self.context = x[:, -CONTEXT:]
        if float(np.abs(x[:, CONTEXT:]).max()) < SILENT:
            return 0.0
        if self.vad.lstm_state:
            prob, h, c = self.vad.session.run(None, {"input": x, **self.state})
            self.state = {"h": h, "c": c}
        else:
            prob, state = self.vad.session.run(
                None, {"input": x, "state": self.state["state"], "sr": np.array(SAMPLE_RATE, np.int64)}
            )
            self.state = {"state": state}
        return float(np.asarray(prob).reshape(-1)[0])


def to_float_mono(samples: np.ndarray) -> np.ndarray:
    """int16 or float, shaped (n,), (1, n) or (channels, n) → float32 mono in [-1, 1]."""
    arr = np.asarray(samples)
    scale = 1 / 32768.0 if arr.dtype == np.int16 else 1.0
    arr = arr.astype(np.float32) * scale
    if arr.ndim == 2:
        arr = arr.mean(axis=0) if arr.shape[0] <= 8 else arr.mean(axis=1)
    return arr


def resample(samples: np.ndarray, src: int, dst: int) -> np.ndarray:
    if src == dst:
        return samples
    g = gcd(src, dst)
    return resample_poly(samples, dst // g, src // g).astype(np.float32)
