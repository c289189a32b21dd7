"""One measured video session in its own process (so clients spread over the cores):
`python -m bench.scale_client URL KIND WARMUP SECONDS` prints one JSON line."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import httpx

from tests.rtc_client import VideoClient, percentile


async def main(url: str, kind: str, warmup: float, seconds: float) -> None:
    client = VideoClient(url, width=640, height=480, fps=30)
    await client.connect()
    async with httpx.AsyncClient(base_url=url) as http:  # stock starts its handler at the first input
        await http.post(
            "/video/input",
            json={"webrtc_id": client.webrtc_id, **({"filter": "none"} if kind == "ours" else {})},
        )
    await asyncio.sleep(warmup)
    start, t0 = len(client.received), time.monotonic()
    await asyncio.sleep(seconds)
    window = client.received[start:]
    latencies = [r.latency_s * 1000 for r in window]
    print(json.dumps({
        "fps": len(window) / (time.monotonic() - t0),
        "median_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
    }), flush=True)  # fmt: skip
    await client.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])))
