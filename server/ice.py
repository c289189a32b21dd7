"""ICE: what host addresses aiortc gathers, and the RTCConfiguration handed to browsers."""

from __future__ import annotations

import logging
from collections.abc import Callable

import aioice.ice

logger = logging.getLogger(__name__)

_original_get_host_addresses: Callable[[bool, bool], list[str]] = aioice.ice.get_host_addresses


def pin_host_addresses(addresses: list[str]) -> None:
    """Make aiortc gather only these host addresses (empty list: restore its own discovery).

    aioice never offers 127.0.0.1, so on a loopback-only machine (tests) a peer gathers nothing;
    pinning `127.0.0.1` fixes that. Also useful to keep a multi-homed server to one interface.
    """
    if not addresses:
        aioice.ice.get_host_addresses = _original_get_host_addresses
        return
    pinned = list(addresses)

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in pinned if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = get_host_addresses
    logger.info("ICE host addresses pinned to %s", ", ".join(pinned))


def set_dead_peer_timeout(seconds: float) -> None:
    """How long a silent peer keeps its session: aioice checks consent (RFC 7675) every
    `CONSENT_INTERVAL` s and gives up after `CONSENT_FAILURES` misses (default 6 x 5 s = 30 s)."""
    aioice.ice.CONSENT_INTERVAL = seconds / aioice.ice.CONSENT_FAILURES
