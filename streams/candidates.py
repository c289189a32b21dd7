"""Trickled ICE candidates: parsed strictly, and held briefly when they arrive before their offer.

A browser posts each candidate as it finds it, in parallel with (and sometimes ahead of) the offer;
stock fastrtc drops those. Held ones are bounded per session and in all, and expire.
"""

from __future__ import annotations

import time
from typing import Any

from aiortc import RTCIceCandidate
from aiortc.sdp import candidate_from_sdp

from streams.runtime import OfferRejected

HOLD_S = 10.0  # an offer normally follows its first candidate within milliseconds
MAX_HELD_SESSIONS = 128
MAX_PER_SESSION = 32  # a browser finds a handful per network interface


def parse_candidate(candidate: dict[str, Any]) -> RTCIceCandidate | None:
    """`{"candidate", "sdpMid", "sdpMLineIndex"}` as aiortc's candidate; None for end-of-candidates."""
    text = candidate.get("candidate")
    if not isinstance(text, str) or len(text) > 1000 or "\n" in text or "\r" in text:
        raise OfferRejected("invalid_candidate_format")
    if not text.strip():
        return None
    try:
        parsed = candidate_from_sdp(text.removeprefix("candidate:").strip())
    except Exception as exc:
        raise OfferRejected("invalid_candidate_format") from exc
    mid, index = candidate.get("sdpMid"), candidate.get("sdpMLineIndex")
    parsed.sdpMid = mid if isinstance(mid, str) else None
    parsed.sdpMLineIndex = index if isinstance(index, int) else None
    if parsed.sdpMid is None and parsed.sdpMLineIndex is None:
        parsed.sdpMLineIndex = 0
    return parsed


class EarlyCandidates:
    """Candidates for sessions whose offer has not arrived yet, keyed by session id."""

    def __init__(self, hold_s: float = HOLD_S) -> None:
        self.hold_s = hold_s
        self._held: dict[str, tuple[float, list[RTCIceCandidate]]] = {}

    def hold(self, session_id: str, candidate: RTCIceCandidate) -> None:
        self._expire()
        first_seen, held = self._held.get(session_id, (time.monotonic(), []))
        if len(held) >= MAX_PER_SESSION:
            raise OfferRejected(
                "too_many_candidates", f"more than {MAX_PER_SESSION} candidates before the offer"
            )
        if session_id not in self._held and len(self._held) >= MAX_HELD_SESSIONS:
            del self._held[next(iter(self._held))]  # the oldest waiting session loses its candidates
        held.append(candidate)
        self._held[session_id] = (first_seen, held)

    def take(self, session_id: str) -> list[RTCIceCandidate]:
        self._expire()
        return self._held.pop(session_id, (0.0, []))[1]

    def __len__(self) -> int:
        return sum(len(held) for _, held in self._held.values())

    def _expire(self) -> None:
        cutoff = time.monotonic() - self.hold_s
        for session_id in [k for k, (t, _) in self._held.items() if t < cutoff]:
            del self._held[session_id]
