"""Bad input gets a clear 4xx and loses nothing: no 500, no leaked session slot."""

from __future__ import annotations

import re

import httpx
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack

from tests.rtc_client import NumberedTrack, VideoClient, pin_loopback


async def real_offer_sdp(kind: str = "video") -> str:
    pin_loopback()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.createDataChannel("text")
    pc.addTrack(NumberedTrack() if kind == "video" else AudioStreamTrack())
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


@pytest.fixture
async def http(test_server):
    async with httpx.AsyncClient(base_url=test_server.base_url, timeout=20) as client:
        yield client


async def active(http: httpx.AsyncClient) -> int:
    return (await http.get("/healthz")).json()["streams"]["video"]


def assert_refusal(resp: httpx.Response, status: int, code: str, text: str | None = None) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["status"] == "failed" and body["meta"]["error"] == code, body
    assert body["message"], body
    if text:
        assert text in body["message"], body["message"]


async def test_malformed_offer_requests_get_clear_4xx(http):
    offer = "/video/webrtc/offer"
    resp = await http.post(offer, content=b"{not json", headers={"content-type": "application/json"})
    assert_refusal(resp, 422, "invalid_request", "not valid JSON")
    assert_refusal(await http.post(offer, json={"type": "answer", "webrtc_id": "a", "sdp": "x"}), 422,
                   "invalid_request", "type")  # fmt: skip
    assert_refusal(await http.post(offer, json={"type": "offer"}), 422, "invalid_request", "webrtc_id")
    assert_refusal(await http.post(offer, json={"type": "offer", "webrtc_id": "a b/c", "sdp": "x"}), 422,
                   "invalid_request")  # fmt: skip
    assert_refusal(await http.post(offer, json=[1, 2]), 422, "invalid_request")
    assert_refusal(await http.post(offer, json={"type": "offer", "webrtc_id": "g", "sdp": "garbage"}), 400,
                   "invalid_sdp", "no media")  # fmt: skip
    assert_refusal(await http.post(offer, json={"type": "offer", "webrtc_id": "g"}), 400, "invalid_sdp")
    audio = await real_offer_sdp("audio")
    assert_refusal(await http.post(offer, json={"type": "offer", "webrtc_id": "au", "sdp": audio}), 400,
                   "invalid_sdp", "video only")  # fmt: skip
    video = await real_offer_sdp()
    no_fp = re.sub(r"a=fingerprint:.*\r\n", "", video)
    assert_refusal(await http.post(offer, json={"type": "offer", "webrtc_id": "fp", "sdp": no_fp}), 400,
                   "invalid_sdp", "fingerprint")  # fmt: skip
    unbundled = video.replace("a=mid:0", "a=mid:x", 1)  # BUNDLE 0 1 names a section that is not there
    assert_refusal(await http.post(offer, json={"type": "offer", "webrtc_id": "bu", "sdp": unbundled}), 400,
                   "invalid_sdp", "BUNDLE")  # fmt: skip
    # recvonly is a session that plays a server-side source (tests/test_video_sources.py); sendonly
    # would get nothing back
    one_way = video.replace("a=sendrecv", "a=sendonly")
    resp = await http.post(offer, json={"type": "offer", "webrtc_id": "ow", "sdp": one_way})
    assert_refusal(resp, 400, "invalid_sdp", "does not receive")
    cand = {"type": "ice-candidate", "webrtc_id": "nobody", "candidate": {"candidate": "candidate:1 1 udp"}}
    assert_refusal(await http.post(offer, json=cand), 400, "invalid_candidate_format")
    huge = {"type": "offer", "webrtc_id": "big", "sdp": "v=0\r\n" + "a=x\r\n" * 40_000}
    assert_refusal(await http.post(offer, json=huge), 413, "body_too_large")


async def test_offers_that_fail_inside_aiortc_never_leak_a_slot(http, test_server):
    """Stock fastrtc registers the peer before applying the offer and leaks it when that raises."""
    video = await real_offer_sdp()
    last_setup = video.rindex("a=setup:")  # drop the data channel's DTLS role: parses, cannot be applied
    broken = video[:last_setup] + video[video.index("\r\n", last_setup) + 2 :]
    before = await active(http)
    for i in range(5):  # more than the limit of 3
        resp = await http.post(
            "/video/webrtc/offer", json={"type": "offer", "webrtc_id": f"b{i}", "sdp": broken}
        )
        assert_refusal(resp, 400, "invalid_offer")
    assert await active(http) == before
    clients = [VideoClient(test_server.base_url) for _ in range(3)]
    try:
        for c in clients:
            await c.connect()
        extra = VideoClient(test_server.base_url)
        with pytest.raises(RuntimeError, match="503.*concurrency_limit_reached"):
            await extra.connect()
        await extra.close()
        dup = await http.post(
            "/video/webrtc/offer", json={"type": "offer", "webrtc_id": clients[0].webrtc_id, "sdp": video}
        )
        assert dup.status_code in (409, 503), dup.text
        for c in clients:
            await c.wait_frames(5)
    finally:
        for c in clients:
            await c.close()


async def test_input_and_outputs_validate_ids_and_values(http, test_server):
    assert_refusal(await http.post("/video/input", json={"webrtc_id": "nope", "filter": "flip"}), 404,
                   "unknown_connection", "nope")  # fmt: skip
    assert_refusal(await http.get("/video/outputs", params={"webrtc_id": "nope"}), 404, "unknown_connection")
    assert_refusal(await http.get("/video/outputs"), 422, "invalid_request", "webrtc_id")
    client = VideoClient(test_server.base_url)
    await client.connect()
    try:
        resp = await client.set_input(conf_threshold=1.5)
        assert_refusal(resp, 422, "invalid_input", "conf_threshold")
        resp = await client.set_input(filter="sepia")
        assert_refusal(resp, 422, "invalid_input", "unknown filter 'sepia'")
        assert "cartoon" in resp.json()["message"]
        assert_refusal(await client.set_input(detect="maybe"), 422, "invalid_input", "detect")
        assert_refusal(await client.set_input(colour="red"), 422, "invalid_input", "colour")
        ok = await client.set_input(filter="gray", conf_threshold=0.5)
        assert ok.status_code == 200 and ok.json()["params"] == {
            "filter": "gray", "detect": False, "conf_threshold": 0.5,
            # the server-side source's inputs (streams.sources): the camera until told otherwise
            "source": "camera", "url": None, "file": None, "fps": None, "loop": True, "seek": None,
        }  # fmt: skip
    finally:
        await client.close()


async def test_concurrent_offers_reusing_one_id_get_one_session_and_409s(http):
    """Stock fastrtc (and this server before one session record) answered all of them: orphan peers
    past every limit. The session is registered before anything awaits, so only the first gets in."""
    import asyncio
    import time

    from aiortc import RTCSessionDescription

    before = await active(http)
    pin_loopback()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.createDataChannel("text")
    pc.addTrack(NumberedTrack())
    await pc.setLocalDescription(await pc.createOffer())
    body = {"type": "offer", "webrtc_id": f"dup-{time.monotonic_ns()}", "sdp": pc.localDescription.sdp}
    try:
        answers = await asyncio.gather(*(http.post("/video/webrtc/offer", json=body) for _ in range(10)))
        assert sorted(r.status_code for r in answers) == [200] + [409] * 9, [r.text for r in answers]
        for refused in (r for r in answers if r.status_code == 409):
            assert_refusal(refused, 409, "connection_already_exists")
        assert await active(http) == before + 1
        accepted = next(r for r in answers if r.status_code == 200).json()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=accepted["sdp"], type=accepted["type"]))
        deadline = time.monotonic() + 10
        while pc.connectionState != "connected" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert pc.connectionState == "connected"
    finally:
        await pc.close()
    deadline = time.monotonic() + 10
    while await active(http) != before and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert await active(http) == before, "the one session ended with its client"
