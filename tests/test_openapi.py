"""`/openapi.json` tells the truth (the real error shape, each stream's live inputs, the WebSocket
routes) and `/docs` and `/redoc` work without the internet. Apps are built in this process."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import Iterator
from typing import Annotated, Any

import httpx
import pytest
from aiortc import RTCPeerConnection
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from pydantic import Field
from starlette.websockets import WebSocketDisconnect

from server.app import create_app
from server.config import Settings
from server.errors import STATUS_BY_CODE, refusal
from server.openapi import REFUSALS_BY_CALLABLE, app_routes, callable_key, route_callables
from streams.filters import FILTERS
from streams.inputs import InvalidInput
from streams.stream import Stream

CHROMIUM = "/usr/bin/chromium"
ERROR_REF = "#/components/schemas/Error"
MASTER = "secret-token-long-enough-for-24"


def build_app(**settings: Any) -> FastAPI:
    return create_app(Settings(assistant_enabled=False, ice_host_addresses=["127.0.0.1"], **settings))


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    """The server as `python -m server` builds it (access tokens off), lifespan running."""
    with TestClient(build_app()) as http:
        yield http


@pytest.fixture(scope="module")
def strict() -> Iterator[TestClient]:
    """Every check on: access tokens, an origin allow-list, one new session a minute, Twilio signatures."""
    app = build_app(
        auth_token=MASTER,
        allowed_origins=["http://allowed.test"],
        offer_rate_per_minute=1,
        offer_rate_burst=1,
        twilio_auth_token="twilio-secret",
        instance_id="here",
    )
    with TestClient(app) as http:
        yield http


@pytest.fixture(scope="module")
def doc(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def validator(doc: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """A validator for `schema`, whose `#/components/...` references resolve in `doc`."""
    return Draft202012Validator({**schema, "components": doc["components"]})


def operation(doc: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    return doc["paths"][path][method.lower()]


def assert_documented(doc: dict[str, Any], method: str, path: str, response: httpx.Response) -> None:
    """The route documents this status, and the real body validates against what it documents."""
    documented = operation(doc, method, path)["responses"]
    status = str(response.status_code)
    assert status in documented, f"{method} {path} answered {status}, documented: {sorted(documented)}"
    schema = documented[status]["content"]["application/json"]["schema"]
    errors = [e.message for e in validator(doc, schema).iter_errors(response.json())]
    assert not errors, f"{method} {path} {status}: {response.json()} does not match its schema: {errors}"


def make_offer_sdp() -> str:
    """A real browser-like offer (video both ways and a data channel), from aiortc."""

    async def offer() -> str:
        pc = RTCPeerConnection()
        pc.addTransceiver("video", direction="sendrecv")
        pc.createDataChannel("data")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp

    return asyncio.run(offer())


# ---- the document ---------------------------------------------------------------------------


def test_openapi_json_is_a_valid_openapi_31_document(doc):
    validate_openapi(doc)
    assert doc["openapi"].startswith("3.1")
    assert "HTTPValidationError" not in str(doc), "FastAPI's 422 model is not what this server sends"


def test_every_error_response_is_the_error_model_with_its_codes(doc):
    seen_codes: set[str] = set()
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            errors = {s: r for s, r in op["responses"].items() if int(s) >= 400}
            assert "403" in errors, f"{method} {path}: origin_not_allowed is possible on every route"
            for status, response in errors.items():
                schema = response["content"]["application/json"]["schema"]
                assert schema["allOf"][0] == {"$ref": ERROR_REF}, (method, path, status)
                codes = schema["allOf"][1]["properties"]["meta"]["properties"]["error"]["enum"]
                assert codes and all(f"`{c}`" in response["description"] for c in codes)
                seen_codes.update(codes)
    assert set(STATUS_BY_CODE) - {"unsupported_transport", "connection_closed"} <= seen_codes
    # the model is exactly what the renderer writes
    error = validator(doc, {"$ref": ERROR_REF})
    body = refusal(503, "concurrency_limit_reached", "full", limit=8).body
    assert error.is_valid(json.loads(body))
    assert not error.is_valid({"status": "failed", "meta": {"error": "x"}, "message": "m", "detail": []})
    assert not error.is_valid({"detail": [{"loc": ["body"], "msg": "field required"}]})  # FastAPI's 422


def test_every_refusal_source_named_in_the_table_is_a_live_route_callable(client):
    """The table is keyed by the endpoints' and dependencies' names: a rename must not silently drop
    a route's codes from the document."""
    found = {
        callable_key(fn)
        for _, route in app_routes(client.app)
        if isinstance(route, APIRoute)
        for fn in route_callables(route)
    }
    assert set(REFUSALS_BY_CALLABLE) <= found, set(REFUSALS_BY_CALLABLE) - found


REFUSALS = [
    # (method, documented path, request path, request kwargs, status, code)
    ("POST", "/video/webrtc/offer", "/video/webrtc/offer",
     {"json": {"type": "offer", "webrtc_id": "doc-1", "sdp": "junk"}}, 400, "invalid_sdp"),
    ("POST", "/video/webrtc/offer", "/video/webrtc/offer", {"json": {"type": "nope"}}, 422, "invalid_request"),
    ("POST", "/video/webrtc/offer", "/video/webrtc/offer?webrtc_id=doc-2",
     {"json": {"type": "offer", "webrtc_id": "doc-1", "sdp": "junk"}}, 400, "invalid_request"),
    ("POST", "/video/webrtc/offer", "/video/webrtc/offer",
     {"json": {"type": "offer", "webrtc_id": "elsewhere." + "0" * 32, "sdp": "x"}}, 421, "wrong_instance"),
    ("POST", "/video/input", "/video/input", {"json": {"webrtc_id": "nobody"}}, 404, "unknown_connection"),
    ("POST", "/video/input", "/video/input", {"json": {"webrtc_id": "not an id!"}}, 422, "invalid_request"),
    ("POST", "/video/input", "/video/input",
     {"json": {"webrtc_id": "nobody", "pad": "x" * 70_000}}, 413, "body_too_large"),
    ("GET", "/video/outputs", "/video/outputs?webrtc_id=nobody", {}, 404, "unknown_connection"),
    ("GET", "/chat/outputs", "/chat/outputs", {}, 422, "invalid_request"),
    ("POST", "/video/upload", "/video/upload?webrtc_id=nobody",
     {"files": {"file": ("a.mp4", b"x", "video/mp4")}}, 404, "unknown_connection"),
    ("GET", "/video/media", "/video/media", {}, 422, "invalid_request"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "url", "kwargs", "status", "code"), REFUSALS)
def test_real_refusals_are_documented_for_their_route(client, doc, method, path, url, kwargs, status, code):
    response = client.request(method, url, **kwargs)
    assert (response.status_code, response.json()["meta"]["error"]) == (status, code), response.text
    assert_documented(doc, method, path, response)


def test_refusals_with_every_check_on_are_documented(strict, doc):
    master = {"Authorization": f"Bearer {MASTER}"}
    offer = {"type": "offer", "webrtc_id": "here." + "1" * 32, "sdp": "junk"}
    cases = [
        ("GET", "/metrics", strict.get("/metrics"), 401, "unauthorized"),
        ("POST", "/video/webrtc/offer", strict.post("/video/webrtc/offer", json=offer), 401, "unauthorized"),
        ("POST", "/video/input", strict.post("/video/input", json={"webrtc_id": "here." + "2" * 32},
                                             headers={"Authorization": "Bearer 123.not-for-this"}), 403, "forbidden"),
        ("GET", "/healthz", strict.get("/healthz", headers={"Origin": "http://elsewhere.test"}), 403,
         "origin_not_allowed"),
        ("GET", "/healthz", strict.get("/healthz", headers={"Origin": "http://testserver"}), 403,
         "host_not_allowed"),  # its own origin, by a name outside ALLOWED_HOSTS: DNS rebinding
        ("POST", "/chat/telephone/incoming", strict.post("/chat/telephone/incoming", data={"CallSid": "CA1"},
                                                         headers={"X-Twilio-Signature": "wrong"}), 403, "bad_signature"),
        ("POST", "/video/webrtc/offer", strict.post("/video/webrtc/offer", json=offer, headers=master), 400,
         "invalid_sdp"),  # the one new session this minute allows
        ("POST", "/video/webrtc/offer", strict.post("/video/webrtc/offer", json=offer, headers=master), 429,
         "rate_limited"),
    ]  # fmt: skip
    for method, path, response, status, code in cases:
        assert (response.status_code, response.json()["meta"]["error"]) == (status, code), response.text
        assert_documented(doc, method, path, response)
        if status == 429:
            documented = operation(doc, method, path)["responses"]["429"]
            assert "Retry-After" in documented["headers"] and int(response.headers["Retry-After"]) >= 1


def test_a_draining_server_refuses_as_documented(client, doc):
    sdp = make_offer_sdp()
    budget = client.app.state.budget
    budget.draining = True
    try:
        ready = client.get("/readyz")
        offer = client.post("/video/webrtc/offer", json={"type": "offer", "webrtc_id": "doc-3", "sdp": sdp})
    finally:
        budget.draining = False
    assert ready.status_code == 503 and ready.json()["meta"]["error"] == "shutting_down"
    assert_documented(doc, "GET", "/readyz", ready)
    assert offer.status_code == 503 and offer.json()["meta"]["error"] == "shutting_down"
    assert_documented(doc, "POST", "/video/webrtc/offer", offer)


def test_a_real_session_answers_as_documented(client, doc):
    """Answer, duplicate id, live input and a bad input: each body matches its documented schema."""
    sdp = make_offer_sdp()
    answer = client.post("/video/webrtc/offer", json={"type": "offer", "webrtc_id": "doc-live", "sdp": sdp})
    assert answer.status_code == 200, answer.text
    assert answer.json()["type"] == "answer"
    assert_documented(doc, "POST", "/video/webrtc/offer", answer)
    again = client.post("/video/webrtc/offer", json={"type": "offer", "webrtc_id": "doc-live", "sdp": sdp})
    assert again.status_code == 409 and again.json()["meta"]["error"] == "connection_already_exists"
    assert_documented(doc, "POST", "/video/webrtc/offer", again)

    applied = client.post("/video/input", json={"webrtc_id": "doc-live", "filter": "gray"})
    assert applied.status_code == 200 and applied.json()["params"]["filter"] == "gray"
    assert_documented(doc, "POST", "/video/input", applied)
    out_of_range = client.post("/video/input", json={"webrtc_id": "doc-live", "conf_threshold": 2})
    assert out_of_range.status_code == 422 and out_of_range.json()["meta"]["error"] == "invalid_input"
    assert_documented(doc, "POST", "/video/input", out_of_range)
    mislabelled = {**out_of_range.json(), "meta": {"error": "invalid_sdp"}}  # a code 422 never carries
    schema = operation(doc, "POST", "/video/input")["responses"]["422"]["content"]["application/json"][
        "schema"
    ]
    assert not validator(doc, schema).is_valid(mislabelled)


# ---- live inputs ----------------------------------------------------------------------------


def input_schema(doc: dict[str, Any], path: str) -> dict[str, Any]:
    ref = operation(doc, "POST", path)["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    return doc["components"]["schemas"][ref.rsplit("/", 1)[1]]


def test_video_input_schema_lists_filter_choices_and_threshold_range(doc):
    schema = input_schema(doc, "/video/input")
    props = schema["properties"]
    assert props["filter"]["enum"] == list(FILTERS) and props["filter"]["default"] == "none"
    assert props["conf_threshold"]["type"] == "number"
    assert (props["conf_threshold"]["minimum"], props["conf_threshold"]["maximum"]) == (0.0, 1.0)
    assert props["conf_threshold"]["default"] == 0.35
    assert props["detect"] == {"default": False, "title": "Detect", "type": "boolean"}
    assert schema["required"] == ["webrtc_id"] and schema["additionalProperties"] is False
    generate = input_schema(doc, "/generate/input")["properties"]
    assert generate["source"]["enum"] == ["pattern", "file"]
    assert {"minimum": 1, "maximum": 60, "type": "number"}.items() <= generate["fps"]["anyOf"][0].items()
    assert generate["width"]["multipleOf"] == 2 and generate["width"]["maximum"] == 1920
    assert input_schema(doc, "/chat/input")["properties"]["mode"]["enum"] == ["echo", "assistant"]


@pytest.mark.parametrize(
    ("stream", "change", "allowed"),
    [
        ("video", {"filter": "gray"}, True),
        ("video", {"filter": "sepia"}, False),
        ("video", {"conf_threshold": 0.9}, True),
        ("video", {"conf_threshold": 1.5}, False),
        ("video", {"zoom": 2}, False),
        ("generate", {"fps": 12}, True),
        ("generate", {"fps": 0}, False),
        ("generate", {"width": 641}, False),
        ("chat", {"mode": "echo"}, True),
        ("chat", {"mode": "shout"}, False),
    ],
)
def test_the_input_schema_allows_what_the_stream_accepts(client, doc, stream, change, allowed):
    schema = input_schema(doc, f"/{stream}/input")
    assert validator(doc, schema).is_valid({"webrtc_id": "a", **change}) is allowed
    inputs = client.app.state.streams[stream].inputs
    try:
        inputs.validate(inputs.defaults, change)
        accepted = True
    except InvalidInput:
        accepted = False
    assert accepted is allowed


# ---- WebSockets -----------------------------------------------------------------------------


def test_websocket_routes_are_described(client, doc):
    sockets = {s["path"]: s for s in doc["x-websockets"]}
    assert set(sockets) == {"/chat/websocket/offer", "/chat/telephone/handler", "/websocket/offer"}
    for path, socket in sockets.items():
        assert f"`WS {path}` ({socket['protocol']}): {socket['summary']}" in doc["info"]["description"]
    fastrtc, twilio = sockets["/chat/websocket/offer"], sockets["/chat/telephone/handler"]
    assert (fastrtc["protocol"], twilio["protocol"], sockets["/websocket/offer"]["protocol"]) == (
        "fastrtc", "twilio-media-streams", "hint"
    )  # fmt: skip
    handler = client.app.state.streams["chat"].handler
    start = fastrtc["client_messages"]["start"]["example"]
    assert (start["input_sample_rate"], start["output_sample_rate"]) == (
        handler.input_sample_rate, handler.output_sample_rate
    )  # fmt: skip
    assert {m["example"]["event"] for m in twilio["server_messages"].values()} == {"media", "mark", "clear"}

    # what the server really says to a bad client is the documented error event and close code
    with client.websocket_connect("/chat/websocket/offer") as ws:
        ws.send_json({"event": "media", "media": {"payload": ""}})
        event = ws.receive_json()
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    documented = fastrtc["server_messages"]["error"]["example"]
    assert set(event) == set(documented) and event["event"] == "error" and event["meta"]["error"]
    assert str(closed.value.code) in fastrtc["close_codes"] and closed.value.code == 1008


# ---- offline pages ----------------------------------------------------------------------------


def external_hosts(html: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"(?:https?:)?//([\w.-]+(?::\d+)?)", html)} - {"testserver"}


@pytest.mark.parametrize(("page", "assets"), [
    ("/docs", {"swagger-ui-bundle.js": "SwaggerUIBundle", "swagger-ui.css": ".swagger-ui", "favicon.png": ""}),
    ("/redoc", {"redoc.standalone.js": "Redoc", "favicon.png": ""}),
])  # fmt: skip
def test_docs_pages_name_no_external_host_and_serve_their_assets(client, page, assets):
    response = client.get(page)
    assert response.status_code == 200
    html = response.text
    assert external_hosts(html) == set(), html
    assert "fonts.googleapis" not in html and "cdn." not in html
    assert "img-src 'self' data:" in response.headers["content-security-policy"]
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert {u.rsplit("/", 1)[1] for u in urls} == set(assets), urls
    for url in urls:
        asset = client.get(url)
        name = url.rsplit("/", 1)[1]
        kind = {"js": "javascript", "css": "text/css", "png": "image/png"}[name.rsplit(".", 1)[1]]
        assert asset.status_code == 200 and kind in asset.headers["content-type"], (url, asset.headers)
        assert len(asset.content) > 1000, url
        if assets[name]:
            assert assets[name] in asset.text, url
    if page == "/docs":
        assert '"validatorUrl": null' in html  # no badge fetched from validator.swagger.io


@pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason="Debian chromium is not installed (make test installs it)"
)
def test_docs_render_in_a_browser_without_reaching_anything_else(client):
    """Chromium loads both pages with every request answered by this app in-process: any request to
    another host (a CDN, Google Fonts, ReDoc's logo, the validator badge) is recorded and refused."""
    from playwright.sync_api import Route, sync_playwright

    origin = "http://docs.test"
    outside: list[str] = []

    def answer(route: Route) -> None:
        url = route.request.url
        if not url.startswith(origin + "/"):
            outside.append(url)
            route.abort()
            return
        response = client.request(route.request.method, url.removeprefix(origin))
        route.fulfill(status=response.status_code, headers=dict(response.headers), body=response.content)

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            for page_path, rendered in (("/docs", ".opblock"), ("/redoc", "[data-section-id]")):
                context = browser.new_context()
                context.route("**/*", answer)
                page = context.new_page()
                page.goto(origin + page_path)
                page.wait_for_selector(rendered, timeout=20_000)
                page.wait_for_timeout(1000)  # late requests (images, fonts, workers)
                assert page.locator(rendered).count() >= 10, page_path
                context.close()
        finally:
            browser.close()
    assert outside == []


# ---- a fastrtc app's own FastAPI app (`Stream.mount`) -------------------------------------------


def test_a_mounted_stream_gets_the_same_docs(monkeypatch):
    monkeypatch.setenv("ICE_HOST_ADDRESSES", "127.0.0.1")

    def tint(frame, strength: Annotated[float, Field(ge=0, le=2)] = 1.0):
        return frame

    app = FastAPI(title="mine")
    Stream(tint, modality="video", mode="send-receive").mount(app)

    @app.get("/hello")
    def hello() -> dict[str, str]:
        return {"hello": "world"}

    http = TestClient(app)
    doc = http.get("/openapi.json").json()
    validate_openapi(doc)
    assert "/hello" in doc["paths"]  # routes added after mount() are there too
    props = input_schema(doc, "/input")["properties"]
    assert (props["strength"]["minimum"], props["strength"]["maximum"], props["strength"]["default"]) == (
        0,
        2,
        1.0,
    )
    refused = http.post("/input", json={"webrtc_id": "nobody"})
    assert refused.status_code == 404
    assert_documented(doc, "POST", "/input", refused)
    assert doc["x-websockets"] == []
    html = http.get("/docs").text
    assert external_hosts(html) == set() and "/docs/assets/swagger-ui-bundle.js" in html
    assert http.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
