"""Resident memory before any session: what a server costs just for being up, ours against stock.

Each server starts fresh (the same harness as the other benchmarks: every process, stock included,
imports fastrtc and so gradio; a bare aiortc process would be smaller, so no "raw" row here), is waited on until ready (ours: `/readyz`, so the assistant's background
models are in), settles 3 s, and its resident set size is read once; no session is ever opened.
"""

from __future__ import annotations

import time

import httpx
import psutil

from bench.common import save, start_server, table

SERVERS = [
    ("stock", "stock fastrtc, one video Stream", {}),
    ("stock-chat", "stock fastrtc, one ReplyOnPause Stream", {}),
    ("ours-user", "ours, one user video stream (BUILTIN_STREAMS=)", {}),
    ("ours", "ours, all built-ins, assistant off", {"ASSISTANT_ENABLED": "false"}),
    ("ours", "ours, all built-ins, assistant loaded (default)", {}),
]


def resident_mb(kind: str, extra_env: dict[str, str]) -> float:
    server = start_server(kind, **extra_env)
    try:
        deadline = time.monotonic() + 180
        while httpx.get(f"{server.base_url}/readyz", timeout=5).status_code == 503:  # ours: models loading
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind} not ready in 180 s")
            time.sleep(0.5)
        time.sleep(3)
        return psutil.Process(server.pid).memory_info().rss / 2**20
    finally:
        server.stop()


def main() -> None:
    rows = []
    for kind, label, env in SERVERS:
        mb = resident_mb(kind, env)
        print(f"{label}: {mb:.0f} MB", flush=True)
        rows.append({"server": kind, "what": label, "rss_mb": round(mb, 1)})
    save("memory", rows, table(rows, ["what", "rss_mb"]),
         "Resident set size of the server process once ready, before any session.")  # fmt: skip


if __name__ == "__main__":
    main()
