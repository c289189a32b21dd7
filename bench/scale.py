"""Scale on one machine: how many concurrent sessions hold up, ours vs stock fastrtc, same run.

Video: N concurrent 640x480 30 fps pass-through sessions, each client in its own process. A step
"holds" when every session gets >= 28 fps with p95 < 150 ms. Memory per session is the server's
RSS growth over its idle RSS, divided by N. The clients (VP8 encode + decode at 30 fps each) share
this machine's cores with the server, so on a small machine the clients run out of CPU first:
read "server CPU %" to see what the server itself needs per session.

Chat: N concurrent WebRTC chat sessions, idle (the microphone sends silence) and active (each
speaks a sentence every ~3 s and gets the echo back): server CPU and RSS per session.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import psutil

from bench.common import RESULTS, save, start_server, table
from tests.audio_client import ChatClient, speech
from tests.rtc_client import percentile
from tests.server_process import ROOT, ServerProcess

SENTENCE = "the quick brown fox jumps over the lazy dog"


def server_usage(server: ServerProcess) -> tuple[psutil.Process, Any, float]:
    proc = psutil.Process(server.pid)
    return proc, proc.cpu_times(), time.monotonic()


def cpu_since(proc: psutil.Process, cpu0: Any, t0: float) -> float:
    cpu1 = proc.cpu_times()
    return 100 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / (time.monotonic() - t0)


async def video_step(
    server: ServerProcess, kind: str, n: int, warmup: float, seconds: float
) -> dict[str, Any]:
    clients = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.scale_client", server.base_url, kind, str(warmup), str(seconds)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        for _ in range(n)
    ]  # fmt: skip
    await asyncio.sleep(warmup + 2)  # connect + warm-up, then measure the server over the same window
    proc, cpu0, t0 = server_usage(server)
    await asyncio.sleep(seconds - 1)
    cpu = cpu_since(proc, cpu0, t0)
    rss = proc.memory_info().rss / 1e6
    results = []
    for client in clients:
        out, _ = await asyncio.to_thread(client.communicate, timeout=60)
        try:
            results.append(json.loads(out.strip().splitlines()[-1]))
        except (IndexError, json.JSONDecodeError):
            results.append({"fps": 0.0, "median_ms": float("nan"), "p95_ms": float("nan")})
    fps = [r["fps"] for r in results]
    p95 = max(r["p95_ms"] for r in results)
    holds = min(fps) >= 28 and p95 < 150
    return {
        "server": kind, "sessions": n, "min_fps": round(min(fps), 1),
        "median_fps": round(percentile(fps, 50), 1),
        "median_ms": round(percentile([r["median_ms"] for r in results], 50), 1),
        "worst_p95_ms": round(p95, 1), "server_cpu_pct": round(cpu), "rss_mb": round(rss),
        "holds": "yes" if holds else "no",
    }  # fmt: skip


async def video_scale(kind: str, steps: list[int], warmup: float, seconds: float) -> list[dict[str, Any]]:
    server = start_server(kind, ASSISTANT_ENABLED="false")
    rows = []
    try:
        await asyncio.sleep(3)
        idle_rss = psutil.Process(server.pid).memory_info().rss / 1e6
        for n in steps:
            row = await video_step(server, kind, n, warmup, seconds)
            row["mb_per_session"] = round((row["rss_mb"] - idle_rss) / n, 1)
            print(row, flush=True)
            rows.append(row)
            await asyncio.sleep(3)  # sessions end
            if row["holds"] == "no":  # one step past the limit shows it
                break
    finally:
        server.stop()
    return rows


async def chat_scale(kind: str, steps: list[int], seconds: float) -> list[dict[str, Any]]:
    server = start_server(kind, ASSISTANT_ENABLED="false")
    rows = []
    clip = speech(SENTENCE)
    try:
        await asyncio.sleep(3)
        proc = psutil.Process(server.pid)
        idle_rss = proc.memory_info().rss / 1e6
        for n in steps:
            clients = [ChatClient(server.base_url) for _ in range(n)]
            for client in clients:
                await client.connect()
            await asyncio.sleep(1.5)
            for activity in ("idle", "active"):
                talkers: list[asyncio.Task[Any]] = []
                if activity == "active":

                    async def talk(client: ChatClient, offset: float) -> None:
                        await asyncio.sleep(offset)
                        while True:
                            await client.mic.say(clip)
                            await asyncio.sleep(1.5)

                    talkers = [asyncio.create_task(talk(c, i * 0.37)) for i, c in enumerate(clients)]
                    await asyncio.sleep(2)
                _, cpu0, t0 = server_usage(server)
                heard_before = sum(len(c.received) for c in clients)
                await asyncio.sleep(seconds)
                cpu = cpu_since(proc, cpu0, t0)
                for task in talkers:
                    task.cancel()
                echoes = sum(1 for c in clients if c.reply_audio(t0)) if activity == "active" else "-"
                row = {
                    "server": kind, "activity": activity, "sessions": n, "server_cpu_pct": round(cpu, 1),
                    "cpu_pct_per_session": round(cpu / n, 1),
                    "mb_per_session": round((proc.memory_info().rss / 1e6 - idle_rss) / n, 1),
                    "sessions_hearing_echo": echoes,
                    "audio_frames": sum(len(c.received) for c in clients) - heard_before,
                }  # fmt: skip
                print(row, flush=True)
                rows.append(row)
            for client in clients:
                await client.close()
            await asyncio.sleep(2)
            if rows[-1]["server_cpu_pct"] > 180:  # both cores busy: stop climbing
                break
    finally:
        server.stop()
    return rows


def plot(video_rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for kind in sorted({r["server"] for r in video_rows}):
        rows = [r for r in video_rows if r["server"] == kind]
        n = [r["sessions"] for r in rows]
        ax1.plot(n, [r["min_fps"] for r in rows], "o-", label=kind)
        ax2.plot(n, [r["worst_p95_ms"] for r in rows], "o-", label=kind)
    ax1.axhline(28, color="gray", ls="--", lw=1)
    ax2.axhline(150, color="gray", ls="--", lw=1)
    ax1.set(xlabel="concurrent 640x480 sessions", ylabel="lowest session fps", title="Frame rate")
    ax2.set(
        xlabel="concurrent 640x480 sessions", ylabel="worst p95 latency (ms)", title="Latency", yscale="log"
    )
    for ax in (ax1, ax2):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / "scale.png", dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", default="1,2,4,6,8,10,12")
    parser.add_argument("--chat-steps", default="1,4,8,16,24")
    parser.add_argument(
        "--servers",
        default="ours,stock",
        help="video servers to compare; add raw (raw aiortc echo, +1.5 min)",
    )
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--warmup", type=float, default=3)
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    kinds = [k for k in args.servers.split(",") if k]
    video_rows = []
    for kind in kinds:
        video_rows += asyncio.run(video_scale(kind, steps, args.warmup, args.seconds))
    chat_steps = [int(s) for s in args.chat_steps.split(",")]
    chat_rows = asyncio.run(chat_scale("ours", chat_steps, args.seconds))
    chat_rows += asyncio.run(chat_scale("stock-chat", [s for s in chat_steps if s <= 4], args.seconds))
    plot(video_rows)
    held = {k: max([r["sessions"] for r in video_rows if r["server"] == k and r["holds"] == "yes"], default=0)
            for k in kinds}  # fmt: skip
    md = "## Video, 640x480 30 fps pass-through\n\n" + table(
        video_rows,
        ["server", "sessions", "min_fps", "median_fps", "median_ms", "worst_p95_ms", "server_cpu_pct", "rss_mb",
         "mb_per_session", "holds"],
    )  # fmt: skip
    md += "\n\nMost sessions holding >= 28 fps and p95 < 150 ms: " + ", ".join(
        f"{k} {v}" for k, v in held.items()
    )
    md += "."
    md += "\n\n## Chat over WebRTC (echo)\n\n" + table(
        chat_rows,
        ["server", "activity", "sessions", "server_cpu_pct", "cpu_pct_per_session", "mb_per_session",
         "sessions_hearing_echo", "audio_frames"],
    )  # fmt: skip
    md += "\n\n![sessions vs fps](scale.png)"
    print(md)
    save("scale", [*video_rows, *chat_rows, {"held": held}], md, __doc__ or "")


if __name__ == "__main__":
    main()
