"""Remote ICE candidates: parsed strictly, checked against the peer-address policy, and held
briefly when they arrive before their offer.

A browser posts each candidate as it finds it, in parallel with (and sometimes ahead of) the offer;
stock fastrtc drops those. Held ones are bounded per session and in all, and expire.

The server sends STUN connectivity checks to every address a client lists, so a client could make
it probe addresses the client itself cannot reach: link-local (cloud metadata), multicast,
reserved ranges, or the server's own loopback. `PeerPolicy` drops such candidates, in the offer's
SDP and when trickled.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Sequence
from typing import Any

from aiortc import RTCIceCandidate
from aiortc.sdp import candidate_from_sdp

from streams.runtime import OfferRejected

HOLD_S = 10.0  # an offer normally follows its first candidate within milliseconds
MAX_HELD_SESSIONS = 128
MAX_PER_SESSION = 32  # a browser finds a handful per network interface


# Never a real peer of this server: "this network", link-local (169.254.169.254 is cloud metadata),
# multicast, reserved, broadcast, and their IPv6 kin. Private LAN and CGNAT (Tailscale) ranges are
# real peers. Loopback is allowed only to clients that are themselves on loopback.
DEFAULT_DENIED_PEERS = (
    "0.0.0.0/8,169.254.0.0/16,224.0.0.0/4,240.0.0.0/4,::/128,fe80::/10,ff00::/8,::ffff:0:0/96,64:ff9b::/96"
)
_CANDIDATE_LINE = re.compile(r"^a=candidate:\S+ \d+ \S+ \d+ (?P<address>\S+) ", re.IGNORECASE)


class PeerPolicy:
    """Which remote candidate addresses this server sends connectivity checks to."""

    def __init__(self, denied: Sequence[str] | str = DEFAULT_DENIED_PEERS) -> None:
        parts = denied.split(",") if isinstance(denied, str) else denied
        self.denied = [ipaddress.ip_network(part.strip(), strict=False) for part in parts if part.strip()]

    def allows(self, address: str, client: str | None) -> bool:
        """`client` is the HTTP client's address; names (mDNS `.local`) are resolved later by aioice."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return True
        if any(ip.version == net.version and ip in net for net in self.denied):
            return False
        return _is_loopback(client) if ip.is_loopback else True

    def strip_sdp(self, sdp: str, client: str | None) -> tuple[str, int]:
        """The SDP without `a=candidate` lines this policy denies, and how many there were."""
        kept, dropped = [], 0
        for line in sdp.splitlines(keepends=True):
            match = _CANDIDATE_LINE.match(line)
            if match and not self.allows(match["address"], client):
                dropped += 1
            else:
                kept.append(line)
        return "".join(kept), dropped


def _is_loopback(client: str | None) -> bool:
    try:
        return client is not None and ipaddress.ip_address(client).is_loopback
    except ValueError:
        return False


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
