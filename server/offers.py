"""The WebRTC offer route: validate before fastrtc sees anything, answer refusals with real status codes."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from aiortc.sdp import SessionDescription
from fastapi import Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import HTTPConnection

from server.bitrate import apply_bitrate_bounds
from server.errors import Refusal
from streams.runtime import OfferRejected
from streams.stream import Stream

logger = logging.getLogger(__name__)

MAX_SDP_CHARS = 100_000
MAX_MEDIA_SECTIONS = 4  # audio, video, data: hundreds of sections only cost the server memory and time
SESSION_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"


class OfferBody(BaseModel):
    """fastrtc's offer body, checked: a known type, a sane id, a bounded SDP."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["offer", "ice-candidate"]
    webrtc_id: str = Field(pattern=SESSION_ID_PATTERN)
    sdp: str | None = Field(None, max_length=MAX_SDP_CHARS)
    candidate: dict[str, Any] | None = None


def client_key(conn: HTTPConnection) -> str:
    """The caller's address: the key of per-client limits (a proxy's client with FORWARDED_ALLOW_IPS)."""
    return conn.client.host if conn.client else "unknown"


def check_offer_sdp(sdp: str | None, modality: str, mode: str, receive_only_ok: bool = False) -> str | None:
    """A reason to refuse this SDP, or None. aiortc would raise (stock: HTTP 500) on most of these.
    `receive_only_ok`: a send-receive stream with server-side sources also takes a recvonly offer."""
    if not sdp or not sdp.strip():
        return "the offer has no SDP"
    sections = sdp.count("\nm=") + sdp.startswith("m=")
    if sections > MAX_MEDIA_SECTIONS:  # counted before parsing: 539 sections blocked the loop for 2 s
        return f"the SDP has {sections} media sections; at most {MAX_MEDIA_SECTIONS} are accepted"
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser raises assorted errors on junk
        return f"the SDP could not be parsed ({type(exc).__name__})"
    kinds = [m.kind for m in parsed.media]
    if len(kinds) > MAX_MEDIA_SECTIONS:
        return f"the SDP has {len(kinds)} media sections; at most {MAX_MEDIA_SECTIONS} are accepted"
    if not kinds:
        return "the SDP has no media sections (is it an SDP offer?)"
    allowed = {"application", *(["audio", "video"] if modality == "audio-video" else [modality])}
    unexpected = sorted({k for k in kinds if k not in allowed})
    if unexpected:
        return f"this stream carries {modality} only; the offer also has {', '.join(unexpected)}"
    media = [m for m in parsed.media if m.kind != "application"]
    if not media:
        return f"the offer has no {modality} track"
    if mode == "send-receive" and receive_only_ok:
        mode = "receive"  # the video may come from the server's own source instead of the client
    # a missing direction means sendrecv (RFC 4566), but aiortc then fails inside the answer: refused
    if mode == "send-receive" and not any(m.direction == "sendrecv" for m in media):
        return f"this stream sends and receives {modality}; the offer must do both (sendrecv)"
    if mode == "receive" and not any(m.direction in ("sendrecv", "recvonly") for m in media):
        return f"this stream sends {modality} to the client; the offer does not receive it"
    bundle = next((g for g in parsed.group if g.semantic == "BUNDLE"), None)
    if bundle is not None and bundle.items and bundle.items[0] not in {m.rtp.muxId for m in parsed.media}:
        # aiortc would give the bundled sections no transport and fail in a task of its own
        return f"the BUNDLE group's first mid {bundle.items[0]!r} names no media section"
    if not any(m.ice and m.ice.usernameFragment for m in parsed.media) and "a=ice-ufrag" not in sdp:
        return "the SDP has no ICE credentials"
    if not any(m.dtls and m.dtls.fingerprints for m in parsed.media):
        return "the SDP has no DTLS fingerprint"
    return None


def make_offer_route(
    stream: Stream,
    name: str,
    admission: Callable[..., Awaitable[OfferBody]],
    count_outcome: Callable[[str], None] = lambda outcome: None,
    bitrate_kbps: tuple[int, int] | None = None,
    count_candidate: Callable[[str], None] = lambda outcome: None,
):  # noqa: ANN201 - FastAPI endpoint
    """`admission` is the FastAPI dependency that parses the body and checks access, owner and rate."""

    admitted = Depends(admission)

    async def offer(request: Request, body: OfferBody = admitted) -> Any:
        if body.type == "ice-candidate":
            return await candidate(body, client_key(request))
        try:
            problem = check_offer_sdp(body.sdp, stream.modality, stream.mode, stream.sources is not None)
            if problem:
                logger.info("session %s: %s offer refused: %s", body.webrtc_id, name, problem)
                raise Refusal(400, "invalid_sdp", problem)
            answer = await stream.offer(body.webrtc_id, str(body.sdp), client=client_key(request))
        except OfferRejected as exc:
            count_outcome(exc.code)
            if exc.code.endswith(("_limit_reached", "pending_offers")):
                logger.warning("session %s: %s limit reached (%s)", body.webrtc_id, name, exc.meta)
            raise Refusal.from_rejection(exc) from exc
        except Refusal as exc:
            count_outcome(exc.code)
            raise
        count_outcome("accepted")
        if bitrate_kbps is not None:
            answer = {**answer, "sdp": apply_bitrate_bounds(answer["sdp"], *bitrate_kbps)}
        return answer

    async def candidate(body: OfferBody, client: str | None) -> Any:
        """fastrtc posts trickled candidates to the offer route; counted apart from offers."""
        try:
            if body.candidate is None:
                raise Refusal(400, "invalid_candidate_format", "an ice-candidate message needs a candidate")
            held = body.webrtc_id not in stream.sessions
            answer = await stream.add_candidate(body.webrtc_id, body.candidate, client=client)
        except OfferRejected as exc:
            count_candidate(exc.code)
            raise Refusal.from_rejection(exc) from exc
        except Refusal as exc:
            count_candidate(exc.code)
            raise
        count_candidate("denied" if answer["status"] == "ignored" else "held" if held else "applied")
        return answer

    offer.__name__ = f"{name or 'root'}_offer"
    return offer
