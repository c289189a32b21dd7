"""Server-to-client generation: delivered fps against the target, stock fastrtc vs ours.

Ours runs one session and changes its rate live (10 → 15 → 30 → 60); stock fastrtc cannot change
rate after start, so each stock rate is a fresh server. The rate is counted at the client over the
window after a settle period; CPU is the server process's over that window (encoding included),
and `produce_ms` × fps is the generation work beyond encoding (ours reports it). The first input
comes 2 s after connecting; `peak_fps_after_input` is the highest rate over any 0.25 s in the
settle period after an input: a burst shows there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import httpx
import psutil

from bench.common import save, start_server, table
from tests.rtc_client import ReceiveClient

LATE_INPUT_S = 2.0


async def measure_rate(client: ReceiveClient, proc: psutil.Process, seconds: float) -> tuple[float, float]:
    cpu0 = proc.cpu_times()
    start = time.monotonic()
    await asyncio.sleep(seconds)
    cpu1 = proc.cpu_times()
    cpu = 100 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / (time.monotonic() - start)
    return client.rate(start), cpu


async def last_report(base_url: str, webrtc_id: str) -> dict:
    async with (
        httpx.AsyncClient(timeout=5) as http,
        http.stream("GET", f"{base_url}/generate/outputs", params={"webrtc_id": webrtc_id}) as resp,
    ):
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                return json.loads(line[6:])
    return {}


def peak_rate(client: ReceiveClient, since: float, span: float = 3.0, window: float = 0.25) -> float:
    """The highest rate over any `window` in the first `span` seconds after `since`: shows bursts."""
    times = [t for t, _, _ in client.frames if since <= t < since + span]
    return max((sum(1 for u in times if t <= u < t + window) / window for t in times), default=0.0)


async def ours(rates: list[int], seconds: float, settle: float) -> list[dict]:
    server = start_server("ours")
    rows = []
    try:
        client = ReceiveClient(server.base_url)
        await client.connect()
        proc = psutil.Process(server.pid)
        await asyncio.sleep(LATE_INPUT_S)  # same late input as stock gets
        for fps in rates:
            started = time.monotonic()
            await client.set_input(fps=fps)
            await asyncio.sleep(settle)
            peak = peak_rate(client, started, span=settle)
            rate, cpu = await measure_rate(client, proc, seconds)
            report = await last_report(server.base_url, client.webrtc_id)
            work = report.get("produce_ms", 0) * fps / 10  # % of a core
            rows.append(_row("ours (live changes)", fps, rate, cpu, round(work, 2), peak))
            print(rows[-1], flush=True)
        await client.close()
    finally:
        server.stop()
    return rows


async def stock(rates: list[int], seconds: float, settle: float) -> list[dict]:
    rows = []
    for fps in rates:
        server = start_server("stock-generate", fps=fps)
        try:
            client = ReceiveClient(server.base_url)
            await client.connect()
            await asyncio.sleep(LATE_INPUT_S)  # stock starts its generator only on the first input
            started = time.monotonic()
            await client.set_input()
            await asyncio.sleep(settle)
            peak = peak_rate(client, started, span=settle)
            rate, cpu = await measure_rate(client, psutil.Process(server.pid), seconds)
            rows.append(_row("stock (fresh server per rate)", fps, rate, cpu, "", peak))
            print(rows[-1], flush=True)
            await client.close()
        finally:
            server.stop()
    return rows


def _row(server: str, fps: int, rate: float, cpu: float, work: float | str, peak: float) -> dict:
    return {
        "server": server,
        "target_fps": fps,
        "delivered_fps": round(rate, 2),
        "peak_fps_after_input": round(peak, 1),
        "error_pct": round(100 * (rate - fps) / fps, 2),
        "server_cpu_pct": round(cpu, 1),
        "generation_cpu_pct": work,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--settle", type=float, default=2)
    parser.add_argument("--rates", default="10,15,30,60")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    rows = asyncio.run(ours(rates, args.seconds, args.settle)) + asyncio.run(
        stock(rates, args.seconds, args.settle)
    )
    cols = ["server", "target_fps", "delivered_fps", "error_pct", "peak_fps_after_input", "server_cpu_pct"]
    md = table(rows, [*cols, "generation_cpu_pct"])
    print(md)
    save("generate", rows, md, __doc__ or "")


if __name__ == "__main__":
    main()
