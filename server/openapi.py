"""An OpenAPI document that tells the truth, and Swagger UI / ReDoc served without a CDN.

FastAPI documents what it sees in signatures: `Any` answers, a stream's input body with only
`webrtc_id`, and a 422 `HTTPValidationError` that this server never sends (`server.errors` renders
every refusal as `Error`). `install_api_docs` keeps FastAPI's generator and completes its output
from the live app each time the routes change: each route's refusals by status and code, every
stream's input model (ranges, choices, defaults), the answer models, and the WebSocket routes,
which OpenAPI 3.1 cannot express as operations (they go in `info.description` and `x-websockets`).

The pages load swagger-ui and ReDoc from the files the `fastapi-offline` package installs, so
`/docs` works on a machine without internet, and a Content-Security-Policy keeps the two bundles
from fetching anything elsewhere (ReDoc's sidebar logo, Swagger UI's validator badge).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute

from server import audio_ws
from server.errors import STATUS_BY_CODE
from server.offers import SESSION_ID_PATTERN
from server.socket_protocols import MAX_RATE, MIN_RATE, PHONE_RATE, FastrtcSocket, TwilioSocket
from streams.candidates import MAX_PER_SESSION
from streams.stream import Stream

ASSETS_PACKAGE = ("fastapi_offline", "static")  # swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js
# Inline scripts and styles are FastAPI's page and the bundles' own; ReDoc searches in a blob: worker.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
    "frame-ancestors 'self'"
)
REF = "#/components/schemas/"


# ---- the models the routes answer with -------------------------------------------------------


class ErrorMeta(BaseModel):
    """`error` always; some codes add facts (`limit` for capacity, `routes` for a wrong route)."""

    model_config = ConfigDict(extra="allow")

    error: str = Field(
        description="machine-readable refusal code; each response lists the codes it can carry"
    )


class Error(BaseModel):
    """Every refusal, on every HTTP route (`server.errors`): a real status code and this body."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["failed"]
    meta: ErrorMeta
    message: str = Field(description="for people: what was wrong and, where it applies, what is allowed")


class OfferAnswer(BaseModel):
    """The server's SDP answer to an `offer`."""

    model_config = ConfigDict(extra="forbid")

    sdp: str
    type: Literal["answer"]


class CandidateAccepted(BaseModel):
    """fastrtc's answer to a trickled `ice-candidate` the server applied (or holds until its offer)."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["success"]


class SessionGrant(BaseModel):
    """`POST /api/session`: an id naming this process, and its session token when AUTH_TOKEN is set."""

    webrtc_id: str = Field(pattern=SESSION_ID_PATTERN)
    token: str | None = Field(description="valid for this webrtc_id only; null when access tokens are off")
    expires_in: float = Field(description="seconds the token stays valid")
    instance: str


# ---- which refusals each route can send --------------------------------------------------------


@dataclass(frozen=True)
class Code:
    """One refusal a route can answer: its status, its `meta.error` and when it happens."""

    status: int
    code: str
    when: str


def _media(code: str, when: str) -> Code:
    """A media-side refusal (`streams.OfferRejected`): its status is the renderer's own table."""
    return Code(STATUS_BY_CODE[code], code, when)


ORIGIN = (
    Code(403, "origin_not_allowed", "a browser page from an origin outside ALLOWED_ORIGINS (when set)"),
    Code(
        403,
        "host_not_allowed",
        "a browser naming this server by a host outside ALLOWED_HOSTS (DNS rebinding)",
    ),
)
BODY_LIMIT = (Code(413, "body_too_large", "the body is over MAX_BODY_BYTES"),)
VALIDATION = (
    Code(
        422,
        "invalid_request",
        "the body is not JSON, a field is missing, has the wrong type or is out of bounds",
    ),
)
CREDENTIAL = (Code(401, "unauthorized", "AUTH_TOKEN is set and the request carries no valid token"),)
SESSION_ACCESS = (
    *CREDENTIAL,
    Code(400, "invalid_request", "the webrtc_id in the query string differs from the body's"),
    Code(403, "forbidden", "a session token for another session, or an expired one"),
    Code(
        421, "wrong_instance", "the webrtc_id was issued by another server process (the proxy misrouted it)"
    ),
)
RATE = (
    Code(429, "rate_limited", "too many new sessions from this address (Retry-After says when to retry)"),
)
OFFER = (
    Code(
        400,
        "invalid_sdp",
        "junk SDP, the wrong media kind or direction, no ICE credentials or DTLS fingerprint",
    ),
    _media("invalid_offer", "aiortc could not apply the offer"),
    _media("invalid_candidate_format", "a trickled ICE candidate is malformed or was not accepted"),
    _media(
        "unknown_connection", "a candidate for a session of this id on another transport (WebSocket, phone)"
    ),
    _media(
        "too_many_candidates", f"more than {MAX_PER_SESSION} candidates held before the offer is answered"
    ),
    _media("connection_already_exists", "the webrtc_id is in use"),
    _media("concurrency_limit_reached", "the stream is full"),
    _media("server_limit_reached", "the server is at MAX_SESSIONS"),
    _media("too_many_pending_offers", "MAX_PENDING_OFFERS answered offers have not connected yet"),
    _media(
        "too_many_pending_offers_from_client",
        "this address has MAX_PENDING_OFFERS_PER_CLIENT answered offers that have not connected yet",
    ),
    _media("shutting_down", "the server is draining"),
    _media("session_failed", "the handler could not start the session"),
)
INPUT = (
    _media("unknown_connection", "no live session with this webrtc_id on this stream"),
    Code(422, "invalid_input", "a value out of range, not among the choices, or not an input of this stream"),
)
OUTPUTS = (
    _media("unknown_connection", "no live session with this webrtc_id on this stream"),
    _media("too_many_listeners", "the session's outputs already have their most listeners (4)"),
)
UPLOAD = (
    _media("unknown_connection", "no live session with this webrtc_id on this stream"),
    Code(403, "uploads_disabled", "UPLOADS=false"),
    Code(409, "upload_in_progress", "this session is already uploading"),
    Code(413, "too_large", "the upload is larger than UPLOAD_MAX_BYTES (counted while it streams to disk)"),
    Code(415, "unsupported_media_type", "the body is not multipart/form-data"),
    Code(415, "not_a_video", "FFmpeg finds no video stream or cannot decode a frame; the file is deleted"),
    Code(400, "invalid_upload", "no `file` field, or the multipart body cannot be parsed"),
    Code(400, "upload_incomplete", "the client left before the upload finished"),
)
READY = (
    Code(503, "shutting_down", "the server is draining"),
    Code(503, "loading", "a model is still loading"),
)
PHONE = (
    Code(
        403, "phone_disabled", "AUTH_TOKEN is set but TWILIO_AUTH_TOKEN is not: nobody could sign the webhook"
    ),
    Code(403, "bad_signature", "TWILIO_AUTH_TOKEN is set and X-Twilio-Signature does not match"),
    Code(409, "call_already_answered", "a signed webhook posted again for a call already answered (replay)"),
)

# What each endpoint and dependency raises, by `module:qualname` (they are closures, made per stream).
REFUSALS_BY_CALLABLE: dict[str, tuple[Code, ...]] = {
    "server.routes:SessionGuard.for_offer.<locals>.offer_admission": SESSION_ACCESS + RATE,
    "server.routes:SessionGuard.for_body.<locals>.session_in_body": SESSION_ACCESS,
    "server.routes:SessionGuard.for_query.<locals>.session_in_query": SESSION_ACCESS,
    "server.app:serve_streams.<locals>.master": CREDENTIAL,
    "server.app:serve_streams.<locals>.any_credential": CREDENTIAL,
    "server.offers:make_offer_route.<locals>.offer": OFFER,
    "server.routes:mount_stream.<locals>.set_input": INPUT,
    "server.routes:mount_stream.<locals>.outputs": OUTPUTS,
    "server.uploads:mount_source_routes.<locals>.upload": UPLOAD,
    "server.app:serve_streams.<locals>.readyz": READY,
    "server.app:serve_streams.<locals>.issue_rate": RATE,
    "server.app:serve_streams.<locals>.rtc_config": (
        Code(
            403, "session_required", "TURN credentials are configured and the webrtc_id was not issued here"
        ),
    ),
    "server.phone:make_incoming_call_route.<locals>.incoming_call": PHONE,
}


def callable_key(fn: Callable[..., Any]) -> str:
    """`module:qualname`: stable for closures made anew per stream (unlike the functions themselves)."""
    return f"{getattr(fn, '__module__', '')}:{getattr(fn, '__qualname__', '')}"


def route_callables(route: APIRoute) -> Iterator[Callable[..., Any]]:
    """The endpoint and every dependency it runs (each can refuse)."""
    yield route.endpoint
    pending = list(route.dependant.dependencies)
    while pending:
        dependant = pending.pop()
        if dependant.call is not None:
            yield dependant.call
        pending.extend(dependant.dependencies)


def route_refusals(route: APIRoute, method: str, validates: bool) -> list[Code]:
    """Every refusal `route` can answer to `method`: the middleware's, FastAPI's validation (when it
    validates anything), and its endpoint's and dependencies' own."""
    codes: list[Code] = [*ORIGIN]
    if method in ("post", "put", "patch"):
        codes += BODY_LIMIT
    if validates:
        codes += VALIDATION
    for fn in route_callables(route):
        codes += REFUSALS_BY_CALLABLE.get(callable_key(fn), ())
    return list(dict.fromkeys(codes))


def _closure(fn: Callable[..., Any], name: str) -> Any:
    """A variable the closure `fn` was made with (the stream a per-stream route serves)."""
    try:
        return inspect.getclosurevars(fn).nonlocals.get(name)
    except (TypeError, ValueError):
        return None


def app_routes(app: FastAPI) -> Iterator[tuple[str, BaseRoute]]:
    """(full path, route) for every route, included routers' too (FastAPI >= 0.12x keeps them nested)."""
    try:
        from fastapi.routing import iter_route_contexts  # type: ignore[attr-defined]
    except ImportError:  # older FastAPI flattens included routers into app.routes
        for route in app.routes:
            yield getattr(route, "path", ""), route
        return
    for context in iter_route_contexts(app.routes):
        yield context.path or "", context.original_route


# ---- the schema -------------------------------------------------------------------------------


def _add_model(schemas: dict[str, Any], model: type[BaseModel], name: str | None = None) -> dict[str, str]:
    """Put `model`'s JSON schema (and its nested models) in schemas; returns a $ref to it."""
    schema = model.model_json_schema(ref_template=REF + "{model}")
    for nested, definition in schema.pop("$defs", {}).items():
        schemas.setdefault(nested, definition)
    name = name or model.__name__
    schema["title"] = name
    schemas[name] = schema
    return {"$ref": REF + name}


def _error_response(codes: list[Code], status: int) -> dict[str, Any]:
    names = list(dict.fromkeys(c.code for c in codes))
    response: dict[str, Any] = {
        "description": "Refused: " + "; ".join(f"`{c.code}`: {c.when}" for c in codes),
        "content": {
            "application/json": {
                "schema": {
                    "allOf": [
                        {"$ref": REF + "Error"},
                        {"properties": {"meta": {"properties": {"error": {"enum": names}}}}},
                    ]
                }
            }
        },
    }
    if status == 429:
        response["headers"] = {
            "Retry-After": {
                "description": "with rate_limited: seconds until a new session may pass",
                "schema": {"type": "integer"},
            }
        }
    return response


def _stream_title(stream: Stream) -> str:
    """`video` -> `Video` (a schema name per stream; stream names are unique, and so are these)."""
    name = stream.name or "stream"
    return name[:1].upper() + name[1:]


def _input_schemas(schemas: dict[str, Any], stream: Stream) -> tuple[dict[str, Any], dict[str, Any]]:
    """(request body, current `params`) schemas for `POST /{stream}/input`, from the stream's own
    input model: the one that validates the values, so ranges, choices and defaults cannot drift."""
    title = _stream_title(stream)
    model = stream.inputs.model
    properties: dict[str, Any] = {}
    if model is not None:
        try:
            schema = model.model_json_schema(ref_template=REF + "{model}")
            json.dumps(schema)
        except Exception:  # an annotation pydantic cannot describe: the values are still validated
            schema = {"properties": {n: {} for n in stream.inputs.names}}
        for nested, definition in schema.pop("$defs", {}).items():
            schemas.setdefault(nested, definition)
        properties = schema.get("properties", {})
    body = {
        "title": f"{title}Input",
        "type": "object",
        "description": f"Live inputs of `{stream.name}`: send any subset; the others keep their values."
        + ("" if properties else " This stream takes no inputs."),
        "properties": {
            "webrtc_id": {"type": "string", "pattern": SESSION_ID_PATTERN, "description": "the session"},
            **properties,
        },
        "required": ["webrtc_id"],
        "additionalProperties": False,
    }
    params = {
        "title": f"{title}Params",
        "type": "object",
        "description": f"Every live input of `{stream.name}` as the session now has it.",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }
    schemas[f"{title}Input"] = body
    schemas[f"{title}Params"] = params
    return {"$ref": REF + f"{title}Input"}, {"$ref": REF + f"{title}Params"}


WEBRTC_ID_QUERY = {
    "name": "webrtc_id",
    "in": "query",
    "required": False,
    "description": "the session, as in the body (a proxy routes on it; when given it must match the body)",
    "schema": {"type": "string", "pattern": SESSION_ID_PATTERN},
}
SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "AUTH_TOKEN, or the session token POST /api/session issued for this webrtc_id",
    },
    "token": {
        "type": "apiKey",
        "in": "query",
        "name": "token",
        "description": "the same credential where headers cannot be set (EventSource, browser WebSocket)",
    },
}
# `{}`: no credential at all, which is what a server without AUTH_TOKEN accepts.
OPTIONAL_CREDENTIAL = [{}, {"bearer": []}, {"token": []}]


def _describe_operation(
    schemas: dict[str, Any], route: APIRoute, method: str, operation: dict[str, Any]
) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    validates = "422" in responses  # FastAPI adds its 422 exactly where it validates something
    if "HTTPValidationError" in json.dumps(responses.get("422", {})):
        del responses["422"]  # not what this server sends (server.errors renders validation errors)
    codes = route_refusals(route, method, validates)
    for status in sorted({c.status for c in codes}):
        if str(status) not in responses:  # an app's own route may document its own
            responses[str(status)] = _error_response([c for c in codes if c.status == status], status)
    if any(c.code == "unauthorized" for c in codes):
        operation["security"] = OPTIONAL_CREDENTIAL

    endpoint = callable_key(route.endpoint)
    stream = _closure(route.endpoint, "stream")
    ok: dict[str, Any] = {}
    if endpoint == "server.offers:make_offer_route.<locals>.offer":
        ok["description"] = "the SDP answer to an offer, or fastrtc's success for a trickled candidate"
        answer, accepted = _add_model(schemas, OfferAnswer), _add_model(schemas, CandidateAccepted)
        ok["content"] = {"application/json": {"schema": {"oneOf": [answer, accepted]}}}
        _add_parameter(operation, WEBRTC_ID_QUERY)
    elif endpoint == "server.routes:mount_stream.<locals>.set_input" and isinstance(stream, Stream):
        body, params = _input_schemas(schemas, stream)
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        ok["description"] = "applied from the next frame; every input's current value"
        ok["content"] = {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"status": {"const": "ok"}, "params": params},
                    "required": ["status", "params"],
                }
            }
        }
        _add_parameter(operation, WEBRTC_ID_QUERY)
    elif endpoint == "server.routes:mount_stream.<locals>.outputs":
        ok["description"] = (
            "Server-sent events: `event: output` with one JSON report per `data:` line (the stream's "
            "AdditionalOutputs), `event: end` when the session ends, and `:` comments as keep-alive."
        )
        ok["content"] = {"text/event-stream": {"schema": {"type": "string"}}}
    elif endpoint == "server.phone:make_incoming_call_route.<locals>.incoming_call":
        operation["requestBody"] = {
            "required": False,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "description": "Twilio's Voice webhook parameters (CallSid, From, To, ...)",
                        "additionalProperties": {"type": "string"},
                    }
                }
            },
        }
        _add_parameter(
            operation,
            {
                "name": "X-Twilio-Signature",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": "checked when TWILIO_AUTH_TOKEN is set",
            },
        )
        ok["description"] = "TwiML that connects the call to this stream's Media Streams WebSocket"
        ok["content"] = {"application/xml": {"schema": {"type": "string"}}}
    elif endpoint == "server.app:serve_streams.<locals>.new_session":
        ok["content"] = {"application/json": {"schema": _add_model(schemas, SessionGrant)}}
    elif endpoint == "server.app:serve_streams.<locals>.metrics":
        ok["description"] = "Prometheus text exposition format"
        ok["content"] = {"text/plain": {"schema": {"type": "string"}}}
    if ok:
        responses.setdefault("200", {"description": "Successful Response"}).update(ok)


def _add_parameter(operation: dict[str, Any], parameter: dict[str, Any]) -> None:
    parameters = operation.setdefault("parameters", [])
    if not any(p.get("name") == parameter["name"] and p.get("in") == parameter["in"] for p in parameters):
        parameters.append(parameter)


# ---- WebSockets: no operations in OpenAPI 3.1, so a described extension ------------------------

CLOSE_CODES = {
    str(audio_ws.CLOSE_NORMAL): "the client's stop, or the session's time limit",
    str(audio_ws.CLOSE_UNSUPPORTED_DATA): "a binary frame (send JSON text)",
    str(audio_ws.CLOSE_PROTOCOL_ERROR): "access refused or a message the protocol does not accept "
    "(the reason is `code: message`, with the HTTP routes' codes)",
    str(audio_ws.CLOSE_TOO_BIG): f"a message over {audio_ws.MAX_MESSAGE_CHARS} characters",
    str(audio_ws.CLOSE_SERVER_ERROR): "the session failed on the server",
    str(audio_ws.CLOSE_SERVICE_RESTART): "the server is shutting down",
    str(audio_ws.CLOSE_TRY_AGAIN): "no capacity (concurrency_limit_reached, server_limit_reached, ...)",
}
PAYLOAD = "<base64 μ-law>"


def _fastrtc_socket(path: str, stream: Stream | None) -> dict[str, Any]:
    handler = getattr(stream, "handler", None)
    rate_in = getattr(handler, "input_sample_rate", None)
    rate_out = getattr(handler, "output_sample_rate", None)
    wire = FastrtcSocket()
    return {
        "path": path,
        "stream": getattr(stream, "name", None),
        "protocol": "fastrtc",
        "summary": "fastrtc's JSON audio protocol: μ-law audio both ways, one session per socket",
        "auth": "Authorization: Bearer, or ?token= (a session token for the start's websocket_id)",
        "client_messages": {
            "start": {
                "example": {
                    "event": "start",
                    "websocket_id": "<session id>",
                    "input_sample_rate": rate_in,
                    "output_sample_rate": rate_out,
                },  # fmt: skip
                "notes": f"first, within {audio_ws.START_TIMEOUT_S:.0f} s; websocket_id matches "
                f"{SESSION_ID_PATTERN}; the rates (Hz, {MIN_RATE}-{MAX_RATE}) are optional, by default "
                f"the handler's: {rate_in} in, {rate_out} out",
            },
            "media": {
                "example": {"event": "media", "media": {"payload": PAYLOAD}},
                "notes": "mono audio at the input rate, e.g. every 20 ms",
            },  # fmt: skip
            "ping": {"example": {"event": "ping"}, "notes": "answered with pong"},
            "stop": {
                "example": {"event": "stop"},
                "notes": f"ends the session; close {audio_ws.CLOSE_NORMAL}",
            },
        },
        "server_messages": {
            "media": {
                "example": wire.media(PAYLOAD),
                "notes": "replies at the output rate, paced in real time",
            },
            "clear": {"example": wire.clear(), "notes": "the user interrupted a reply: drop buffered audio"},
            "pong": {"example": {"event": "pong"}},
            "handler": {
                "example": {"type": "log", "data": "pause_detected"},
                "notes": "the handler's data-channel messages, as sent",
            },  # fmt: skip
            "error": {"example": wire.refusal("<code>", "<message>"), "notes": "before a refusal's close"},
        },
        "close_codes": CLOSE_CODES,
    }


def _twilio_socket(path: str, stream: Stream | None) -> dict[str, Any]:
    wire = TwilioSocket()
    wire.id = "<streamSid>"
    return {
        "path": path,
        "stream": getattr(stream, "name", None),
        "protocol": "twilio-media-streams",
        "summary": f"Twilio Media Streams: {PHONE_RATE} Hz μ-law both ways; reached through the TwiML "
        "of the stream's POST .../telephone/incoming",
        "auth": "with AUTH_TOKEN set, the token our TwiML passes as the stream's customParameters.token",
        "client_messages": {
            "connected": {"example": {"event": "connected"}},
            "start": {
                "example": {
                    "event": "start",
                    "streamSid": "<streamSid>",
                    "start": {"customParameters": {"token": "<token>"}},
                }
            },  # fmt: skip
            "media": {
                "example": {"event": "media", "streamSid": "<streamSid>", "media": {"payload": PAYLOAD}}
            },
            "mark": {
                "example": {"event": "mark", "mark": {"name": "1.000"}},
                "notes": "Twilio's echo: the caller has heard the audio before this mark",
            },  # fmt: skip
            "stop": {"example": {"event": "stop"}},
        },
        "server_messages": {
            "media": {"example": wire.media(PAYLOAD)},
            "mark": {"example": wire.mark("1.000"), "notes": "follows reply audio; the name is seconds sent"},
            "clear": {"example": wire.clear(), "notes": "barge-in: Twilio drops the queued reply"},
        },
        "close_codes": CLOSE_CODES,
        "refusals": "by the close code and reason only (Twilio accepts no other message)",
    }


def websocket_routes(app: FastAPI) -> list[dict[str, Any]]:
    """Every WebSocket route of `app` that can answer, with its protocol where this server defines it."""
    described: list[dict[str, Any]] = []
    for path, route in app_routes(app):
        if not isinstance(route, WebSocketRoute) or any(s["path"] == path for s in described):
            continue  # a later route on a path already served is never reached
        endpoint = getattr(route, "endpoint", None)
        key = callable_key(endpoint) if endpoint is not None else ""
        stream = _closure(endpoint, "stream") if endpoint is not None else None
        if key == "server.routes:_mount_audio_transports.<locals>.websocket_offer":
            described.append(_fastrtc_socket(path, stream))
        elif key == "server.routes:_mount_audio_transports.<locals>.telephone_handler":
            described.append(_twilio_socket(path, stream))
        elif key == "server.routes:mount_route_hints.<locals>.websocket_hint":
            described.append({
                "path": path, "protocol": "hint",
                "summary": "stock fastrtc's root path: answers an error event naming this server's "
                f"prefixed WebSocket routes (meta.error unknown_route), then closes {audio_ws.CLOSE_PROTOCOL_ERROR}",
            })  # fmt: skip
        else:
            described.append(
                {"path": path, "protocol": "unknown", "summary": "the app's own WebSocket route"}
            )
    return described


def _overview(app: FastAPI, sockets: list[dict[str, Any]]) -> str:
    """Markdown for `info.description`: what the paths alone cannot say."""
    lines = [
        "## Errors",
        'Every refusal is an `Error` (`{"status": "failed", "meta": {"error": code, ...}, '
        '"message": ...}`) with a real status code; each response lists the codes it can carry.',
    ]
    streams: dict[str, Stream] = getattr(app.state, "streams", {}) or {}
    if streams:
        lines += [
            "",
            "## Streams",
            "",
            "| stream | media | live inputs (`POST .../input`) |",
            "|---|---|---|",
        ]
        for name, stream in streams.items():
            inputs = ", ".join(f"`{n}`" for n in stream.inputs.defaults) or "none"
            lines.append(f"| `/{name}` | {stream.modality}, {stream.mode} | {inputs} |")
    lines += ["", "## WebSockets", "",
              "OpenAPI has no WebSocket operations: these routes are listed here and, with their "
              "messages and close codes, in this document's `x-websockets`.", ""]  # fmt: skip
    for socket in sockets:
        lines.append(f"- `WS {socket['path']}` ({socket['protocol']}): {socket['summary']}")
        for side, key in (("client sends", "client_messages"), ("server sends", "server_messages")):
            if socket.get(key):
                shown = "; ".join(
                    f"`{json.dumps(m['example'], ensure_ascii=False)}`" for m in socket[key].values()
                )
                lines.append(f"  - {side}: {shown}")
        if "auth" in socket:
            lines.append(f"  - access: {socket['auth']}")
        if "close_codes" in socket:
            codes = "; ".join(f"{code} {why}" for code, why in socket["close_codes"].items())
            lines.append(f"  - closes: {codes}")
        if "refusals" in socket:
            lines.append(f"  - refusals: {socket['refusals']}")
    if not sockets:
        lines.append("- none")
    return "\n".join(lines)


def describe_app(app: FastAPI, schema: dict[str, Any]) -> None:
    """Complete FastAPI's generated `schema` (in place) from the live routes and streams."""
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    _add_model(schemas, ErrorMeta)
    _add_model(schemas, Error)
    components.setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
    paths = schema.get("paths", {})
    for path, route in app_routes(app):
        if not isinstance(route, APIRoute) or not route.include_in_schema or path not in paths:
            continue
        for method in route.methods or ():
            operation = paths[path].get(method.lower())
            if operation is not None:
                _describe_operation(schemas, route, method.lower(), operation)
    for replaced in ("InputBody", "HTTPValidationError", "ValidationError"):  # in order of reference
        if f'"{REF}{replaced}"' not in json.dumps({**schema, "components": {"schemas": schemas}}):
            schemas.pop(replaced, None)
    sockets = websocket_routes(app)
    schema["x-websockets"] = sockets
    info = schema.setdefault("info", {})
    info["description"] = "\n\n".join(p for p in (app.description, _overview(app, sockets)) if p)


# ---- installing ---------------------------------------------------------------------------------


def install_api_docs(app: FastAPI) -> None:
    """`app.openapi` completed by `describe_app` (FastAPI still caches it, and regenerates when routes
    change), and `docs_url` / `redoc_url` replaced by pages whose assets come from this process."""
    generate = app.openapi  # FastAPI's own: cached in app.openapi_schema
    described: list[int] = []

    def openapi() -> dict[str, Any]:
        schema = generate()
        if not described or described[-1] != id(schema):
            describe_app(app, schema)
            described[:] = [id(schema)]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    _serve_docs_offline(app)


def _serve_docs_offline(app: FastAPI) -> None:
    """Swap FastAPI's CDN-loading pages for the same pages on the package's files, in place (before
    any catch-all mount), for `create_app`'s app and for a fastrtc app's own (`Stream.mount`)."""
    pages = [url for url in (app.docs_url, app.redoc_url) if url]
    if not app.openapi_url or not pages:
        return
    openapi_url = app.openapi_url
    assets = pages[0].rstrip("/") + "/assets"
    routes = app.router.routes
    at = next((i for i, r in enumerate(routes) if isinstance(r, Route) and r.path in pages), len(routes))
    routes[:] = [r for r in routes if not (isinstance(r, Route) and r.path in pages)]

    def urls(request: Request) -> tuple[str, str]:
        root = request.scope.get("root_path", "").rstrip("/")
        return root + openapi_url, root + assets

    async def swagger_ui(request: Request) -> HTMLResponse:
        spec, static = urls(request)
        redirect = app.swagger_ui_oauth2_redirect_url
        page = get_swagger_ui_html(
            openapi_url=spec,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{static}/swagger-ui-bundle.js",
            swagger_css_url=f"{static}/swagger-ui.css",
            swagger_favicon_url=f"{static}/favicon.png",
            oauth2_redirect_url=(request.scope.get("root_path", "").rstrip("/") + redirect)
            if redirect
            else None,
            init_oauth=app.swagger_ui_init_oauth,
            # no badge from validator.swagger.io: it would send this server's spec URL out
            swagger_ui_parameters={"validatorUrl": None, **(app.swagger_ui_parameters or {})},
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    async def redoc(request: Request) -> HTMLResponse:
        spec, static = urls(request)
        page = get_redoc_html(
            openapi_url=spec,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{static}/redoc.standalone.js",
            redoc_favicon_url=f"{static}/favicon.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    added: list[BaseRoute] = [Mount(assets, app=StaticFiles(packages=[ASSETS_PACKAGE]), name="docs-assets")]
    if app.docs_url:
        added.append(Route(app.docs_url, swagger_ui, include_in_schema=False))
    if app.redoc_url:
        added.append(Route(app.redoc_url, redoc, include_in_schema=False))
    routes[at:at] = added
