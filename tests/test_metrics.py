"""/metrics values move as sessions come and go, read the way Prometheus reads them."""

from __future__ import annotations

import shutil

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.audio_client import speech
from tests.rtc_client import VideoClient
from tests.test_chat_rtc import SENTENCE, wait_until
from tests.ws_client import AudioSocketClient


def scrape(server) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"{server.base_url}/metrics").text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_video_session_metrics_move(server):
    before = scrape(server)
    client = VideoClient(server.base_url, width=320, height=240)
    try:
        await client.connect()
        await client.wait_frames(30)
        during = scrape(server)
        assert value(during, "rt_sessions_active", stream="video", transport="webrtc") == 1
        assert value(during, "rt_peer_connections", stream="video") == 1
        assert value(during, "rt_offers_total", stream="video", outcome="accepted") == 1 + value(
            before, "rt_offers_total", stream="video", outcome="accepted"
        )
        frames_in = value(during, "rt_frames_total", stream="video", direction="in") - value(
            before, "rt_frames_total", stream="video", direction="in"
        )
        frames_out = value(during, "rt_frames_total", stream="video", direction="out") - value(
            before, "rt_frames_total", stream="video", direction="out"
        )
        assert frames_in >= 30 and frames_out >= 25, (frames_in, frames_out)
        processed = value(during, "rt_frame_processing_seconds_count", stream="video") - value(
            before, "rt_frame_processing_seconds_count", stream="video"
        )
        assert processed == frames_out
        assert value(during, "rt_frame_server_latency_seconds_count", stream="video") > 0
        # per session: our worker (`video-<id>`) and aiortc's decoder thread (`video-decoder`)
        assert value(during, "rt_threads", pool="video") == 2
        assert value(during, "rt_event_loop_tasks") > 0
    finally:
        await client.close()
    assert await wait_until(
        lambda: value(scrape(server), "rt_sessions_active", stream="video", transport="webrtc") == 0, 5
    )
    after = scrape(server)
    assert value(after, "rt_peer_connections", stream="video") == 0
    assert value(after, "rt_threads", pool="video") == 0
    ended = sum(
        v - before.get(k, 0.0)
        for k, v in after.items()
        if k[0] == "rt_sessions_ended_total" and ("stream", "video") in k[1]
    )
    assert ended == 1


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
async def test_chat_turns_and_refusals_are_counted(server):
    url = server.base_url.replace("http://", "ws://") + "/chat/websocket/offer"
    before = scrape(server)
    async with AudioSocketClient(url) as client:
        await client.start()
        assert await wait_until(
            lambda: value(scrape(server), "rt_sessions_active", stream="chat", transport="websocket") == 1, 3
        )
        await client.speak(None, 0.3)
        ended = await client.speak(speech(SENTENCE), 1.0)
        assert await wait_until(lambda: client.audible_after(ended), 5)
    assert await wait_until(
        lambda: (
            value(scrape(server), "rt_pause_to_reply_seconds_count", stream="chat")
            == value(before, "rt_pause_to_reply_seconds_count", stream="chat") + 1
        ),
        3,
    )
    async with AudioSocketClient(url, session_id="elsewhere.0123456789abcdef0123456789abcdef") as refused:
        await refused.start()
        assert await refused.closed() == 1008
    after = scrape(server)
    assert value(
        after, "rt_refusals_total", stream="chat", transport="websocket", reason="wrong_instance"
    ) == (
        value(before, "rt_refusals_total", stream="chat", transport="websocket", reason="wrong_instance") + 1
    )
    assert value(after, "rt_sessions_active", stream="chat", transport="websocket") == 0
