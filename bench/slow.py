"""Slow handler: 200 ms per frame for a minute; ours vs stock fastrtc with and without skip_frames.

Reports latency, output fps and server RSS over time, plus a plot (bench/results/slow.png).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx

from bench.common import OUR_PARAMS, RESULTS, save, start_server, table
from tests.rtc_client import VideoClient, percentile

CASES = [("ours", False), ("stock", True), ("stock", False)]


async def one_case(kind: str, skip: bool, seconds: float, step: float) -> dict:
    server = start_server(kind, "slow200", skip_frames=skip)
    timeline = []
    try:
        client = VideoClient(server.base_url)
        await client.connect()
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            params = OUR_PARAMS["slow200"] if kind == "ours" else {}
            await http.post("/video/input", json={"webrtc_id": client.webrtc_id, **params})
        await asyncio.sleep(2)
        rss0 = server.rss_mb()
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            start = len(client.received)
            await asyncio.sleep(step)
            window = client.received[start:]
            lat = [r.latency_s * 1000 for r in window]
            timeline.append(
                {
                    "t_s": round(time.monotonic() - t0),
                    "p50_ms": round(percentile(lat, 50)),
                    "p95_ms": round(percentile(lat, 95)),
                    "fps": round(len(window) / step, 1),
                    "rss_mb": round(server.rss_mb(), 1),
                }
            )
        await client.close()
    finally:
        server.stop()
    name = f"{kind}{' skip_frames' if skip else ''}" if kind == "stock" else kind
    all_p95 = [p["p95_ms"] for p in timeline]
    return {
        "server": name,
        "first_p50_ms": timeline[0]["p50_ms"],
        "last_p50_ms": timeline[-1]["p50_ms"],
        "max_p95_ms": max(all_p95),
        "mean_fps": round(sum(p["fps"] for p in timeline) / len(timeline), 1),
        "rss_growth_mb": round(timeline[-1]["rss_mb"] - rss0, 1),
        "timeline": timeline,
    }


def plot(rows: list[dict]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for row in rows:
        ts = [p["t_s"] for p in row["timeline"]]
        a.plot(ts, [p["p50_ms"] / 1000 for p in row["timeline"]], label=row["server"])
        b.plot(ts, [p["rss_mb"] for p in row["timeline"]], label=row["server"])
    a.set(xlabel="seconds", ylabel="median latency (s)", yscale="log", title="200 ms handler: latency")
    b.set(xlabel="seconds", ylabel="server RSS (MB)", title="memory")
    a.legend()
    b.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "slow.png", dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--step", type=float, default=5)
    args = parser.parse_args()
    rows = [asyncio.run(one_case(k, s, args.seconds, args.step)) for k, s in CASES]
    for r in rows:
        print(r["server"], r["timeline"], flush=True)
    cols = ["server", "first_p50_ms", "last_p50_ms", "max_p95_ms", "mean_fps", "rss_growth_mb"]
    md = table(rows, cols)
    print(md)
    plot(rows)
    save("slow", rows, md, __doc__ or "")


if __name__ == "__main__":
    main()
