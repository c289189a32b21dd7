"""Turn-taking: end of speech → first reply audio, false ends of turn, idle CPU, barge-in.

Ours (silence setting 400 ms) over WebRTC, WebSocket and phone (Twilio Media Streams protocol),
echo and assistant; against stock fastrtc `ReplyOnPause` (echo, given our offline VAD model because
its default downloads one) over WebRTC and WebSocket, in the same run. Speech is espeak-ng, sent in
real time as 20 ms frames; "end of speech" is the last sample above 1% of full scale.
A turn that got no audible reply within 8 s is counted as missing in `turns`.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import httpx
import psutil

from bench.common import save, start_server, table
from tests.audio_client import ChatClient, speech
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


async def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return False


async def run_turns(
    server: Any, transport: str, texts: list[str], mode: str | None, stock: bool = False
) -> dict:
    delays, false_ends = [], 0
    clips = [speech(t) for t in texts]
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
    try:
        for clip in clips:
            before = pauses()
            ended = await say(clip, 1.0)  # sockets: keep sending silence, as a phone does
            if await wait_for(lambda e=ended: audible(e), 8):
                delays.append((audible(ended)[0] - ended) * 1000)
                # let the whole reply play out: the next turn starts after 0.7 s without reply audio
                await wait_for(lambda e=ended: time.monotonic() - audible(e)[-1] > 0.7, 20)
            if transport != "webrtc":
                await say(None, 0.1)
            if not stock:
                false_ends += max(0, pauses() - before - 1)
    finally:
        if transport == "webrtc":
            await client.close()
        else:
            await client.__aexit__()
    return {
        "median_ms": round(percentile(delays, 50)) if delays else "-",
        "p95_ms": round(percentile(delays, 95)) if delays else "-",
        "turns": f"{len(delays)}/{len(clips)}",
        "false_ends": false_ends if not stock else "n/a",
    }


async def idle_cpu(server: Any, seconds: float = 6) -> float:
    client = ChatClient(server.base_url)
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


async def main_async(n: int) -> tuple[list[dict], dict]:
    rows = []
    extra: dict[str, Any] = {}
    ours = start_server("ours")
    try:
        await wait_for(lambda: httpx.get(f"{ours.base_url}/healthz").json().get("assistant") == "ready", 60)
        for transport in ("webrtc", "websocket", "phone"):
            row = await run_turns(ours, transport, SENTENCES[:n], None)
            rows.append({"server": "ours", "mode": "echo", "transport": transport, **row})
            print(rows[-1], flush=True)
        for transport in ("webrtc", "websocket", "phone"):
            row = await run_turns(ours, transport, QUESTIONS, "assistant")
            rows.append({"server": "ours", "mode": "assistant (offline)", "transport": transport, **row})
            print(rows[-1], flush=True)
        extra["ours_idle_cpu_pct"] = await idle_cpu(ours)
        extra["ours_barge_in_stop_ms"] = [await barge_in(ours) for _ in range(3)]
    finally:
        ours.stop()
    sink = start_server("raw-audio-sink")
    try:
        extra["raw_aiortc_audio_sink_idle_cpu_pct"] = await idle_cpu(sink)
    finally:
        sink.stop()
    stock = start_server("stock-chat")
    try:
        for transport in ("webrtc", "websocket"):
            row = await run_turns(stock, transport, SENTENCES[:n], None, stock=True)
            rows.append({"server": "stock ReplyOnPause", "mode": "echo", "transport": transport, **row})
            print(rows[-1], flush=True)
        extra["stock_idle_cpu_pct"] = await idle_cpu(stock)
    finally:
        stock.stop()
    return rows, extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sentences", type=int, default=5)
    args = parser.parse_args()
    rows, extra = asyncio.run(main_async(args.sentences))
    md = table(rows, ["server", "mode", "transport", "median_ms", "p95_ms", "turns", "false_ends"])
    md += "\n\n" + "\n".join(f"- {k}: {v}" for k, v in extra.items())
    print(md)
    save("turns", [*rows, extra], md, __doc__ or "")


if __name__ == "__main__":
    main()
