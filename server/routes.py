"""Per-stream HTTP routes: offer, live input, and server-sent-event outputs."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, FastAPI, Query, WebSocket
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from server.audio_ws import serve_audio_websocket
from server.offers import SESSION_ID_PATTERN, make_offer_route, refusal
from server.phone import make_incoming_call_route
from streams.runtime import HardenedStream

logger = logging.getLogger(__name__)

SSE_KEEPALIVE_S = 15.0


class InputBody(BaseModel):
    """`{webrtc_id, ...params}`: the params are validated by the stream's own session."""

    model_config = ConfigDict(extra="allow")

    webrtc_id: str = Field(pattern=SESSION_ID_PATTERN)


def describe_errors(errors: list[Any]) -> str:
    """Pydantic errors as one line for people: `field: problem; field: problem`."""
    parts = []
    for err in errors:
        if err.get("type") == "json_invalid":
            parts.append("the body is not valid JSON")
            continue
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query"))
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts) or "invalid request"


def unknown_session(webrtc_id: str, name: str) -> Any:
    return refusal(404, "unknown_connection", f"no active {name} session with webrtc_id {webrtc_id!r}")


async def sse_events(reports: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    """Server-sent events, with a comment line as keep-alive so proxies keep the stream open."""
    iterator = reports.__aiter__()
    yield ": connected\n\n"
    while True:
        try:
            report = await asyncio.wait_for(iterator.__anext__(), SSE_KEEPALIVE_S)
        except (TimeoutError, asyncio.TimeoutError):
            yield ": keep-alive\n\n"
            continue
        except StopAsyncIteration:
            yield "event: end\ndata: {}\n\n"
            return
        yield f"data: {json.dumps(report)}\n\n"


def mount_stream(app: FastAPI, stream: HardenedStream, name: str) -> None:
    """Mount `/{name}/webrtc/offer`, `/{name}/input` and `/{name}/outputs` for one stream."""
    router = APIRouter(prefix=f"/{name}", tags=[name])
    offers = app.state.metrics.offers
    settings = app.state.settings
    browser_sends_video = stream.modality in ("video", "audio-video") and stream.mode in (
        "send-receive",
        "send",
    )
    bitrate = (
        (settings.video_min_bitrate_kbps, settings.video_max_bitrate_kbps) if browser_sends_video else None
    )
    router.post("/webrtc/offer")(
        make_offer_route(stream, name, lambda o: offers.labels(name, o).inc(), bitrate_kbps=bitrate)
    )

    @router.post("/input", name=f"{name}_input")
    async def set_input(body: InputBody) -> Any:
        session = stream.sessions.get(body.webrtc_id)
        if session is None:
            return unknown_session(body.webrtc_id, name)
        try:
            params = session.update(dict(body.model_extra or {}))
        except ValidationError as exc:
            return refusal(422, "invalid_input", describe_errors(exc.errors()))
        except ValueError as exc:  # valid shape, but not possible here (e.g. an unavailable mode)
            return refusal(422, "invalid_input", str(exc))
        return {"status": "ok", "params": params}

    @router.get("/outputs", name=f"{name}_outputs")
    async def outputs(webrtc_id: str = Query(pattern=SESSION_ID_PATTERN)) -> Any:
        session = stream.sessions.get(webrtc_id)
        if session is None:
            return unknown_session(webrtc_id, name)
        return StreamingResponse(
            sse_events(session.reports.listen()),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    if stream.modality == "audio":
        _mount_audio_transports(router, stream, name, app.state.settings)

    app.include_router(router)
    app.state.streams[name] = stream


def _mount_audio_transports(router: APIRouter, stream: HardenedStream, name: str, settings: Any) -> None:
    """The same audio stream over WebSocket and over the phone (Twilio Media Streams)."""
    time_limit = getattr(settings, f"{name}_time_limit_s", None)

    @router.websocket("/websocket/offer")
    async def websocket_offer(websocket: WebSocket) -> None:
        await serve_audio_websocket(websocket, stream, phone=False, time_limit=time_limit)

    @router.websocket("/telephone/handler")
    async def telephone_handler(websocket: WebSocket) -> None:
        await serve_audio_websocket(websocket, stream, phone=True, time_limit=time_limit)

    router.post("/telephone/incoming", name=f"{name}_incoming_call")(
        make_incoming_call_route(f"/{name}/telephone/handler", settings.twilio_auth_token)
    )
