"""`python -m bench.summary`: one file, bench/results/SUMMARY.md, with the machine and every
benchmark's latest table (each written by its own script to bench/results/<name>.md)."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

import psutil

from bench.common import RESULTS

ORDER = ["video", "slow", "scale", "generate", "turns", "detection"]
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
    ]
    for name in ORDER:
        path = RESULTS / f"{name}.md"
        if not path.exists():
            parts += ["", f"## {name}", "", "(not run yet)"]
            continue
        body = path.read_text().strip().splitlines()
        parts += ["", f"## {name}", "", *[re.sub(r"^(#+) ", r"#\1# ", line) for line in body[1:]]]
    (RESULTS / "SUMMARY.md").write_text("\n".join(parts) + "\n")
    print(f"wrote {RESULTS / 'SUMMARY.md'}")


if __name__ == "__main__":
    main()
