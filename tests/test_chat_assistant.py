"""The assistant mode: real Whisper speech to text, real Piper speech, offline and LLM responders."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from streams.assistant import OfflineResponder, OpenAIChatResponder, PiperTTS, WhisperSTT
from streams.vad import resample
from tests.audio_client import speech
from tests.test_chat_rtc import wait_until
from tests.test_chat_ws import chat_sessions, ws_url
from tests.ws_client import AudioSocketClient

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


async def collect(agen) -> list[str]:
    return [s async for s in agen]


async def test_offline_responder_answers_simple_things_honestly():
    r = OfflineResponder(clock=lambda: datetime(2026, 11, 22, 14, 5))
    assert await collect(r.sentences("What time is it?", [])) == ["It is 14:05."]
    assert (await collect(r.sentences("hello there", [])))[0] == "Hello!"
    assert await collect(r.sentences("bananas are yellow", [])) == ["You said: bananas are yellow"]
    assert await collect(r.sentences("", [])) == ["Sorry, I did not catch that."]


class FakeLLM(BaseHTTPRequestHandler):
    """A stand-in for an OpenAI-compatible API (no LLM can run here): streams a canned answer."""

    seen: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeLLM.seen.append({"body": body, "auth": self.headers.get("Authorization")})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for token in ["Sure", ". It is", " sunny", " today! Anything", " else?"]:
            chunk = {"choices": [{"delta": {"content": token}}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
            time.sleep(0.05)
        self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, *args: object) -> None:
        pass


async def test_llm_responder_streams_sentences_with_history():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeLLM)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        llm = OpenAIChatResponder(f"http://127.0.0.1:{httpd.server_port}/v1", "m", "k", "Be brief.")
        history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
        got = await collect(llm.sentences("weather?", history))
        assert got == ["Sure.", "It is sunny today!", "Anything else?"]
        sent = FakeLLM.seen[-1]
        assert sent["auth"] == "Bearer k" and sent["body"]["stream"] is True
        assert [m["role"] for m in sent["body"]["messages"]] == ["system", "user", "assistant", "user"]
    finally:
        httpd.shutdown()


@needs_espeak
def test_whisper_transcribes_generated_speech_and_piper_speaks():
    stt = WhisperSTT()
    text = stt.transcribe(resample(speech("What time is it?"), 48000, 16000)).lower()
    assert "time" in text, text
    audio = PiperTTS().synthesize("The quick brown fox.")
    assert 0.5 < len(audio) / 24000 < 3 and abs(audio).max() > 0.1
    assert "fox" in stt.transcribe(resample(audio, 24000, 16000)).lower()


async def read_events(url: str, until, timeout: float) -> list[dict]:
    events: list[dict] = []
    async with httpx.AsyncClient(timeout=timeout + 5) as http, http.stream("GET", url) as resp:
        deadline = time.monotonic() + timeout
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if until(events):
                    break
            if time.monotonic() > deadline:
                break
    return events


@pytest.mark.serial
@needs_espeak
async def test_assistant_over_websocket_hears_and_answers(server):
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        assert await wait_until(
            lambda: httpx.get(f"{server.base_url}/healthz").json()["assistant"] == "ready", 30
        )
        async with AudioSocketClient(ws_url(server, "/chat/websocket/offer")) as client:
            await client.start()
            await asyncio.sleep(0.2)
            resp = await http.post("/chat/input", json={"webrtc_id": client.session_id, "mode": "assistant"})
            assert resp.status_code == 200, resp.text
            url = f"{server.base_url}/chat/outputs?webrtc_id={client.session_id}"
            listener = asyncio.create_task(
                read_events(
                    url,
                    lambda ev: any(e["type"] == "state" and e["state"] == "listening" for e in ev[2:]),
                    20,
                )
            )
            await client.speak(None, 0.3)
            ended = await client.speak(speech("Hello. What time is it?"), 1.5)
            assert await wait_until(lambda: client.audible_after(ended), 8), client.event_types()
            delay_ms = (client.audible_after(ended)[0] - ended) * 1000
            events = await listener
            transcript = " ".join(e["text"] for e in events if e["type"] == "transcript").lower()
            replies = [e["text"] for e in events if e["type"] == "reply"]
            states = [e["state"] for e in events if e["type"] == "state"]
            print(
                f"\nassistant: heard {transcript!r}, said {replies}; end of speech -> first audio {delay_ms:.0f} ms"
            )
            assert "time" in transcript
            assert any(r.startswith("It is") for r in replies), replies
            assert states[:4] == ["listening", "thinking", "speaking", "listening"], states
            assert delay_ms < 3000
    assert await wait_until(lambda: chat_sessions(server) == 0, 3)
