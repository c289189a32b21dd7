"""Recording's cost to the session: the /video echo round trip with RECORD off and on, same run.

Two servers, identical but for RECORD, are measured in turns (off, on, on, off, ...: drift in the
machine's load falls on both alike); each turn is a fresh 640x480 30 fps session through the
pass-through handler, measured after a warm-up. Latency is per frame, from the client's send to its
decode of the frame coming back (see bench/video.py for the ~1 frame interval every figure carries).
With RECORD on each session is also encoded to two files (H.264 in and out) by its writer thread.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import tempfile
from pathlib import Path

import httpx

from bench.common import OUR_PARAMS, measure, save, start_server, table
from tests.rtc_client import VideoClient, percentile
from tests.server_process import ServerProcess

CONFIGS = ("off", "on")


def recorded_bytes(server: ServerProcess) -> float:
    text = httpx.get(f"{server.base_url}/metrics").text
    found = re.search(r'^rt_recording_bytes_total\{stream="video"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def dropped(server: ServerProcess) -> float:
    text = httpx.get(f"{server.base_url}/metrics").text
    found = re.search(r'^rt_recording_dropped_frames_total\{stream="video"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


async def one_turn(server: ServerProcess, warmup: float, seconds: float) -> dict:
    client = VideoClient(server.base_url)
    await client.connect()
    try:
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            await http.post("/video/input", json={"webrtc_id": client.webrtc_id, **OUR_PARAMS["pass"]})
        await asyncio.sleep(warmup)
        sample = await measure(server, client, seconds)
    finally:
        await client.close()
    return {
        "latencies": sample.latencies_ms,
        "frames": sample.fps * seconds,
        "cpu_s": sample.cpu_pct * seconds / 100,
    }


async def run(turns: int, warmup: float, seconds: float, record_dir: Path) -> list[dict]:
    servers = {
        "off": start_server("ours", "pass"),
        "on": start_server("ours", "pass", RECORD="true", RECORD_DIR=str(record_dir)),
    }
    results: dict[str, list[dict]] = {config: [] for config in CONFIGS}
    try:
        for turn in range(turns):
            order = CONFIGS if turn % 2 == 0 else CONFIGS[::-1]
            for config in order:
                results[config].append(await one_turn(servers[config], warmup, seconds / turns))
                print(config, turn, flush=True)
        bytes_on, dropped_on = recorded_bytes(servers["on"]), dropped(servers["on"])
    finally:
        for server in servers.values():
            server.stop()
    rows = []
    for config in CONFIGS:
        latencies = [ms for r in results[config] for ms in r["latencies"]]
        measured_s = seconds
        rows.append({
            "record": config,
            "median_ms": round(percentile(latencies, 50), 1),
            "p90_ms": round(percentile(latencies, 90), 1),
            "p99_ms": round(percentile(latencies, 99), 1),
            "fps": round(sum(r["frames"] for r in results[config]) / measured_s, 1),
            "server_cpu_pct": round(100 * sum(r["cpu_s"] for r in results[config]) / measured_s, 1),
            "recorded_kb_per_s": round(bytes_on / 1000 / (turns * (seconds / turns + warmup)), 1)
            if config == "on" else "",
            "recording_drops": int(dropped_on) if config == "on" else "",
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20, help="measured seconds per configuration")
    parser.add_argument("--turns", type=int, default=4, help="sessions per configuration, alternating")
    parser.add_argument("--warmup", type=float, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-recordings-") as tmp:
        rows = asyncio.run(run(args.turns, args.warmup, args.seconds, Path(tmp)))
    cols = ["record", "median_ms", "p90_ms", "p99_ms", "fps", "server_cpu_pct", "recorded_kb_per_s",
            "recording_drops"]  # fmt: skip
    md = table(rows, cols)
    print(md)
    save("recording", rows, md, __doc__ or "")


if __name__ == "__main__":
    main()
