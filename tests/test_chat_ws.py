"""/chat over WebSocket (fastrtc's μ-law protocol) and over the phone (Twilio Media Streams)."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import statistics
import time

import httpx
import pytest
from twilio.request_validator import RequestValidator

from tests.audio_client import ChatClient, speech
from tests.test_chat_rtc import SENTENCE, wait_until
from tests.ws_client import AudioSocketClient

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def ws_url(server, path: str) -> str:
    return server.base_url.replace("http://", "ws://") + path


def chat_sessions(server) -> int:
    return httpx.get(f"{server.base_url}/healthz").json()["streams"]["chat"]


@pytest.mark.parametrize("phone", [False, True], ids=["websocket", "phone"])
async def test_echo_over_websocket_and_phone(server, phone):
    path = "/chat/telephone/handler" if phone else "/chat/websocket/offer"
    async with AudioSocketClient(ws_url(server, path), phone=phone) as client:
        await client.start()
        await client.speak(None, 0.3)
        ended = await client.speak(speech(SENTENCE), 1.0)
        assert await wait_until(lambda: client.audible_after(ended), 5), client.event_types()
        delay_ms = (client.audible_after(ended)[0] - ended) * 1000
        print(f"\n{'phone' if phone else 'websocket'}: end of speech -> first echo {delay_ms:.0f} ms")
        assert delay_ms < 1000
        assert chat_sessions(server) == 1
        if phone:  # Twilio gets only what it accepts; a mark follows the reply and was echoed
            assert not client.twilio_violations(), client.event_types()
            assert "mark" in client.event_types()
        else:  # fastrtc's clients get the handler's log messages
            logs = [m.get("data") for _, m in client.events if m.get("type") == "log"]
            assert logs.count("pause_detected") == 1, logs
        await client.send({"event": "stop"})
        assert await client.closed() == 1000
    assert client.refusal() == "stopped" and "error" not in client.event_types(), "a stop is not an error"
    assert await wait_until(lambda: chat_sessions(server) == 0, 3), "the session must be released"


async def timed_reports(url: str, until, timeout: float) -> list[tuple[float, dict]]:
    """A session's `/outputs` reports with their arrival times, until `until(reports)` holds."""
    reports: list[tuple[float, dict]] = []
    async with httpx.AsyncClient(timeout=timeout + 5) as http, http.stream("GET", url) as resp:
        deadline = time.monotonic() + timeout
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                reports.append((time.monotonic(), json.loads(line[6:])))
                if until([r for _, r in reports]):
                    break
            if time.monotonic() > deadline:
                break
    return reports


@pytest.mark.serial
async def test_a_phone_reply_lasts_until_twilio_says_it_was_played(server):
    """A phone buffers what it is sent: the reply is "speaking" (and can be talked over) until the
    mark after its audio comes back, not when the server sent its last chunk."""
    async with AudioSocketClient(
        ws_url(server, "/chat/telephone/handler"), phone=True, mark_delay_s=1.5
    ) as call:
        await call.start()
        states = asyncio.create_task(
            timed_reports(
                f"{server.base_url}/chat/outputs?webrtc_id={call.session_id}",
                lambda events: (
                    [e.get("state") for e in events if e.get("type") == "state"][-2:]
                    == ["speaking", "listening"]
                ),
                timeout=15,
            )
        )
        await call.speak(None, 0.3)
        ended = await call.speak(speech(SENTENCE), 1.0)
        events = await states
        assert call.audible_after(ended), call.event_types()
        last_audio = call.media[-1][0]
        marks = [t for t, m in call.events if m.get("event") == "mark"]
        assert marks and marks[-1] >= call.audible_after(ended)[-1] - 0.05, "a mark follows the reply"
        listening_at = [t for t, e in events if e.get("state") == "listening"][-1]
        assert listening_at - last_audio >= 1.4, (
            f"listening {listening_at - last_audio:.2f} s after the last audio"
        )


@pytest.mark.parametrize("rate", [16_000, 48_000])
async def test_websocket_clients_state_their_rates_and_get_speech_back_at_them(server, rate):
    """fastrtc's WebSocket docs use 48 kHz, the README 16 kHz: `start` says which, both ways."""
    url = ws_url(server, "/chat/websocket/offer")
    async with AudioSocketClient(url, input_rate=rate, output_rate=rate) as client:
        await client.start()
        await client.speak(None, 0.3)
        ended = await client.speak(speech(SENTENCE), 1.0)
        assert await wait_until(lambda: client.audible_after(ended), 5), client.event_types()
        await asyncio.sleep(0.5)
        per_message = statistics.median(client.media_sizes)
        assert abs(per_message * 50 - rate) <= 100, f"20 ms messages of {per_message} samples at {rate} Hz"


async def test_a_websocket_start_with_an_impossible_rate_is_refused_clearly(server):
    url = ws_url(server, "/chat/websocket/offer")
    async with AudioSocketClient(url, input_rate=1_000_000) as client:
        await client.start()
        assert await client.closed() == 1008
    assert client.refusal() == "protocol_error"
    assert "input_sample_rate must be an integer from 8000 to 48000" in client.events[-1][1]["message"]
    assert await wait_until(lambda: chat_sessions(server) == 0, 3)


async def test_phone_barge_in_sends_clear(server):
    async with AudioSocketClient(ws_url(server, "/chat/telephone/handler"), phone=True) as client:
        await client.start()
        ended = await client.speak(
            speech("one two three four five six seven eight nine ten", words_per_minute=140), 1.0
        )
        assert await wait_until(lambda: client.audible_after(ended), 5), (
            client.event_types(),
            len(client.media),
        )
        await asyncio.sleep(0.6)
        started = time.monotonic()
        await client.speak(speech("wait a moment"), 0.5)
        clears = [
            t
            for t, m in client.events
            if m.get("event") == "clear" and m.get("streamSid") == client.session_id
        ]
        assert clears, client.event_types()
        print(
            f"\nphone barge-in: clear sent {(clears[0] - started) * 1000:.0f} ms after the new speech began"
        )
        assert clears[0] - started < 0.6  # generous: CI load


async def test_incoming_call_twiml_keeps_scheme_host_and_port(server, test_server):
    resp = httpx.post(f"{server.base_url}/chat/telephone/incoming", data={"CallSid": "CA1", "From": "+1555"})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/xml")
    assert f'url="ws://127.0.0.1:{server.port}/chat/telephone/handler"' in resp.text, resp.text
    # with TWILIO_AUTH_TOKEN set, the signature is required and checked
    url = f"{test_server.base_url}/chat/telephone/incoming"
    params = {"CallSid": "CA2", "From": "+1555"}
    assert httpx.post(url, data=params).status_code == 403
    assert httpx.post(url, data=params, headers={"X-Twilio-Signature": "forged"}).status_code == 403
    good = RequestValidator("test-token").compute_signature(url, params)
    ok = httpx.post(url, data=params, headers={"X-Twilio-Signature": good})
    assert ok.status_code == 200 and "<Connect><Stream" in ok.text


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([{"event": "media", "media": {"payload": "AAAA"}}], "media before start"),
        (["{not json"], "not JSON"),
        ([[1, 2, 3]], "JSON object"),
        ([{"event": "start"}], "websocket_id"),
        (
            [{"event": "start", "websocket_id": "bad-b64"}, {"event": "media", "media": {"payload": "%%%"}}],
            "base64",
        ),
        ([{"event": "start", "websocket_id": "no-media"}, {"event": "media"}], "media object"),
        ([{"event": "start", "websocket_id": "weird"}, {"event": "dance"}], "unknown event"),
        (
            [
                {"event": "start", "websocket_id": "huge"},
                {"event": "media", "media": {"payload": "A" * 200_000}},
            ],
            "over",
        ),
    ],
)
async def test_bad_websocket_input_gets_an_error_and_a_clean_close(server, messages, expected):
    async with AudioSocketClient(ws_url(server, "/chat/websocket/offer")) as client:
        for message in messages:
            await client.ws.send(message if isinstance(message, str) else __import__("json").dumps(message))
        code = await client.closed()
        errors = [m for _, m in client.events if m.get("event") == "error"]
        assert errors and expected in errors[-1]["message"], (errors, client.event_types())
        assert code in (1008, 1009), code
    assert await wait_until(lambda: chat_sessions(server) == 0, 3), "no session may be left behind"


async def test_websocket_sessions_count_against_the_limit_and_obey_the_time_limit(test_server):
    url = ws_url(test_server, "/chat/websocket/offer")
    async with AudioSocketClient(url) as a, AudioSocketClient(url) as b, AudioSocketClient(url) as c:
        await a.start()
        await b.start()
        assert await wait_until(lambda: chat_sessions(test_server) == 2, 3)
        await c.start()
        assert await c.closed() == 1013
        refusal = [m for _, m in c.events if m.get("event") == "error"][-1]
        assert refusal["meta"] == {"error": "concurrency_limit_reached", "limit": 2}
        rtc = ChatClient(test_server.base_url)  # WebRTC is refused too while sockets hold the slots
        with pytest.raises(RuntimeError, match="concurrency_limit_reached"):
            await rtc.connect()
        await rtc.close()
        # CHAT_TIME_LIMIT_S=4 on this server: both sessions end by themselves
        assert await a.closed(timeout=8) == 1000
        assert [m for _, m in a.events if m.get("event") == "error"][-1]["meta"][
            "error"
        ] == "time_limit_reached"
    assert await wait_until(lambda: chat_sessions(test_server) == 0, 3)


async def test_websocket_session_takes_inputs_and_reports_outputs(server):
    async with AudioSocketClient(ws_url(server, "/chat/websocket/offer")) as client:
        await client.start()
        await asyncio.sleep(0.2)
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            resp = await http.post("/chat/input", json={"webrtc_id": client.session_id, "mode": "karaoke"})
            assert resp.status_code == 422
            resp = await http.post("/chat/input", json={"webrtc_id": client.session_id, "mode": "echo"})
            assert resp.status_code == 200


def test_mulaw_round_trip():
    import numpy as np

    from streams.telephony import decode_mulaw, encode_mulaw

    tone = (0.5 * np.sin(np.arange(1600) / 8000 * 2 * np.pi * 440)).astype(np.float32)
    back = decode_mulaw(encode_mulaw(tone, 8000, 8000))
    assert np.abs(back - tone).max() < 0.03
    assert len(base64.b64decode(encode_mulaw(tone, 16000, 8000))) == 800
