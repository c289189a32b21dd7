"""The /chat stream over WebRTC with an aiortc client speaking espeak-ng speech in real time."""

from __future__ import annotations

import asyncio
import shutil
import time

import psutil
import pytest

from tests.audio_client import ChatClient, loudest_frame_rms, speech

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

SENTENCE = "The quick brown fox jumps over the lazy dog, and then it runs back home to sleep."


async def wait_until(predicate, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(step)
    return predicate()


@pytest.mark.serial
async def test_echo_replies_soon_after_the_pause_and_only_once(server):
    client = ChatClient(server.base_url)
    await client.connect()
    try:
        clip = speech(SENTENCE)
        _, ended = await client.mic.say(clip)
        assert await wait_until(lambda: client.reply_audio(ended), 5), "no echo came back"
        first = client.reply_audio(ended)[0]
        delay_ms = (first - ended) * 1000
        await asyncio.sleep(len(clip) / 48_000 + 1.0)  # the whole echo plays
        heard = client.reply_audio(ended)
        print(f"\nend of speech -> first echo: {delay_ms:.0f} ms; echo {heard[-1] - heard[0]:.2f} s")
        assert delay_ms < 1000, f"{delay_ms:.0f} ms (stock fastrtc: 980-1180 ms)"
        assert heard[-1] - heard[0] > 0.8 * len(clip) / 48_000, (
            "the echo should be about as long as the speech"
        )
        loudest = max(rms for t, rms in client.received if t > ended)
        assert 0.3 < loudest / loudest_frame_rms(clip) < 2.0, f"echo level {loudest:.3f}: distorted or lost"
        assert len(client.logs("pause_detected")) == 1, "one sentence with commas is one turn"
        assert len(client.logs("started_talking")) == 1
    finally:
        await client.close()


@pytest.mark.serial
async def test_barge_in_stops_the_reply(server):
    client = ChatClient(server.base_url)
    await client.connect()
    try:
        long_clip = speech(
            "one two three four five six seven eight nine ten eleven twelve", words_per_minute=140
        )
        _, ended = await client.mic.say(long_clip)
        assert await wait_until(lambda: client.reply_audio(ended), 5)
        await asyncio.sleep(0.8)  # the echo is playing
        started, _ = await asyncio.wait_for(client.mic.say(speech("stop please")), 10)
        await asyncio.sleep(0.1)  # the interruption itself happened long before this returns
        echo_a = [t for t in client.reply_audio(ended) if t < started + 1.0]
        stop_ms = (max(echo_a) - started) * 1000
        print(f"\nbarge-in: reply stopped {stop_ms:.0f} ms after the new speech began")
        assert stop_ms < 600, f"the reply went on {stop_ms:.0f} ms into the new speech"  # generous: CI load
        assert len(client.logs("started_talking")) == 2
    finally:
        await client.close()


@pytest.mark.serial
async def test_idle_session_costs_almost_no_cpu(server):
    """Stock ReplyOnPause spins on emit(): 65-100% of a core per idle session."""
    client = ChatClient(server.base_url)
    await client.connect()
    try:
        proc = psutil.Process(server.pid)
        await asyncio.sleep(1)
        before = proc.cpu_times()
        t0 = time.monotonic()
        await asyncio.sleep(5)
        after = proc.cpu_times()
        cpu = 100 * ((after.user + after.system) - (before.user + before.system)) / (time.monotonic() - t0)
        print(f"\nidle chat session: server at {cpu:.1f}% of a core (receiving silence, VAD on)")
        assert cpu < 20, f"{cpu:.1f}% of a core for one idle session"
    finally:
        await client.close()


async def test_mode_input_is_validated(server):
    client = ChatClient(server.base_url)
    await client.connect()
    try:
        resp = await client.set_input(mode="poetry")
        assert resp.status_code == 422 and resp.json()["meta"]["error"] == "invalid_input"
        assert (await client.set_input(mode="echo")).status_code == 200
    finally:
        await client.close()
