"""Turn-taking: end of speech → first reply audio, false ends of turn, idle CPU (also with an Opus DTX
sender), barge-in.

Ours with each end-of-turn detector (`smart`: Smart Turn v3.2 asked after a short pause; `vad`:
400 ms of silence) over WebRTC, WebSocket and phone (Twilio Media Streams protocol), echo and
assistant; against stock fastrtc `ReplyOnPause` (echo, given our offline VAD model because its
default downloads one) over WebRTC and WebSocket, in the same run. Two sentence sets: complete
sentences (espeak-ng), and sentences with a 600-900 ms hesitation in the middle (espeak-ng and
Piper), where any reply before the speaker finished is a false end of turn. Speech is sent in real
time as 20 ms frames; "end of speech" is the last sample above 1% of full scale. A turn that got
no audible reply within 8 s is counted as missing in `turns`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import httpx
import numpy as np
import psutil

from bench.common import save, start_server, table
from tests.audio_client import RATE, ChatClient, burst, piper_speech, speech
from tests.rtc_client import percentile
from tests.ws_client import AudioSocketClient

SENTENCES = [
    "The quick brown fox jumps over the lazy dog, and then it runs back home.",
    "I would like a cup of coffee, with milk and two sugars, please.",
    "Tomorrow we are going to the beach, if the weather is good.",
    "My phone number is five five five, one two three four.",
    "Please remind me to call my sister when I get home tonight.",
]
QUESTIONS = ["What time is it?", "Hello there.", "What is the date today?"]
# One sentence each, with a hesitation of 600-900 ms in the middle (two phrases joined by silence):
# a turn detector that ends the turn in that silence answers before the speaker has finished.
HESITATIONS = [
    ("I would like to order a, um,", "large pizza with mushrooms.", 0.6),
    ("So the thing is, um,", "I need a new passport.", 0.7),
    ("My phone number is five five five, and", "then one two three four.", 0.8),
    ("Let me think about, um,", "the blue one, please.", 0.9),
    ("What I really want is, um,", "a quiet table by the window.", 0.75),
]
VOICES = {"espeak": speech, "piper": piper_speech}


def hesitation_clips(voice: str) -> list[np.ndarray]:
    say = VOICES[voice]
    return [
        np.concatenate([say(a), np.zeros(int(gap * RATE), np.float32), say(b)]) for a, b, gap in HESITATIONS
    ]


async def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return False


async def run_turns(
    server: Any, transport: str, texts: list[str] | list[np.ndarray], mode: str | None, stock: bool = False
) -> dict:
    """A false end: reply audio before the speaker finished (the turn ended in a mid-sentence pause),
    or, for ours, a second end of turn within one clip."""
    delays, false_ends = [], 0
    clips = [speech(t) if isinstance(t, str) else t for t in texts]
    if transport == "webrtc":
        client = ChatClient(server.base_url)
        await client.connect()
        sid = client.webrtc_id

        async def say(clip, _silence):  # the mic sends silence between clips by itself
            _, ended = await client.mic.say(clip)
            return ended

        def audible(after):
            return client.reply_audio(after)

        def pauses():
            return len(client.logs("pause_detected"))
    else:
        path = "/chat/telephone/handler" if transport == "phone" else "/chat/websocket/offer"
        client = AudioSocketClient(server.base_url.replace("http", "ws") + path, phone=transport == "phone",
                                   input_rate=48000 if stock else None)  # fmt: skip
        await client.__aenter__()
        await client.start()
        sid = client.session_id
        say = client.speak
        audible = client.audible_after

        def pauses():
            return sum(
                1 for _, m in client.events if m.get("type") == "log" and m.get("data") == "pause_detected"
            )

    if mode:
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            await asyncio.sleep(0.3)
            await http.post("/chat/input", json={"webrtc_id": sid, "mode": mode})
    reports: list[dict] = []
    reader = None if stock else asyncio.create_task(read_outputs(server, sid, reports))
    try:
        for clip in clips:
            before = pauses()
            started_at = time.monotonic()
            ended = await say(clip, 1.0)  # sockets: keep sending silence, as a phone does
            early = [t for t in audible(started_at) if t < ended]
            if early:  # answered mid-sentence: count it, and let that reply play out
                false_ends += 1
                await wait_for(
                    lambda e=ended: time.monotonic() - audible(e)[-1] > 0.7 if audible(e) else False, 10
                )
                continue
            if await wait_for(lambda e=ended: audible(e), 8):
                delays.append((audible(ended)[0] - ended) * 1000)
                # let the whole reply play out: the next turn starts after 0.7 s without reply audio
                await wait_for(lambda e=ended: time.monotonic() - audible(e)[-1] > 0.7, 20)
            if transport != "webrtc":
                await say(None, 0.1)
            if not stock and pauses() - before > 1:
                false_ends += 1
    finally:
        if reader is not None:
            reader.cancel()
        if transport == "webrtc":
            await client.close()
        else:
            await client.__aexit__()
    stages = {}
    for key in ("stt_ms", "first_sentence_ms", "tts_ms"):
        values = [r[key] for r in reports if r.get("type") == "turn" and isinstance(r.get(key), int)]
        if values:
            stages[key.removesuffix("_ms")] = round(percentile(values, 50))
    early = [r["stt_early"] for r in reports if r.get("type") == "turn" and "stt_early" in r]
    return {
        "median_ms": round(percentile(delays, 50)) if delays else "-",
        "p95_ms": round(percentile(delays, 95)) if delays else "-",
        "turns": f"{len(delays)}/{len(clips)}",
        "false_ends": f"{false_ends}/{len(clips)}",
        "stages_median_ms": ", ".join(f"{k} {v}" for k, v in stages.items())
        + (f" (early STT {sum(early)}/{len(early)})" if early else ""),
    }


async def read_outputs(server: Any, session_id: str, into: list[dict]) -> None:
    """The session's reports from `/chat/outputs` (turn timings, interruptions), as they come."""
    url = f"{server.base_url}/chat/outputs?webrtc_id={session_id}"
    async with httpx.AsyncClient(timeout=None) as http, http.stream("GET", url) as resp:
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                into.append(json.loads(line[6:]))


async def idle_cpu(server: Any, seconds: float = 6, dtx: bool = False) -> float:
    """Server CPU (% of a core) for one connected, silent client; `dtx`: one that sends as a browser
    told `usedtx=1` does (a 20 ms packet every 400 ms), as ours asks browsers to."""
    client = ChatClient(server.base_url, dtx=dtx)
    await client.connect()
    proc = psutil.Process(server.pid)
    await asyncio.sleep(1.5)
    c0, t0 = proc.cpu_times(), time.monotonic()
    await asyncio.sleep(seconds)
    c1 = proc.cpu_times()
    await client.close()
    return round(100 * ((c1.user + c1.system) - (c0.user + c0.system)) / (time.monotonic() - t0), 1)


async def barge_in(server: Any) -> float:
    client = ChatClient(server.base_url)
    await client.connect()
    _, ended = await client.mic.say(speech("one two three four five six seven eight nine ten eleven twelve"))
    await wait_for(lambda: client.reply_audio(ended), 5)
    await asyncio.sleep(0.8)
    started, _ = await client.mic.say(speech("stop please"))
    await asyncio.sleep(0.2)
    echo = [t for t in client.reply_audio(ended) if t < started + 1.0]
    await client.close()
    return round((max(echo) - started) * 1000)


async def coughs_over_a_reply(server: Any, n: int = 3) -> str:
    """Bursts of 150 ms during an echo: how many stopped it (each in its own session)."""
    stopped = 0
    for _ in range(n):
        client = ChatClient(server.base_url)
        await client.connect()
        reports: list[dict] = []
        reader = asyncio.create_task(read_outputs(server, client.webrtc_id, reports))
        try:
            _, ended = await client.mic.say(speech("one two three four five six seven eight nine ten"))
            await wait_for(lambda c=client, e=ended: c.reply_audio(e), 5)
            await asyncio.sleep(0.5)
            await client.mic.say(burst())
            await asyncio.sleep(0.8)
            stopped += any(r.get("type") == "interrupted" for r in reports)
        finally:
            reader.cancel()
            await client.close()
    return f"{stopped}/{n}"


async def main_async(n: int) -> tuple[list[dict], dict]:
    rows: list[dict] = []
    extra: dict[str, Any] = {}
    hesitating = {voice: hesitation_clips(voice) for voice in VOICES}

    def add(server: str, detector: str, mode: str, sentences: str, transport: str, row: dict) -> None:
        rows.append({"server": server, "detector": detector, "mode": mode, "sentences": sentences,
                     "transport": transport, **row})  # fmt: skip
        print(rows[-1], flush=True)

    for detector in ("smart", "vad"):
        ours = start_server("ours", CHAT_TURN_DETECTOR=detector)
        try:
            await wait_for(
                lambda s=ours: httpx.get(f"{s.base_url}/healthz").json().get("assistant") == "ready", 60
            )
            for transport in ("webrtc", "websocket", "phone"):
                add(
                    "ours",
                    detector,
                    "echo",
                    "complete",
                    transport,
                    await run_turns(ours, transport, SENTENCES[:n], None),
                )
            for voice, clips in hesitating.items():
                add("ours", detector, "echo", f"hesitation ({voice})", "webrtc",
                    await run_turns(ours, "webrtc", clips[:n], None))  # fmt: skip
            for transport in ("webrtc", "websocket", "phone"):
                add("ours", detector, "assistant (offline)", "questions", transport,
                    await run_turns(ours, transport, QUESTIONS, "assistant"))  # fmt: skip
            if detector == "vad":  # the default: idle cost, barge-in and coughs measured on it
                extra["ours_idle_cpu_pct"] = await idle_cpu(ours)
                extra["ours_idle_cpu_pct_dtx"] = await idle_cpu(ours, dtx=True)  # target: <= 2
                extra["ours_barge_in_stop_ms"] = [await barge_in(ours) for _ in range(3)]
                extra["ours_150ms_bursts_that_stopped_a_reply"] = await coughs_over_a_reply(ours)
        finally:
            ours.stop()
    sink = start_server("raw-audio-sink")
    try:
        extra["raw_aiortc_audio_sink_idle_cpu_pct"] = await idle_cpu(sink)
        extra["raw_aiortc_audio_sink_idle_cpu_pct_dtx"] = await idle_cpu(sink, dtx=True)
    finally:
        sink.stop()
    stock = start_server("stock-chat")
    try:
        for transport in ("webrtc", "websocket"):
            add("stock ReplyOnPause", "vad (0.6 s chunks)", "echo", "complete", transport,
                await run_turns(stock, transport, SENTENCES[:n], None, stock=True))  # fmt: skip
        for voice, clips in hesitating.items():
            add("stock ReplyOnPause", "vad (0.6 s chunks)", "echo", f"hesitation ({voice})", "webrtc",
                await run_turns(stock, "webrtc", clips[:n], None, stock=True))  # fmt: skip
        extra["stock_idle_cpu_pct"] = await idle_cpu(stock)
    finally:
        stock.stop()
    return rows, extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sentences", type=int, default=5)
    args = parser.parse_args()
    rows, extra = asyncio.run(main_async(args.sentences))
    md = table(
        rows,
        [
            "server",
            "detector",
            "mode",
            "sentences",
            "transport",
            "median_ms",
            "p95_ms",
            "turns",
            "false_ends",
            "stages_median_ms",
        ],
    )
    md += "\n\n" + "\n".join(f"- {k}: {v}" for k, v in extra.items())
    print(md)
    save("turns", [*rows, extra], md, __doc__ or "")


if __name__ == "__main__":
    main()
