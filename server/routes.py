"""Per-stream HTTP routes: offer, live input, and server-sent-event outputs."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request, WebSocket
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import HTTPConnection

from server.access import PHONE_SUBJECT, Access, Denied, credential_of
from server.audio_ws import Gate, serve_audio_websocket
from server.errors import Refusal
from server.limits import RateLimiter
from server.offers import SESSION_ID_PATTERN, OfferBody, client_key, make_offer_route
from server.phone import make_incoming_call_route
from server.socket_protocols import FastrtcSocket, TwilioSocket
from server.uploads import mount_source_routes
from streams.stream import Stream

logger = logging.getLogger(__name__)

SSE_KEEPALIVE_S = 15.0
CANDIDATES_PER_SESSION = 20


class InputBody(BaseModel):
    """`{webrtc_id, ...params}`: the params are validated by the stream's own session."""

    model_config = ConfigDict(extra="allow")

    webrtc_id: str = Field(pattern=SESSION_ID_PATTERN)


def refuse(denied: Denied) -> Refusal:
    return Refusal(denied.status, denied.code, denied.message, retry_after_s=denied.retry_after_s)


class SessionGuard:
    """Every check a request about one session passes before it reaches the stream, in one place:
    the id in the query string matches the body, the id belongs to this process, the caller holds
    a credential for it, and new sessions stay within the caller's rate."""

    def __init__(self, access: Access, limiter: RateLimiter, count_refusal: Any) -> None:
        self.access = access
        self.limiter = limiter
        # Trickled candidates: a browser posts a handful per session, so a bucket 20 times the
        # sessions' (issue 13: 2,000 unthrottled posts)
        self.candidate_limiter = RateLimiter(
            limiter.rate * 60 * CANDIDATES_PER_SESSION, int(limiter.burst) * CANDIDATES_PER_SESSION
        )
        self.count_refusal = count_refusal  # (stream, transport, reason) -> None

    def check(
        self, conn: HTTPConnection, webrtc_id: str, *, new_session: bool, stream: str, transport: str,
        credential: str | None = None,
    ) -> Denied | None:  # fmt: skip
        query_id = conn.query_params.get("webrtc_id")
        denied: Denied | None = None
        if query_id is not None and query_id != webrtc_id:
            denied = Denied(
                400, "invalid_request", "the webrtc_id in the query string differs from the body's"
            )
        if denied is None:
            credential = credential or credential_of(conn.headers, conn.query_params)
            denied = self.access.check_session(webrtc_id, credential)
        if denied is None and new_session:
            denied = self.limiter.denial(client_key(conn), "new sessions")
        if denied is not None:
            self.count_refusal(stream, transport, denied.code)
            logger.warning("session %s: %s %s refused: %s", webrtc_id, stream, transport, denied.code)
        return denied

    def require(
        self, conn: HTTPConnection, webrtc_id: str, *, new_session: bool, stream: str, transport: str
    ) -> None:
        """`check`, raising the refusal (for FastAPI dependencies)."""
        denied = self.check(conn, webrtc_id, new_session=new_session, stream=stream, transport=transport)
        if denied is not None:
            raise refuse(denied)

    def for_body(self, stream: str) -> Callable[..., Awaitable[InputBody]]:
        """Dependency: the input body, once its session's access is checked."""

        async def session_in_body(request: Request, body: InputBody) -> InputBody:
            self.require(request, body.webrtc_id, new_session=False, stream=stream, transport="http")
            return body

        return session_in_body

    def for_query(self, stream: str) -> Callable[..., Awaitable[str]]:
        """Dependency: `?webrtc_id=`, once its session's access is checked."""

        async def session_in_query(
            request: Request, webrtc_id: str = Query(pattern=SESSION_ID_PATTERN)
        ) -> str:
            self.require(request, webrtc_id, new_session=False, stream=stream, transport="http")
            return webrtc_id

        return session_in_query

    def for_offer(
        self, stream: Stream, name: str, count: Callable[[str], None]
    ) -> Callable[..., Awaitable[OfferBody]]:
        """Dependency: the offer body, once access, owner and (for a new session) rate are checked."""

        async def offer_admission(request: Request, body: OfferBody) -> OfferBody:
            new = body.type == "offer" and body.webrtc_id not in stream.sessions
            try:
                self.require(request, body.webrtc_id, new_session=new, stream=name, transport="webrtc")
            except Refusal as exc:
                count(exc.code)
                raise
            if body.type == "ice-candidate":  # counted as a refusal, not as an offer
                denied = self.candidate_limiter.denial(client_key(request), "ICE candidates")
                if denied is not None:
                    self.count_refusal(name, "webrtc", denied.code)
                    raise refuse(denied)
            return body

        return offer_admission


def unknown_session(webrtc_id: str, name: str) -> Refusal:
    return Refusal(
        404, "unknown_connection", f"no active {name or 'stream'} session with webrtc_id {webrtc_id!r}"
    )


async def sse_events(reports: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    """Server-sent events named `output` (what fastrtc's clients listen for; readers of raw `data:`
    lines see the same), `end` when the session ends, and a comment as keep-alive for proxies."""
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
        yield f"event: output\ndata: {json.dumps(report)}\n\n"


def mount_stream(app: FastAPI, stream: Stream, guard: SessionGuard) -> None:
    """Mount `/{name}/webrtc/offer`, `/{name}/input` and `/{name}/outputs` for one stream (and the
    WebSocket and phone routes for audio streams)."""
    name = stream.name
    if name is None:
        raise ValueError("a served stream needs a name (its URL prefix): Stream(..., name='mystream')")
    if name in app.state.streams:
        raise ValueError(f"two streams are named {name!r}: each needs its own name (its URL prefix)")
    router = APIRouter(prefix=f"/{name}" if name else "", tags=[name or "stream"])
    offers = app.state.metrics.offers
    settings = app.state.settings

    browser_sends_video = stream.modality in ("video", "audio-video") and stream.mode in (
        "send-receive",
        "send",
    )
    bitrate = (
        (settings.video_min_bitrate_kbps, settings.video_max_bitrate_kbps) if browser_sends_video else None
    )
    stream.observer = app.state.metrics.observer(name)
    count = lambda outcome: offers.labels(name, outcome).inc()  # noqa: E731
    router.post("/webrtc/offer")(
        make_offer_route(
            stream,
            name,
            guard.for_offer(stream, name, count),
            count,
            bitrate_kbps=bitrate,
            count_candidate=lambda outcome: app.state.metrics.candidates.labels(name, outcome).inc(),
        )  # fmt: skip
    )

    checked_body, checked_query = Depends(guard.for_body(name)), Depends(guard.for_query(name))

    @router.post("/input", name=f"{name}_input")
    async def set_input(body: InputBody = checked_body) -> Any:
        if body.webrtc_id not in stream.sessions:
            raise unknown_session(body.webrtc_id, name)
        params = stream.set_inputs(body.webrtc_id, dict(body.model_extra or {}))  # InvalidInput: 422
        return {"status": "ok", "params": params}

    @router.get("/outputs", name=f"{name}_outputs")
    async def outputs(webrtc_id: str = checked_query) -> Any:
        session = stream.sessions.get(webrtc_id)
        if session is None:
            raise unknown_session(webrtc_id, name)
        return StreamingResponse(
            sse_events(session.reports.listen()),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    if stream.modality == "audio":
        _mount_audio_transports(router, stream, name, app.state.settings, guard)
    if stream.sources is not None:
        mount_source_routes(router, stream, name, app.state.settings, guard)

    app.include_router(router)
    app.state.streams[name] = stream


# Routes stock fastrtc serves at the root (or its docs have apps define there) -> this server's own.
FASTRTC_ROOT_ROUTES = {"/webrtc/offer": "/webrtc/offer", "/input_hook": "/input", "/outputs": "/outputs",
                       "/websocket/offer": "/websocket/offer"}  # fmt: skip


def mount_route_hints(app: FastAPI) -> None:
    """fastrtc's root routes answer with the one error shape naming the prefixed routes to use,
    instead of the page's bare 405 (a fastrtc client pointed here unchanged says what to change)."""
    names = list(app.state.streams)
    if "" in names:
        return  # a stream served at the root owns these paths

    def hint(path: str) -> tuple[str, list[str]]:
        target = FASTRTC_ROOT_ROUTES[path]
        usable = [f"/{n}{target}" for n, s in app.state.streams.items()
                  if target != "/websocket/offer" or s.modality == "audio"]  # fmt: skip
        message = f"this server serves each stream under its name: use {', '.join(usable) or 'none'}"
        return message, usable

    def http_hint(path: str) -> Callable[[], Awaitable[None]]:
        async def refuse_here() -> None:
            message, usable = hint(path)
            raise Refusal(404, "unknown_route", message, routes=usable)

        return refuse_here

    for path in ("/webrtc/offer", "/input_hook", "/outputs"):
        app.add_api_route(path, http_hint(path), methods=["GET", "POST"], include_in_schema=False)

    @app.websocket("/websocket/offer")
    async def websocket_hint(websocket: WebSocket) -> None:
        await websocket.accept()
        message, usable = hint("/websocket/offer")
        await websocket.send_json({"event": "error", "status": "failed", "message": message,
                                   "meta": {"error": "unknown_route", "routes": usable}})  # fmt: skip
        await websocket.close(code=1008, reason=f"unknown_route: use {', '.join(usable)}"[:123])


def mount_root_phone_routes(app: FastAPI, name: str = "chat") -> None:
    """`/telephone/incoming` and `/telephone/handler` at the root (where stock fastrtc mounts them and
    fastphone calls them), serving stream `name`'s sessions with the same checks; placed before the
    page's catch-all mount."""
    stream = app.state.streams.get(name)
    if stream is None or stream.modality != "audio":
        raise ValueError(f"/{name} is not an audio stream: it has no phone routes")
    router = APIRouter(tags=[name])
    _mount_audio_transports(router, stream, name, app.state.settings, app.state.guard)
    before = len(app.router.routes)
    app.include_router(router)
    added = app.router.routes[before:]
    del app.router.routes[before:]
    app.router.routes[0:0] = added


def _mount_audio_transports(
    router: APIRouter, stream: Stream, name: str, settings: Any, guard: SessionGuard
) -> None:
    """The same audio stream over WebSocket and over the phone (Twilio Media Streams)."""

    def websocket_gate(websocket: WebSocket) -> Gate:
        return lambda session_id, start: guard.check(
            websocket, session_id, new_session=True, stream=name, transport="websocket"
        )

    def phone_gate(session_id: str, start: dict[str, Any]) -> Denied | None:
        # Twilio cannot send headers: our TwiML hands it a token as a <Parameter> of the stream.
        params = (start.get("start") or {}).get("customParameters") or {}
        denied = guard.access.check_phone(params.get("token") if isinstance(params, dict) else None)
        if denied is not None:
            guard.count_refusal(name, "phone", denied.code)
        return denied

    @router.websocket("/websocket/offer")
    async def websocket_offer(websocket: WebSocket) -> None:
        # Refused before the handshake completes when tokens are on and none came with it: an
        # unauthenticated socket costs nothing (issue 13: 20 open ones held 550 MB).
        access = guard.access
        if access.required and credential_of(websocket.headers, websocket.query_params) is None:
            guard.count_refusal(name, "websocket", "unauthorized")
            await websocket.close(code=1008, reason="unauthorized: send ?token= or Authorization: Bearer")
            return
        await serve_audio_websocket(websocket, stream, FastrtcSocket(), websocket_gate(websocket))

    @router.websocket("/telephone/handler")
    async def telephone_handler(websocket: WebSocket) -> None:
        await serve_audio_websocket(websocket, stream, TwilioSocket(), phone_gate)

    access = guard.access
    router.post("/telephone/incoming", name=f"{name}_incoming_call")(
        make_incoming_call_route(
            f"/{name}/telephone/handler" if name else "/telephone/handler",
            settings.twilio_auth_token,
            stream_token=(lambda: access.sign(PHONE_SUBJECT, ttl_s=60)) if access.required else None,
        )
    )
