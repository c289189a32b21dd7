"""Audio framing for WebSocket and telephone clients: base64 G.711 μ-law at a given rate."""

from __future__ import annotations

import base64
import binascii
import warnings

import numpy as np

with warnings.catch_warnings():  # stdlib up to 3.12 (deprecated there), the audioop-lts package from 3.13
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

from streams.vad import resample

MAX_PAYLOAD_BYTES = 64_000  # 8 s of 8 kHz μ-law in one message is already abuse


class BadMedia(ValueError):
    """A media payload that cannot be audio."""


def decode_mulaw(payload_b64: str) -> np.ndarray:
    """base64 μ-law → float32 samples in [-1, 1]."""
    if not isinstance(payload_b64, str):
        raise BadMedia("media.payload must be a base64 string")
    if len(payload_b64) > MAX_PAYLOAD_BYTES * 4 // 3 + 4:
        raise BadMedia(f"media payload over {MAX_PAYLOAD_BYTES} bytes")
    try:
        raw = base64.b64decode(payload_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadMedia(f"media.payload is not valid base64 ({exc})") from exc
    pcm = np.frombuffer(audioop.ulaw2lin(raw, 2), dtype=np.int16)
    return pcm.astype(np.float32) / 32768.0


def encode_mulaw(samples: np.ndarray, rate: int, target_rate: int) -> str:
    """int16 or float samples at `rate` → base64 μ-law at `target_rate`."""
    audio = samples.astype(np.float32).reshape(-1)
    if samples.dtype == np.int16:
        audio = audio / 32768.0
    audio = resample(audio, rate, target_rate)
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    return base64.b64encode(audioop.lin2ulaw(pcm.tobytes(), 2)).decode("ascii")
