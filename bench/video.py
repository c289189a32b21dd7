"""Video round trip: raw aiortc echo vs stock fastrtc vs ours, same handler, same run.

Latency is measured per frame from the client's send time of a sequence number drawn into the
frame to the time the client decoded it back. Note: aiortc's receiver releases a frame only when
the next frame's first packet arrives, so every figure (baselines included) carries about one frame
interval (33 ms at 30 fps) of client-side delay that a browser does not add.
"""

from __future__ import annotations

import argparse
import asyncio

import httpx

from bench.common import OUR_PARAMS, measure, save, start_server, table
from tests.rtc_client import VideoClient

KINDS = ("raw", "stock", "ours")


# (server, handler, size) -> [(seconds since the window began, latency ms)]: for the latency plot
SERIES: dict[tuple[str, str, str], list[tuple[float, float]]] = {}


async def one_case(kind: str, handler: str, width: int, height: int, warmup: float, seconds: float) -> dict:
    server = start_server(kind, handler)
    try:
        client = VideoClient(server.base_url, width=width, height=height)
        await client.connect()
        params = OUR_PARAMS[handler] if kind == "ours" else {}
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            await http.post("/video/input", json={"webrtc_id": client.webrtc_id, **params})
        await asyncio.sleep(warmup)
        start = len(client.received)
        sample = await measure(server, client, seconds)
        window = client.received[start:]
        if window:
            SERIES[(kind, handler, f"{width}x{height}")] = [
                (r.at - window[0].at, r.latency_s * 1000) for r in window
            ]
        await client.close()
    finally:
        server.stop()
    return {"server": kind, "handler": handler, "size": f"{width}x{height}", **sample.summary()}


async def run(handlers: list[str], sizes: list[tuple[int, int]], warmup: float, seconds: float) -> list[dict]:
    rows = []
    for width, height in sizes:
        for handler in handlers:
            for kind in KINDS:
                row = await one_case(kind, handler, width, height, warmup, seconds)
                print(row, flush=True)
                rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--handlers", default="pass,cartoon,detect")
    parser.add_argument("--sizes", default="640x480,1280x720")
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    rows = asyncio.run(run(args.handlers.split(","), sizes, args.warmup, args.seconds))
    cols = ["size", "handler", "server", "median_ms", "p95_ms", "p99_ms", "fps", "server_cpu_pct", "rss_mb"]
    md = table(rows, cols)
    plot_latency()
    print(md)
    save("video", rows, md + "\n\n![latency over time](video-latency.png)", __doc__ or "")


def plot_latency() -> None:
    """Per-frame round-trip latency over the measured window, one panel per handler at 640x480."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.common import RESULTS

    handlers = sorted({h for (_, h, size) in SERIES if size == "640x480"})
    if not handlers:
        return
    fig, axes = plt.subplots(1, len(handlers), figsize=(5 * len(handlers), 3.8), squeeze=False)
    for ax, handler in zip(axes[0], handlers, strict=True):
        for kind in KINDS:
            points = SERIES.get((kind, handler, "640x480"))
            if points:
                ax.plot([t for t, _ in points], [ms for _, ms in points], lw=0.8, label=kind)
        ax.set(title=f"640x480 {handler}", xlabel="s", ylabel="round trip (ms)", yscale="log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "video-latency.png", dpi=100)


if __name__ == "__main__":
    main()
