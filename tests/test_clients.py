"""Clients we did not write (issue 14): what fastrtc's own clients and other origins expect."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import websockets
from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack

from server.config import Settings
from streams import Stream
from streams.runtime import SessionBudget
from tests.rtc_client import VideoClient
from tests.server_process import ServerProcess

OTHER_ORIGIN = "http://127.0.0.1:9"  # a page served elsewhere (nothing needs to listen there)


@pytest.fixture(scope="module")
def cors_server():
    with ServerProcess(env={"ALLOWED_ORIGINS": OTHER_ORIGIN}, log_name="cors") as proc:
        yield proc


async def offer_sdp_and_candidates() -> tuple[RTCPeerConnection, str, list[str]]:
    """A real aiortc offer with its candidates taken out, as a trickling browser sends it."""
    pc = RTCPeerConnection()
    pc.addTrack(VideoStreamTrack())
    pc.createDataChannel("text")
    await pc.setLocalDescription(await pc.createOffer())
    lines = pc.localDescription.sdp.split("\r\n")
    candidates = [line[2:] for line in lines if line.startswith("a=candidate:")]
    bare = "\r\n".join(line for line in lines if not line.startswith(("a=candidate:", "a=end-of-candidates")))
    return pc, bare, candidates


def candidate_body(webrtc_id: str, candidate: str) -> dict:
    return {"type": "ice-candidate", "webrtc_id": webrtc_id,
            "candidate": {"candidate": candidate, "sdpMid": "0", "sdpMLineIndex": 0}}  # fmt: skip


async def test_trickled_candidates_for_a_live_session_get_fastrtcs_success(server):
    client = VideoClient(server.base_url, width=320, height=240)
    try:
        await client.connect()
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            _, _, candidates = await offer_sdp_and_candidates()
            resp = await http.post(
                "/video/webrtc/offer", json=candidate_body(client.webrtc_id, candidates[0])
            )
            assert (resp.status_code, resp.json()) == (200, {"status": "success"})
            end = await http.post("/video/webrtc/offer", json=candidate_body(client.webrtc_id, ""))
            assert (end.status_code, end.json()) == (200, {"status": "success"}), "end of candidates"
            bad = await http.post(
                "/video/webrtc/offer", json=candidate_body(client.webrtc_id, "candidate:1 1 udp")
            )
            assert bad.status_code == 400 and bad.json()["meta"]["error"] == "invalid_candidate_format"
            metrics = (await http.get("/metrics")).text
        assert 'rt_offers_total{outcome="candidate",stream="video"}' not in metrics, (
            "candidates are not offers"
        )
        assert 'rt_ice_candidates_total{outcome="applied",stream="video"}' in metrics
    finally:
        await client.close()


async def test_candidates_posted_before_their_offer_are_held_and_applied():
    """Browsers trickle in parallel with the offer; stock fastrtc drops what comes first."""
    stream = Stream(lambda frame: frame, modality="video", mode="send-receive", name="early")
    stream.join(SessionBudget(max_sessions=None, max_pending=4), pending_timeout_s=20)
    pc, bare_sdp, candidates = await offer_sdp_and_candidates()
    assert candidates, "aiortc gathered no candidate"
    try:
        for candidate in candidates:
            body = candidate_body("early-1", candidate)["candidate"]
            assert await stream.add_candidate("early-1", body, client="127.0.0.1") == {"status": "success"}
        answer = await stream.offer("early-1", bare_sdp)
        session = stream.sessions["early-1"]
        transceiver = session.pc.getTransceivers()[0]
        remote = transceiver.receiver.transport.transport.getRemoteCandidates()
        assert len(remote) == len(candidates), remote
        await pc.setRemoteDescription(RTCSessionDescription(**answer))
    finally:
        await pc.close()
        await stream.close_all("test_over")
    assert len(stream.early_candidates) == 0


def test_held_candidates_are_bounded_and_expire():
    from streams.candidates import MAX_PER_SESSION, EarlyCandidates, parse_candidate
    from streams.runtime import OfferRejected

    held = EarlyCandidates(hold_s=0.2)
    one = parse_candidate({"candidate": "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host"})
    for _ in range(MAX_PER_SESSION):
        held.hold("a", one)
    with pytest.raises(OfferRejected, match="more than 32 candidates before the offer"):
        held.hold("a", one)
    for i in range(200):
        held.hold(f"id-{i}", one)
    assert len(held) <= 128
    time.sleep(0.3)
    assert held.take("id-199") == [] and len(held) == 0


async def test_outputs_are_named_output_events_as_fastrtcs_clients_expect(server):
    client = VideoClient(server.base_url, width=320, height=240)
    try:
        await client.connect()
        query = {"webrtc_id": client.webrtc_id}
        lines: list[str] = []
        async with (
            httpx.AsyncClient(base_url=server.base_url, timeout=10) as http,
            http.stream("GET", "/video/outputs", params=query) as resp,
        ):
            async for line in resp.aiter_lines():
                lines.append(line)
                if line.startswith("data: "):
                    break
        assert lines[-2:] == ["event: output", lines[-1]], lines
    finally:
        await client.close()


@pytest.mark.parametrize("path", ["/webrtc/offer", "/input_hook", "/outputs"])
def test_fastrtcs_root_routes_say_which_route_to_use(server, path):
    resp = httpx.post(server.base_url + path, json={})
    assert resp.status_code == 404, resp.text
    body = resp.json()
    assert body["meta"]["error"] == "unknown_route"
    suffix = {"/input_hook": "/input"}.get(path, path)
    assert f"/video{suffix}" in body["message"] and f"/video{suffix}" in body["meta"]["routes"]


async def test_fastrtcs_root_websocket_says_which_route_to_use(server):
    async with websockets.connect(server.base_url.replace("http", "ws") + "/websocket/offer") as ws:
        message = await asyncio.wait_for(ws.recv(), 5)
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
    assert "/chat/websocket/offer" in message and ws.close_code == 1008


def test_a_listed_origin_gets_cors_and_its_preflight_answered(cors_server):
    preflight = httpx.options(
        cors_server.base_url + "/video/webrtc/offer",
        headers={"Origin": OTHER_ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"},
    )  # fmt: skip
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] == OTHER_ORIGIN
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in preflight.headers, "tokens, never cookies"
    health = httpx.get(cors_server.base_url + "/healthz", headers={"Origin": OTHER_ORIGIN})
    assert health.headers["access-control-allow-origin"] == OTHER_ORIGIN


def test_an_unlisted_origin_is_refused_even_its_preflight(cors_server):
    stranger = "http://127.0.0.1:10"
    preflight = httpx.options(
        cors_server.base_url + "/video/webrtc/offer",
        headers={"Origin": stranger, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 403 and "access-control-allow-origin" not in preflight.headers
    assert preflight.json()["meta"]["error"] == "origin_not_allowed"


def test_cors_is_off_by_default(server):
    resp = httpx.get(server.base_url + "/healthz", headers={"Origin": OTHER_ORIGIN})
    assert resp.status_code == 200 and "access-control-allow-origin" not in resp.headers
    assert Settings().allowed_origins == []
