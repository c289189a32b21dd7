"""Access control through the real protocol: a server started with AUTH_TOKEN, ALLOWED_ORIGINS and a
fixed INSTANCE_ID; every session route refuses without a credential and works with one."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import httpx
import pytest
import websockets
from twilio.request_validator import RequestValidator

from tests.rtc_client import VideoClient, issue_session
from tests.server_process import ServerProcess
from tests.ws_client import AudioSocketClient

TOKEN = "test-access-token-1-long-enough"
GOOD_ORIGIN = "https://good.example"


@pytest.fixture(scope="module")
def auth_server() -> Iterator[ServerProcess]:
    with ServerProcess(
        env={
            "AUTH_TOKEN": TOKEN,
            "ALLOWED_ORIGINS": GOOD_ORIGIN,
            "INSTANCE_ID": "alpha",
            "TWILIO_AUTH_TOKEN": "twilio-secret",
            "ASSISTANT_ENABLED": "false",
            # for test_security: a pretend proxy (so a request can come from elsewhere), 127.0.0.2 denied
            "FORWARDED_ALLOW_IPS": "127.0.0.1",
            "ICE_DENIED_PEERS": "169.254.0.0/16,127.0.0.2/32",
        },
        log_name="auth-server",
    ) as proc:
        yield proc


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def offer_body(webrtc_id: str) -> dict[str, str]:
    return {"type": "offer", "webrtc_id": webrtc_id, "sdp": "v=0"}


SESSION_ROUTES = [
    ("POST", "/api/session", None),
    ("GET", "/api/rtc-config", None),
    ("GET", "/metrics", None),
    *[
        route
        for stream in ("video", "generate", "chat")
        for route in (
            ("POST", f"/{stream}/webrtc/offer", offer_body("alpha.0123456789abcdef0123456789abcdef")),
            ("POST", f"/{stream}/input", {"webrtc_id": "someone-else"}),
            ("GET", f"/{stream}/outputs?webrtc_id=someone-else", None),
        )
    ],
]


@pytest.mark.parametrize(("method", "path", "body"), SESSION_ROUTES)
def test_every_session_route_refuses_without_a_token(auth_server, method, path, body):
    for headers in ({}, bearer("wrong-token")):
        resp = httpx.request(method, auth_server.base_url + path, json=body, headers=headers)
        assert resp.status_code == 401, resp.text
        assert resp.json()["meta"]["error"] == "unauthorized"
        assert "token" in resp.json()["message"]


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/"])
def test_public_routes_stay_open(auth_server, path):
    assert httpx.get(auth_server.base_url + path).status_code == 200


async def test_a_websocket_without_a_token_is_refused_before_the_handshake(auth_server):
    url = auth_server.base_url.replace("http", "ws") + "/chat/websocket/offer"
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(url):
            pass
    assert refused.value.response.status_code == 403


async def test_a_phone_call_without_a_token_is_refused_at_start(auth_server):
    """Twilio sends the TwiML's token in `start`, after the handshake: refused there, by the close."""
    url = auth_server.base_url.replace("http", "ws") + "/chat/telephone/handler"
    async with AudioSocketClient(url, phone=True) as client:
        await client.start()
        code = await client.closed()
    assert code == 1008
    assert client.refusal() == "unauthorized", (client.events, client.close_reason)


async def test_a_session_works_with_its_session_token(auth_server):
    webrtc_id, session_token = await issue_session(auth_server.base_url, TOKEN)
    assert re.fullmatch(r"alpha\.[0-9a-f]{32}", webrtc_id)
    assert session_token
    client = VideoClient(
        auth_server.base_url, webrtc_id=webrtc_id, token=session_token, width=320, height=240
    )
    try:
        await client.connect()
        await client.wait_frames(10)
        resp = await client.set_input(filter="gray")
        assert resp.status_code == 200, resp.text
        # EventSource cannot send headers: the session token goes in the query string.
        url = f"{auth_server.base_url}/video/outputs?webrtc_id={webrtc_id}&token={session_token}"
        async with httpx.AsyncClient(timeout=10) as http, http.stream("GET", url) as resp:
            assert resp.status_code == 200
            filters = []
            async for line in resp.aiter_lines():
                if line.startswith("data:"):
                    filters.append(json.loads(line[5:])["params"]["filter"])
                    if filters[-1] == "gray" or len(filters) > 20:
                        break
            assert filters[-1] == "gray", filters
        rtc_config = f"{auth_server.base_url}/api/rtc-config?webrtc_id={webrtc_id}"
        config = httpx.get(rtc_config, headers=bearer(session_token))
        assert config.status_code == 200 and "iceServers" in config.json()
        forged = f"{int(time.time()) + 600}.{'A' * 43}"  # well-formed, unexpired, not signed by us
        assert httpx.get(rtc_config, headers=bearer(forged)).status_code == 401
        assert httpx.get(rtc_config.split("?")[0], headers=bearer(session_token)).status_code == 401
    finally:
        await client.close()


async def test_a_session_token_drives_only_its_own_session(auth_server):
    mine, my_token = await issue_session(auth_server.base_url, TOKEN)
    theirs, _ = await issue_session(auth_server.base_url, TOKEN)
    client = VideoClient(auth_server.base_url, webrtc_id=theirs, token=TOKEN, width=320, height=240)
    try:
        await client.connect()  # the operator's own token drives any session (servers, tests)
        await client.wait_frames(5)
        for method, path, body in (
            ("POST", f"/video/input?webrtc_id={theirs}", {"webrtc_id": theirs, "filter": "gray"}),
            ("GET", f"/video/outputs?webrtc_id={theirs}", None),
            ("POST", f"/video/webrtc/offer?webrtc_id={theirs}", offer_body(theirs)),
        ):
            resp = httpx.request(method, auth_server.base_url + path, json=body, headers=bearer(my_token))
            assert resp.status_code == 403, (path, resp.text)
            assert resp.json()["meta"]["error"] == "forbidden"
    finally:
        await client.close()


def test_ids_of_another_instance_and_mismatched_ids_are_refused(auth_server):
    other = "beta.0123456789abcdef0123456789abcdef"
    resp = httpx.post(f"{auth_server.base_url}/video/input", json={"webrtc_id": other}, headers=bearer(TOKEN))
    assert resp.status_code == 421
    assert resp.json()["meta"]["error"] == "wrong_instance"
    assert "'beta'" in resp.json()["message"]
    resp = httpx.post(
        f"{auth_server.base_url}/video/input?webrtc_id=alpha.x",
        json={"webrtc_id": "alpha.y"},
        headers=bearer(TOKEN),
    )
    assert resp.status_code == 400 and "query string" in resp.json()["message"]


def test_browsers_from_other_origins_are_refused(auth_server):
    url = f"{auth_server.base_url}/api/session"
    own_origin = auth_server.base_url
    for origin, status in (("https://evil.example", 403), (GOOD_ORIGIN, 200), (own_origin, 200)):
        resp = httpx.post(url, headers={"Origin": origin, **bearer(TOKEN)})
        assert resp.status_code == status, (origin, resp.text)
    assert "evil.example" in httpx.post(url, headers={"Origin": "https://evil.example"}).json()["message"]


async def test_websocket_from_another_origin_is_closed(auth_server):
    url = auth_server.base_url.replace("http", "ws") + "/chat/websocket/offer"
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(url, origin="https://evil.example"):  # type: ignore[arg-type]
            pass
    assert refused.value.response.status_code == 403


def rebinding_headers(server: ServerProcess, name: str = "rebind.attacker.test") -> dict[str, str]:
    """What a page on the attacker's name sends once that name resolves to this server: its own
    origin, and the name in the Host header."""
    port = server.base_url.rsplit(":", 1)[1]
    return {"Host": f"{name}:{port}", "Origin": f"http://{name}:{port}", "Sec-Fetch-Site": "same-origin"}


def test_a_dns_rebinding_page_is_refused_by_its_host_name(auth_server, server):
    for proc, creds in ((auth_server, bearer(TOKEN)), (server, {})):  # with ALLOWED_ORIGINS and without
        resp = httpx.post(f"{proc.base_url}/api/session", headers={**rebinding_headers(proc), **creds})
        assert resp.status_code == 403, resp.text
        assert (
            resp.json()["meta"]["error"] == "host_not_allowed" and "ALLOWED_HOSTS" in resp.json()["message"]
        )
        page = httpx.get(f"{proc.base_url}/", headers={**rebinding_headers(proc), "Sec-Fetch-Site": "none"})
        assert page.status_code == 403, "even the page: a navigation carries Sec-Fetch-Site"
    port = server.base_url.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):  # names no one else's DNS can rebind
        own = {"Host": host, "Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"}
        assert httpx.post(f"{server.base_url}/api/session", headers=own).status_code == 200, host
    good = rebinding_headers(auth_server, "good.example") | {"Origin": GOOD_ORIGIN}
    resp = httpx.post(f"{auth_server.base_url}/api/session", headers={**good, **bearer(TOKEN)})
    assert resp.status_code == 200, "the hosts of ALLOWED_ORIGINS are known names"
    assert (
        httpx.post(f"{server.base_url}/api/session", headers={"Host": "rebind.attacker.test"}).status_code
        == 200
    ), "servers and curl send neither Origin nor Sec-Fetch-Site: not browsers, not checked"


async def test_a_dns_rebinding_page_cannot_open_a_websocket(server):
    url = server.base_url.replace("http", "ws") + "/chat/websocket/offer"
    headers = rebinding_headers(server)
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(
            url, origin=headers["Origin"], additional_headers={"Host": headers["Host"]}
        ):  # type: ignore[arg-type]
            pass
    assert refused.value.response.status_code == 403


async def test_websocket_and_phone_work_with_tokens(auth_server):
    base = auth_server.base_url
    webrtc_id, session_token = await issue_session(base, TOKEN)
    ws_url = f"{base.replace('http', 'ws')}/chat/websocket/offer?webrtc_id={webrtc_id}&token={session_token}"
    async with AudioSocketClient(ws_url, session_id=webrtc_id) as client:
        await client.start()
        await client.speak(None, seconds_of_silence=0.5)
        assert httpx.get(f"{base}/healthz").json()["streams"]["chat"] == 1
        assert not [m for _, m in client.events if m.get("event") == "error"], client.events

    webhook, form = f"{base}/chat/telephone/incoming", {"CallSid": "CA1"}
    signature = RequestValidator("twilio-secret").compute_signature(webhook, form)
    twiml = httpx.post(webhook, data=form, headers={"X-Twilio-Signature": signature}).text
    token = re.search(r'<Parameter name="token" value="([^"]+)"', twiml)
    assert token, twiml
    replay = httpx.post(webhook, data=form, headers={"X-Twilio-Signature": signature})
    assert replay.status_code == 409 and replay.json()["meta"]["error"] == "call_already_answered", (
        "a captured signed webhook mints no second stream token"
    )
    phone_url = f"{base.replace('http', 'ws')}/chat/telephone/handler"
    async with AudioSocketClient(phone_url, phone=True, start_parameters={"token": token[1]}) as call:
        await call.start()
        await call.speak(None, seconds_of_silence=0.5)
        assert not call.twilio_violations(), call.events
