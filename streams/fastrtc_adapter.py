"""Every place this project touches fastrtc, aiortc or aioice internals, in one module.

The rest of the code uses only public names. Each entry below reaches past a public API, so the
versions it was written against are checked at import: a mismatch fails loudly here instead of
misbehaving in a session.

fastrtc internals touched (fastrtc 0.0.34):
- `StreamHandlerBase._loop`, `._clear_queue`, `._channel` (via `set_channel`), `.phone_mode`:
  set on each per-session handler copy, as fastrtc's own tracks do.
- `fastrtc.utils.current_context` (a ContextVar of `Context(webrtc_id, websocket)`): set in each
  session's worker thread and event-loop tasks so `get_current_context()` works in user handlers.
- `fastrtc.utils.split_output`: separates a handler's frame from its `AdditionalOutputs`/`CloseStream`.
- `fastrtc.utils.create_message`: the data-channel message format fastrtc's clients expect.
aiortc internals touched (aiortc 1.10-1.16):
- `RTCRtpReceiver.__jitter_buffer` (name-mangled): replaced by low-latency buffers.
aioice internals touched (aioice 0.9-0.13):
- `aioice.ice.get_host_addresses`: pinned to configured addresses (loopback for tests).
- `aioice.ice.CONSENT_INTERVAL`: how soon a silent peer is declared dead.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import aioice.ice

from streams.offline import apply_offline_defaults

apply_offline_defaults()  # before gradio (imported by fastrtc) starts its telemetry threads

import fastrtc
import fastrtc.utils
from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer
from fastrtc import (
    AdditionalOutputs,
    AlgoOptions,
    AsyncAudioVideoStreamHandler,
    AsyncStreamHandler,
    AudioVideoStreamHandler,
    CloseStream,
    SileroVadOptions,
    StreamHandler,
    VideoStreamHandler,
    get_current_context,
)
from fastrtc.tracks import StreamHandlerBase

logger = logging.getLogger(__name__)

SUPPORTED = {"fastrtc": ("0.0.34",), "aiortc": ("1.10", "1.11", "1.12", "1.13", "1.14", "1.15", "1.16"),
             "aioice": ("0.9", "0.10", "0.11", "0.12", "0.13")}  # fmt: skip


def _check_versions() -> None:
    for package, accepted in SUPPORTED.items():
        installed = version(package)
        if not any(installed == v or installed.startswith(v + ".") for v in accepted):
            raise ImportError(
                f"{package} {installed} is installed, but streams.fastrtc_adapter patches {package} internals "
                f"verified only on {', '.join(accepted)}; pin a supported version (pyproject.toml)"
            )
    for owner, attr in ((StreamHandlerBase, "resample"), (fastrtc.utils, "current_context"),
                        (fastrtc.utils, "split_output"), (fastrtc.utils, "create_message"),
                        (aioice.ice, "get_host_addresses"), (aioice.ice, "CONSENT_INTERVAL")):  # fmt: skip
        if not hasattr(owner, attr):
            raise ImportError(
                f"{getattr(owner, '__name__', owner)}.{attr} is gone: streams.fastrtc_adapter needs it"
            )


_check_versions()

__all__ = [
    "AdditionalOutputs",
    "AlgoOptions",
    "AsyncAudioVideoStreamHandler",
    "AsyncStreamHandler",
    "AudioVideoStreamHandler",
    "CloseStream",
    "SileroVadOptions",
    "StreamHandler",
    "StreamHandlerBase",
    "VideoStreamHandler",
    "get_current_context",
]


# ---- handlers ----
def prepare_handler(
    handler: StreamHandlerBase,
    *,
    loop: asyncio.AbstractEventLoop,
    channel: Any,
    clear_queue: Callable[[], None],
    phone_mode: bool,
) -> None:
    """Give a per-session handler copy what fastrtc's tracks give it before media flows."""
    handler._loop = loop
    handler._clear_queue = clear_queue
    handler.phone_mode = phone_mode
    handler.set_channel(channel)


def split_output(output: Any) -> tuple[Any, AdditionalOutputs | CloseStream | None]:
    """A handler's return value as (media, AdditionalOutputs | CloseStream | None)."""
    return fastrtc.utils.split_output(output)


def message(kind: str, data: Any) -> str:
    """A data-channel message in fastrtc's format (`{"type": kind, "data": ...}`)."""
    return fastrtc.utils.create_message(kind, data)


def enter_session_context(session_id: str, websocket: Any = None) -> contextvars.Token[Any]:
    """Make `fastrtc.get_current_context()` name this session in the current thread or task."""
    return fastrtc.utils.current_context.set(fastrtc.utils.Context(webrtc_id=session_id, websocket=websocket))


# ---- aiortc: receivers ----
_JITTER_ATTR = "_RTCRtpReceiver__jitter_buffer"


def use_low_latency_jitter_buffers(pc: RTCPeerConnection) -> int:
    """Swap the jitter buffer of every receiver of `pc` (call before media flows). Returns how many."""
    from streams.jitter import InOrderAudioJitterBuffer, MarkerJitterBuffer

    swapped = 0
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        old = getattr(receiver, _JITTER_ATTR, None)
        if type(old) is not JitterBuffer:
            continue
        if transceiver.kind == "video":
            setattr(receiver, _JITTER_ATTR, MarkerJitterBuffer(capacity=old.capacity, is_video=True))
        else:
            setattr(receiver, _JITTER_ATTR, InOrderAudioJitterBuffer(capacity=old.capacity))
        swapped += 1
    if not swapped and pc.getTransceivers():
        logger.warning("aiortc's receiver layout changed: low-latency jitter buffers not installed")
    return swapped


# ---- aioice: host addresses and consent ----
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
