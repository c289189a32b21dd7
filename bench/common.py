"""Shared helpers: start a bench server, measure a client session, print and save tables."""

from __future__ import annotations

import asyncio
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests.rtc_client import VideoClient, percentile
from tests.server_process import ServerProcess

RESULTS = Path(__file__).resolve().parent / "results"

OUR_PARAMS = {
    "pass": {"filter": "none"},
    "cartoon": {"filter": "cartoon"},
    "detect": {"detect": True},
    "slow200": {"filter": "slow200"},
}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{psutil.cpu_count()} cores ({cpu}), {psutil.virtual_memory().total / 2**30:.0f} GiB, {platform.platform()}"


def start_server(
    kind: str, handler: str = "pass", skip_frames: bool = False, fps: int = 30, **extra_env: str
) -> ServerProcess:
    env = {
        **extra_env,
        "BENCH_SERVER": kind,
        "BENCH_HANDLER": handler,
        "BENCH_SKIP_FRAMES": "1" if skip_frames else "0",
        "BENCH_FPS": str(fps),
    }
    # no network audit here: strace stops would skew the timings (the tests audit the same code)
    return ServerProcess(
        args=["--factory", "bench.servers:app"], env=env, log_name=f"bench-{kind}", audit=False
    ).start()


@dataclass
class Sample:
    """One measured window of one session."""

    latencies_ms: list[float] = field(default_factory=list)
    fps: float = 0.0
    cpu_pct: float = 0.0
    rss_mb: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "median_ms": round(percentile(self.latencies_ms, 50), 1),
            "p95_ms": round(percentile(self.latencies_ms, 95), 1),
            "p99_ms": round(percentile(self.latencies_ms, 99), 1),
            "fps": round(self.fps, 1),
            "server_cpu_pct": round(self.cpu_pct, 1),
            "rss_mb": round(self.rss_mb, 1),
        }


async def measure(server: ServerProcess, client: VideoClient, seconds: float) -> Sample:
    proc = psutil.Process(server.pid)
    cpu0, t0 = proc.cpu_times(), time.monotonic()
    start = len(client.received)
    await asyncio.sleep(seconds)
    cpu1, t1 = proc.cpu_times(), time.monotonic()
    window = client.received[start:]
    return Sample(
        latencies_ms=[r.latency_s * 1000 for r in window],
        fps=len(window) / (t1 - t0),
        cpu_pct=100 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / (t1 - t0),
        rss_mb=proc.memory_info().rss / 1e6,
    )


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    line = "| " + " | ".join(c.ljust(widths[c]) for c in columns) + " |"
    sep = "|" + "|".join("-" * (widths[c] + 2) for c in columns) + "|"
    body = ["| " + " | ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) + " |" for r in rows]
    return "\n".join([line, sep, *body])


def save(name: str, rows: list[dict[str, Any]], markdown: str, notes: str = "") -> None:
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M")
    (RESULTS / f"{name}.json").write_text(
        json.dumps({"machine": machine(), "at": stamp, "rows": rows}, indent=1)
    )
    (RESULTS / f"{name}.md").write_text(f"# {name}\n\n{stamp}, {machine()}\n\n{markdown}\n\n{notes}\n")
