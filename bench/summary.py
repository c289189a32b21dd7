"""`python -m bench.summary`: one file, bench/results/SUMMARY.md, with the machine and every
benchmark's latest table (each written by its own script to bench/results/<name>.md)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import subprocess
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from bench.common import RESULTS, table

ORDER = ["video", "slow", "scale", "generate", "turns", "memory", "detection", "tracking", "recording"]
PACKAGES = ["fastrtc", "aiortc", "aioice", "av", "onnxruntime", "opencv-python-headless", "numpy", "uvicorn"]


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        match = re.search(r"^model name\s*:\s*(.+)$", text, flags=re.M)
        if match:
            return match.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> str:
    versions = []
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions.append(f"{name} {metadata.version(name)}")
    try:
        gpu = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        gpu = ""
    return "\n".join(
        [
            f"- CPU: {cpu_model()}, {psutil.cpu_count(logical=True)} logical cores "
            f"({len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'} usable)",
            f"- Memory: {psutil.virtual_memory().total / 2**30:.0f} GiB",
            f"- GPU: {gpu or 'none'}",
            f"- OS: {platform.platform()}",
            f"- Python: {platform.python_version()}",
            f"- Packages: {', '.join(versions)}",
        ]
    )


COLUMN = {"ours": "ours", "stock": "stock fastrtc", "raw": "raw aiortc"}


def load(name: str) -> list[dict[str, Any]]:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text())["rows"] if path.exists() else []


def pick(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    return next(r for r in rows if all(r.get(k) == v for k, v in match.items()))


def video_lines(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def ms(server: str, handler: str) -> str:
        r = pick(rows, server=server, handler=handler, size="640x480")
        return f"{r['median_ms']} / {r['p95_ms']} ms, {r['fps']} fps"

    return [
        {
            "benchmark": "video",
            "measure": f"640x480 {h}: median / p95 round trip, fps",
            "ours": ms("ours", h),
            "stock fastrtc": ms("stock", h),
            "raw aiortc": ms("raw", h),
        }
        for h in ("pass", "cartoon", "detect")
    ]


def slow_lines(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def last(server: str) -> str:
        r = pick(rows, server=server)
        return f"{r['last_p50_ms']} ms, RSS +{r['rss_growth_mb']} MB"

    return [
        {
            "benchmark": "slow",
            "measure": "200 ms handler, after 60 s: p50 latency, RSS growth",
            "ours": last("ours"),
            "stock fastrtc": f"{last('stock')} ({last('stock skip_frames')} with skip_frames)",
        }
    ]


def scale_lines(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    held = next(r["held"] for r in rows if "held" in r)

    def idle(server: str) -> str:
        """One session's cost and the largest step's total: a per-session share of a saturated
        core (stock's busy loops at 4 sessions) would read as cheap on its own."""
        steps = sorted(
            (r for r in rows if r.get("server") == server and r.get("activity") == "idle"),
            key=lambda r: r["sessions"],
        )
        if not steps:
            raise ValueError(server)
        one, most = steps[0], steps[-1]
        return f"{one['server_cpu_pct']}% for {one['sessions']}, {most['server_cpu_pct']}% for {most['sessions']}"

    lines = [
        {
            "benchmark": "scale",
            "measure": "640x480 30 fps sessions holding >= 28 fps, p95 < 150 ms",
            **{COLUMN.get(k, k): v for k, v in held.items()},
        }
    ]
    with contextlib.suppress(ValueError):
        lines.append(
            {
                "benchmark": "scale",
                "measure": "idle chat sessions: server CPU, % of a core in all",
                "ours": idle("ours"),
                "stock fastrtc": idle("stock-chat"),
            }
        )
    return lines


def generate_lines(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def at30(prefix: str) -> str:
        r = next(r for r in rows if r["server"].startswith(prefix) and r["target_fps"] == 30)
        return f"{r['delivered_fps']} fps, peak {r['peak_fps_after_input']}"

    return [
        {
            "benchmark": "generate",
            "measure": "30 fps target: delivered, peak over 0.25 s after an input",
            "ours": at30("ours"),
            "stock fastrtc": at30("stock"),
        }
    ]


def turns_lines(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ours = pick(rows, server="ours", detector="vad", mode="echo", sentences="complete", transport="webrtc")
    stock = pick(rows, server="stock ReplyOnPause", mode="echo", sentences="complete", transport="webrtc")
    extra = next((r for r in rows if "ours_idle_cpu_pct" in r), {})
    lines = [
        {
            "benchmark": "turns",
            "measure": "echo over WebRTC: end of speech to first reply audio (median)",
            "ours": f"{ours['median_ms']} ms",
            "stock fastrtc": f"{stock['median_ms']} ms",
        }
    ]
    for voice in ("espeak", "piper"):
        hesitation = {"sentences": f"hesitation ({voice})", "transport": "webrtc"}
        lines.append(
            {
                "benchmark": "turns",
                "measure": f"false ends of turn, 600-900 ms hesitations ({voice}); ours: CHAT_TURN_DETECTOR=smart",
                "ours": pick(rows, server="ours", detector="smart", **hesitation)["false_ends"],
                "stock fastrtc": pick(rows, server="stock ReplyOnPause", **hesitation)["false_ends"],
            }
        )
    if extra:
        lines.append(
            {
                "benchmark": "turns",
                "measure": "idle voice session: server CPU of a core",
                "ours": f"{extra['ours_idle_cpu_pct']}%",
                "stock fastrtc": f"{extra['stock_idle_cpu_pct']}%",
            }
        )
    return lines


def memory_lines(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def mb(server: str, contains: str = "") -> str:
        return f"{next(r for r in rows if r['server'] == server and contains in r['what'])['rss_mb']:.0f} MB"

    return [
        {
            "benchmark": "memory",
            "measure": "resident before any session: one video stream (ours: a user stream alone)",
            "ours": mb("ours-user"),
            "stock fastrtc": mb("stock"),
        },
    ]


def detection_lines(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "benchmark": "detection",
            "measure": f"{r['model']} at {r['threads']} thread(s): median ms, max fps",
            "ours": f"{r['median_ms']} ms, {r['max_fps']} fps",
        }
        for r in rows
    ]


def tracking_lines(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    fastest = max(rows, key=lambda r: float(r["speed_px_per_frame"]))["speed_px_per_frame"]

    def at(approach: str) -> dict[str, Any]:
        return next(
            r for r in rows if r["speed_px_per_frame"] == fastest and r["approach"].startswith(approach)
        )

    def cell(row: dict[str, Any]) -> str:
        return f"{row['err_mean_px']} px, {row['out_fps']} fps"

    return [
        {
            "benchmark": "tracking",
            "measure": f"box error (mean) and output rate, person moving {fastest} px/frame; stock column: "
            "stock's way (detect every frame in the handler), same detector, same process",
            "ours": f"{cell(at('b.'))} (untracked: {cell(at('a.'))})",
            "stock fastrtc": cell(at("c.")),
        }
    ]


def recording_lines(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    on, off = pick(rows, record="on"), pick(rows, record="off")
    return [
        {
            "benchmark": "recording",
            "measure": "video round trip median and server CPU, RECORD on (off); stock cannot record",
            "ours": f"{on['median_ms']} ms, {on['server_cpu_pct']}% ({off['median_ms']} ms, {off['server_cpu_pct']}%)",
        }
    ]


HEADLINES: dict[str, Callable[[list[dict[str, Any]]], list[dict[str, Any]]]] = {
    "video": video_lines,
    "slow": slow_lines,
    "scale": scale_lines,
    "generate": generate_lines,
    "turns": turns_lines,
    "memory": memory_lines,
    "detection": detection_lines,
    "tracking": tracking_lines,
    "recording": recording_lines,
}


def headlines() -> str:
    """One row per headline figure, read from the JSON results (a missing or older result is skipped)."""
    lines = []
    for name, build in HEADLINES.items():
        with contextlib.suppress(KeyError, StopIteration, TypeError, ValueError):
            lines += build(load(name))
    if not lines:
        return "(no results yet)"
    columns = ["benchmark", "measure", "ours", "stock fastrtc", "raw aiortc"]
    return table([{c: r.get(c, "") for c in columns} for r in lines], columns)


def main() -> None:
    parts = [
        "# Benchmark summary",
        "",
        "Written by `make bench` (`python -m bench.summary` alone rebuilds it from the latest results).",
        "Each table compares against its baselines measured in the same run, on this machine; the dates say when each ran.",
        "",
        "## Machine",
        "",
        machine_description(),
        "",
        "## Headlines",
        "",
        headlines(),
        "",
        "Details of each benchmark follow (its own bench/results/<name>.md).",
    ]
    for name in ORDER:
        path = RESULTS / f"{name}.md"
        if not path.exists():
            parts += ["", f"## {name}", "", "(not run yet)"]
            continue
        body = path.read_text().strip().splitlines()
        body = body[1:]
        while body and not body[0].strip():  # the title line is replaced by ours
            body = body[1:]
        parts += ["", f"## {name}", "", *[re.sub(r"^(#+) ", r"#\1# ", line) for line in body]]
    (RESULTS / "SUMMARY.md").write_text("\n".join(parts) + "\n")
    print(f"wrote {RESULTS / 'SUMMARY.md'}")


if __name__ == "__main__":
    main()
