"""Server-to-client generation: delivered fps against the target, stock fastrtc vs ours.

Ours runs one session and changes its rate live (10 → 15 → 30 → 60); stock fastrtc cannot change
rate after start, so each stock rate is a fresh server. The rate is counted at the client over the
window after a settle period; CPU is the server process's over that window (encoding included),
and `produce_ms` × fps is the generation work beyond encoding (ours reports it).
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


async def ours(rates: list[int], seconds: float, settle: float) -> list[dict]:
    server = start_server("ours")
    rows = []
    try:
        client = ReceiveClient(server.base_url)
        await client.connect()
        proc = psutil.Process(server.proc.pid)
        for fps in rates:
            await client.set_input(fps=fps)
            await asyncio.sleep(settle)
            rate, cpu = await measure_rate(client, proc, seconds)
            report = await last_report(server.base_url, client.webrtc_id)
            work = report.get("produce_ms", 0) * fps / 10  # % of a core
            rows.append(_row("ours (live changes)", fps, rate, cpu, round(work, 2)))
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
            await client.set_input()
            await asyncio.sleep(settle)
            rate, cpu = await measure_rate(client, psutil.Process(server.proc.pid), seconds)
            rows.append(_row("stock (fresh server per rate)", fps, rate, cpu, ""))
            print(rows[-1], flush=True)
            await client.close()
        finally:
            server.stop()
    return rows


def _row(server: str, fps: int, rate: float, cpu: float, work: float | str) -> dict:
    return {
        "server": server,
        "target_fps": fps,
        "delivered_fps": round(rate, 2),
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
    md = table(
        rows, ["server", "target_fps", "delivered_fps", "error_pct", "server_cpu_pct", "generation_cpu_pct"]
    )
    print(md)
    save("generate", rows, md, __doc__ or "")


if __name__ == "__main__":
    main()
