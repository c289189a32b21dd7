"""The /generate stream through the real protocol: a receive-only aiortc client on loopback."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.rtc_client import ReceiveClient
from tests.test_video_rtc import read_sse


async def measure(client: ReceiveClient, seconds: float) -> tuple[float, list[int]]:
    start = time.monotonic()
    await asyncio.sleep(seconds)
    window = [c for t, c, _ in client.frames if t >= start]
    return client.rate(start), window


@pytest.mark.serial
async def test_delivered_rate_follows_the_target_live_without_gaps(server):
    client = ReceiveClient(server.base_url)
    await client.connect()
    try:
        for fps in (10, 15, 30):
            resp = await client.set_input(fps=fps)
            assert resp.status_code == 200, resp.text
            changed = time.monotonic()
            # the new rate shows within 2 s: some 0.5 s window before then is already at the target
            reached = None
            while time.monotonic() - changed < 2.5:
                await asyncio.sleep(0.5)
                if abs(client.rate(time.monotonic() - 0.5) - fps) <= fps * 0.2:
                    reached = time.monotonic() - changed
                    break
            assert reached is not None and reached <= 2.0, f"rate did not reach {fps} fps within 2 s"
            await asyncio.sleep(0.5)
            rate, counters = await measure(client, 5)
            print(f"\ntarget {fps} fps: delivered {rate:.2f} fps, reached in {reached:.1f} s")
            assert abs(rate - fps) <= fps * 0.1, f"{rate:.2f} fps delivered for a target of {fps}"
            gaps = [b - a for a, b in zip(counters, counters[1:], strict=False) if b - a != 1]
            assert gaps == [], f"frame counter jumps: {gaps[:10]}"
    finally:
        await client.close()


@pytest.mark.serial
async def test_file_source_plays_at_its_own_rate_and_outputs_report_fps(server):
    client = ReceiveClient(server.base_url)
    await client.connect()
    try:
        assert (await client.set_input(source="file", width=320, height=240)).status_code == 200
        await asyncio.sleep(1.5)
        rate, _ = await measure(client, 3)
        assert abs(rate - 24) <= 2.4, f"the sample clip is 24 fps; delivered {rate:.1f}"
        assert client.frames[-1][2] == 320
        url = f"{server.base_url}/generate/outputs?webrtc_id={client.webrtc_id}"
        events = await read_sse(url, 4, until=lambda e: e["frames"] > 0 and e["fps"] > 20)
        assert events and events[-1]["target_fps"] == 24 and events[-1]["params"]["source"] == "file"
        assert (await client.set_input(fps=12)).status_code == 200
        await asyncio.sleep(1.5)
        rate, _ = await measure(client, 3)
        assert abs(rate - 12) <= 1.2, f"an explicit fps overrides the file's own; delivered {rate:.1f}"
    finally:
        await client.close()


async def test_invalid_generate_inputs_are_refused(server):
    client = ReceiveClient(server.base_url)
    await client.connect()
    try:
        for bad in ({"fps": 0}, {"fps": 61}, {"fps": "fast"}, {"source": "webcam"}, {"width": 641}):
            resp = await client.set_input(**bad)
            assert resp.status_code == 422, (bad, resp.text)
            assert resp.json()["meta"]["error"] == "invalid_input"
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            resp = await http.post("/generate/input", json={"webrtc_id": "ghost", "fps": 10})
            assert resp.status_code == 404
    finally:
        await client.close()
