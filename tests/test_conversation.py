"""Turn-taking that behaves like people: a cough does not stop a reply, speech does; a reply cut
short is remembered as far as it was heard; a greeting on every transport; speech to text started
on the pause; the stages of a turn reported; a client that stops sending still ends its turn.

The end-to-end tests run one real server (`python -m server`) with real Whisper and Piper and an
OpenAI-compatible stand-in for the LLM (no LLM can run here), which records what it is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest

from streams.assistant import AssistantResponder, OfflineResponder
from streams.chat import ChatHandler
from streams.handlers import AUDIO_GAP_S, ReplyOnPause, Spoken, default_vad, heard_text
from streams.smart_turn import SmartTurn
from streams.turns import PauseDetected, SpeechConfirmed, SpeechStarted, TurnDetector, TurnEnded, TurnSettings
from streams.vad import SAMPLE_RATE
from tests.audio_client import ChatClient, burst, say
from tests.server_process import ServerProcess
from tests.test_chat_ws import ws_url
from tests.ws_client import AudioSocketClient

GREETING = "Hello there. I am listening."
ANSWER = (
    "Let me count slowly for you. One, two, three, four, five. Six, seven, eight, nine, ten. "
    "Eleven, twelve, thirteen, fourteen, fifteen. Sixteen, seventeen, eighteen. That is all."
)
CHUNK = SAMPLE_RATE // 50


class RecordingLLM(BaseHTTPRequestHandler):
    """An OpenAI-compatible stand-in: streams `ANSWER` and keeps every request's messages."""

    requests: list[list[dict[str, str]]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        RecordingLLM.requests.append(body["messages"])
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for word in ANSWER.split(" "):
            chunk = {"choices": [{"delta": {"content": word + " "}}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def talk_server() -> Iterator[ServerProcess]:
    """The assistant by default, answering through the recording LLM, greeting every session."""
    llm = ThreadingHTTPServer(("127.0.0.1", 0), RecordingLLM)
    threading.Thread(target=llm.serve_forever, daemon=True).start()
    env = {
        "CHAT_DEFAULT_MODE": "assistant",
        "CHAT_GREETING": GREETING,
        "LLM_BASE_URL": f"http://127.0.0.1:{llm.server_port}/v1",
    }
    try:
        with ServerProcess(env=env, log_name="talk-server") as proc:
            deadline = time.monotonic() + 60
            while httpx.get(f"{proc.base_url}/healthz").json().get("assistant") != "ready":
                assert time.monotonic() < deadline, "the assistant did not load"
                time.sleep(0.2)
            yield proc
    finally:
        llm.shutdown()


class Outputs:
    """Every report a session publishes on `/chat/outputs`, as it comes, with its arrival time."""

    def __init__(self, server: ServerProcess, session_id: str) -> None:
        self.url = f"{server.base_url}/chat/outputs?webrtc_id={session_id}"
        self.events: list[tuple[float, dict]] = []
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async with httpx.AsyncClient(timeout=None) as http, http.stream("GET", self.url) as resp:
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    self.events.append((time.monotonic(), json.loads(line[6:])))

    def of(self, kind: str) -> list[dict]:
        return [e for _, e in self.events if e.get("type") == kind]

    def states(self) -> list[str]:
        return [e["state"] for e in self.of("state")]

    async def wait(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate(self) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return predicate(self)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task


def greeted(out: Outputs) -> bool:
    """The greeting has been spoken and has finished playing (it may have started before the
    outputs were subscribed to)."""
    return out.states()[-2:] == ["speaking", "listening"]


# ---- end to end ----


@pytest.mark.parametrize("transport", ["webrtc", "websocket", "phone"])
async def test_the_greeting_is_spoken_on_connect_on_every_transport(talk_server, transport):
    if transport == "webrtc":
        client = ChatClient(talk_server.base_url)
        connected = time.monotonic()
        await client.connect()
        out = Outputs(talk_server, client.webrtc_id)
        heard = lambda: client.reply_audio(connected)  # noqa: E731
        close = client.close
    else:
        path = "/chat/telephone/handler" if transport == "phone" else "/chat/websocket/offer"
        socket = AudioSocketClient(ws_url(talk_server, path), phone=transport == "phone")
        await socket.__aenter__()
        connected = time.monotonic()
        await socket.start()
        out = Outputs(talk_server, socket.session_id)
        heard = lambda: socket.audible_after(connected)  # noqa: E731

        async def close() -> None:
            await socket.__aexit__(None, None, None)

    try:
        assert await out.wait(greeted, 15), out.events
        audible = heard()
        print(f"\n{transport}: greeting audible {audible[0] - connected:.2f} s after connecting, "
              f"for {audible[-1] - audible[0]:.2f} s")  # fmt: skip
        assert audible and 1.0 < audible[-1] - audible[0] < 4.0, "the greeting is heard, whole"
    finally:
        await out.close()
        await close()


@pytest.mark.serial
async def test_a_cough_over_a_reply_does_not_stop_it_and_speech_does(talk_server):
    async with AudioSocketClient(ws_url(talk_server, "/chat/websocket/offer")) as client:
        await client.start()
        out = Outputs(talk_server, client.session_id)
        try:
            assert await out.wait(greeted, 15)
            async with httpx.AsyncClient(base_url=talk_server.base_url) as http:
                resp = await http.post("/chat/input", json={"webrtc_id": client.session_id, "mode": "echo"})
                assert resp.status_code == 200, resp.text
            sentence = say("one two three four five six seven eight nine ten eleven twelve", voice="espeak")
            ended = await client.speak(sentence, 0.6)
            assert await out.wait(lambda o: o.states()[-1:] == ["speaking"], 5)
            coughed = await client.speak(burst(), 0.6)
            assert not out.of("interrupted"), "a 150 ms burst stopped the reply"
            assert client.audible_after(coughed + 0.3), "the reply goes on after the cough"
            assert out.states()[-1] == "speaking"
            started = time.monotonic()
            await client.speak(say("stop please", voice="espeak"), 0.0)
            assert await out.wait(lambda o: o.of("interrupted"), 3), "speech over the reply stops it"
            stopped_ms = (out.events[-1][0] - started) * 1000
            print(f"\necho of {len(sentence) / 48000:.1f} s: cough ignored; speech stopped it "
                  f"after {stopped_ms:.0f} ms")  # fmt: skip
            assert stopped_ms < 1000 and client.audible_after(ended)
        finally:
            await out.close()


@pytest.mark.serial
async def test_an_interrupted_reply_is_remembered_as_far_as_the_caller_heard_it(talk_server):
    """On a phone, Twilio's marks say what the caller heard: the LLM is told that much of its
    reply, marked as cut off, and not the rest; the turn reports its stages."""
    RecordingLLM.requests.clear()
    async with AudioSocketClient(
        ws_url(talk_server, "/chat/telephone/handler"), phone=True, mark_delay_s=0.2
    ) as call:
        await call.start()
        out = Outputs(talk_server, call.session_id)
        try:
            assert await out.wait(greeted, 15)
            await call.speak(say("Please count to twenty for me."), 0.8)
            assert await out.wait(lambda o: o.states()[-1:] == ["speaking"], 10), out.events
            await asyncio.sleep(2.0)  # the caller hears some of it
            await call.speak(say("Stop. What time is it?"), 1.0)
            assert await out.wait(lambda o: len(RecordingLLM.requests) == 2, 10), out.events
            assert out.of("interrupted")
        finally:
            await out.close()
    first, second = RecordingLLM.requests
    assert [m["role"] for m in first] == ["system", "assistant", "user"]
    assert first[1]["content"] == GREETING, "the greeting was heard whole"
    roles = [m["role"] for m in second]
    assert roles == ["system", "assistant", "user", "assistant", "user"], second
    cut = second[3]["content"]
    print(f"\nthe LLM was told it said: {cut!r}")
    assert cut.endswith(" …"), "marked as cut off"
    words = cut.removesuffix(" …").split()
    full = ANSWER.split()
    assert 3 <= len(words) < len(full) // 2, f"as far as ~2 s of speech: {len(words)} words"
    assert words == full[: len(words)], "what was heard, from the start"
    turn = out.of("turn")[0]  # the greeting has no turn report: it answers no turn
    print(f"stages of the first turn: {turn}")
    for stage in ("pause_ms", "stt_ms", "first_sentence_ms", "tts_ms", "speech_end_to_first_audio_ms"):
        assert isinstance(turn.get(stage), int) and turn[stage] >= 0, (stage, turn)
    assert turn["speech_end_to_first_audio_ms"] >= turn["pause_ms"] + turn["tts_ms"]
    metrics = httpx.get(f"{talk_server.base_url}/metrics").text
    for stage in ("pause", "stt", "first_sentence", "tts", "first_audio"):
        assert f'rt_turn_stage_seconds_count{{stage="{stage}",stream="chat"}}' in metrics, stage


# ---- the detector and the handler, in stream time ----


@pytest.mark.parametrize("text", ["yeah", "uh huh", "wait a second", "hello there"])
@pytest.mark.parametrize("voice", ["piper", "espeak"])
def test_a_150_ms_burst_starts_speech_but_is_not_confirmed_and_a_word_is(text, voice):
    def events(audio: np.ndarray) -> list[type]:
        detector = TurnDetector(default_vad())
        padded = np.concatenate(
            [np.zeros(SAMPLE_RATE // 4, np.float32), audio, np.zeros(SAMPLE_RATE, np.float32)]
        )
        return [type(e) for e in detector.feed(padded)]

    assert SpeechStarted in events(burst(text, 150, SAMPLE_RATE, voice)), "a burst the VAD calls speech"
    assert SpeechConfirmed not in events(burst(text, 150, SAMPLE_RATE, voice))
    word = say(text, voice=voice, rate=SAMPLE_RATE)
    assert events(word)[:2] == [SpeechStarted, SpeechConfirmed]


def test_heard_text_counts_words_in_proportion_to_the_samples_played():
    segments = [("One two.", 0, 100), ("Three four five six.", 100, 300)]
    assert heard_text(segments, 0) == ""
    assert heard_text(segments, 100) == "One two."
    assert heard_text(segments, 200) == "One two. Three four"
    assert heard_text(segments, 10_000) == "One two. Three four five six."


class CountingSTT:
    def __init__(self) -> None:
        self.calls: list[float] = []  # seconds of audio in each call

    def transcribe(self, audio16k: np.ndarray) -> str:
        self.calls.append(len(audio16k) / SAMPLE_RATE)
        time.sleep(0.15)
        return f"call {len(self.calls)}"


class SilentTTS:
    def synthesize(self, text: str) -> np.ndarray:
        return np.zeros(2400, np.float32)


def assistant_handler(settings: TurnSettings | None = None) -> tuple[ChatHandler, CountingSTT]:
    stt = CountingSTT()
    responder = AssistantResponder(stt, OfflineResponder(), SilentTTS())
    handler = ChatHandler(
        default_vad(), {"assistant": responder}, default_mode="assistant", turn_settings=settings
    )
    return handler, stt


class Unsure(SmartTurn):
    """An end-of-turn model that always says "not finished": the ceiling ends every turn."""

    def __init__(self) -> None:
        pass

    def probability(self, audio: np.ndarray) -> float:
        return 0.1


async def feed(handler: ChatHandler, audio: np.ndarray, realtime: bool = True) -> None:
    start = time.monotonic()
    for n, i in enumerate(range(0, len(audio), CHUNK)):
        await handler.receive((SAMPLE_RATE, (audio[i : i + CHUNK] * 32767).astype(np.int16).reshape(1, -1)))
        if realtime:
            await asyncio.sleep(max(0.0, start + (n + 1) * CHUNK / SAMPLE_RATE - time.monotonic()))


def utterance(*parts: str | float) -> np.ndarray:
    pieces = [say(p, rate=SAMPLE_RATE) if isinstance(p, str) else np.zeros(int(p * SAMPLE_RATE), np.float32)
              for p in parts]  # fmt: skip
    return np.concatenate(pieces)


async def until(predicate, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return predicate()


@pytest.mark.serial
async def test_speech_to_text_starts_on_the_pause_and_its_transcript_is_used_when_the_turn_ends():
    handler, stt = assistant_handler()
    await feed(handler, utterance("What time is it?", 0.7))
    assert await until(lambda: "stt_ms" in handler.last_turn)
    print(f"\nearly transcript: {handler.last_turn}")
    assert len(stt.calls) == 1, "transcribed once, on the pause"
    assert handler.last_turn["stt_early"] is True
    assert handler.last_turn["stt_ms"] < 100, "ready (150 ms of work) before the 400 ms pause ended"
    assert handler.history[0] == {"role": "user", "content": "call 1"}
    handler.shutdown()


async def test_the_smart_detector_transcribes_a_pause_once_however_often_it_asks_the_model():
    smart = TurnSettings(detector="smart")
    handler, stt = assistant_handler(smart)
    handler.smart_turn = Unsure()
    await feed(handler, utterance("What time is it?", smart.max_silence_ms / 1000 + 0.2), realtime=False)
    assert await until(lambda: "stt_ms" in handler.last_turn)
    print(f"\nsmart, ended by the ceiling: {handler.last_turn}")
    assert handler.turns.checks_issued >= 5, "the model was asked again and again"
    assert len(stt.calls) == 1 and handler.last_turn["stt_early"] is True, stt.calls
    handler.shutdown()


async def test_an_early_transcript_is_dropped_when_the_speaker_goes_on():
    handler, stt = assistant_handler()
    await feed(handler, utterance("I would like, um,", 0.3, "a large pizza please.", 0.7))
    assert await until(lambda: "stt_ms" in handler.last_turn)
    assert len(stt.calls) >= 2 and stt.calls[-1] > max(stt.calls[:-1]) + 0.5, stt.calls
    assert handler.last_turn["stt_early"] is True, "the last pause's transcript, with both halves"
    assert handler.history[0]["content"] == f"call {len(stt.calls)}", "not an earlier, partial one"
    handler.shutdown()


class Talker:
    """A responder that says `words` over `seconds` of audio as one `Spoken`."""

    def __init__(self, words: str, seconds: float) -> None:
        self.words, self.seconds = words, seconds

    async def reply(self, turn: TurnEnded, session: ChatHandler) -> AsyncIterator[Spoken]:
        yield Spoken(self.words, np.full(int(self.seconds * 24_000), 0.1, np.float32))


async def drain(handler: ChatHandler, seconds: float) -> None:
    """Play the handler's output in real time for `seconds`, like a transport does."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await handler.emit()


@pytest.mark.serial
async def test_an_interrupted_reply_is_remembered_as_far_as_it_was_played_and_a_whole_one_whole():
    words = " ".join(f"w{i}" for i in range(40))  # 40 words over 4 s: 10 a second
    handler = ChatHandler(default_vad(), {"echo": Talker(words, 4.0)})
    await handler.start_up()
    player = asyncio.create_task(drain(handler, 11))
    await feed(handler, utterance("Tell me a story.", 0.6))
    assert await until(lambda: handler.state == "speaking")
    await asyncio.sleep(1.0)
    await feed(handler, utterance("Stop.", 0.1))
    assert handler._reply is None and handler.state == "listening"
    (cut,) = handler.history
    heard = cut["content"].removesuffix(" …").split()
    print(f"\nheard {len(heard)} of 40 words after ~1.3 s")
    assert cut["content"].endswith(" …") and 8 <= len(heard) <= 20 and heard == words.split()[: len(heard)]
    await feed(handler, np.zeros(SAMPLE_RATE // 2, np.float32))  # "Stop." is a turn: replied in full
    await player
    assert handler.history[-1] == {"role": "assistant", "content": words}
    handler.shutdown()


@pytest.mark.parametrize("detector", ["vad", "smart"])
async def test_a_client_that_stops_sending_mid_turn_still_gets_its_turn_ended(detector):
    """A WebSocket client may send nothing after the last word: the wall clock ends the turn."""
    settings = TurnSettings(detector=detector)
    handler = ChatHandler(default_vad(), {"echo": Talker("ok", 0.2)}, turn_settings=settings)
    await handler.start_up()
    await feed(handler, say("Hello, this is a sentence that stops.", rate=SAMPLE_RATE), realtime=False)
    stopped = time.monotonic()
    limit = AUDIO_GAP_S + settings.end_silence_ms / 1000 + 0.5
    assert await until(lambda: handler.state != "listening", limit), "the turn never ended"
    print(f"\n{detector}: turn ended {time.monotonic() - stopped:.2f} s after the client fell silent")
    handler.shutdown()


def test_pause_checks_are_issued_in_vad_mode_for_early_speech_to_text():
    detector = TurnDetector(default_vad(), TurnSettings(detector="vad"))
    events = detector.feed(utterance("What time is it?", 0.5))
    pauses = [e for e in events if isinstance(e, PauseDetected)]
    (turn,) = [e for e in events if isinstance(e, TurnEnded)]
    assert pauses and {p.silence_ms for p in pauses} == {192.0} and turn.pause_id == pauses[-1].pause_id


async def test_a_handler_that_cannot_be_interrupted_plays_its_reply_through_speech():
    def fn(audio: tuple[int, np.ndarray]):
        yield (24_000, np.full(int(2.5 * 24_000), 3000, np.int16))

    handler = ReplyOnPause(fn, can_interrupt=False)
    await handler.start_up()
    played: list[int] = []

    async def player() -> None:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            out = await handler.emit()
            if out is not None:
                played.append(out[1].shape[-1])

    playing = asyncio.create_task(player())
    await feed(handler, utterance("Tell me a story.", 0.6))
    assert await until(lambda: handler.state == "speaking")
    await feed(handler, utterance("Stop, please.", 0.5))  # a whole turn, while the reply plays
    await playing
    assert sum(played) == int(2.5 * 24_000), "every sample of the reply was played"
    handler.shutdown()


async def test_a_user_handlers_startup_fn_speaks_first_and_reports_no_turn():
    """fastrtc's `startup_fn`: what it yields is played on connect, before anyone speaks."""
    reports: list[dict] = []

    def greet():
        yield (16_000, np.full(8000, 3000, np.int16))  # half a second, at another rate

    handler = ReplyOnPause(lambda audio: None, startup_fn=greet)
    handler.publish = reports.append  # type: ignore[method-assign]
    await handler.start_up()
    played = 0
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        out = await handler.emit()
        if out is not None:
            played += out[1].shape[-1]
    assert played == 12_000, "the greeting, resampled to the 24 kHz output"
    assert [r["state"] for r in reports if r["type"] == "state"] == [
        "listening",
        "thinking",
        "speaking",
        "listening",
    ]
    assert not [r for r in reports if r["type"] == "turn"], "a greeting answers no turn"
    handler.shutdown()
