"""Start the real server in a subprocess on a free loopback port; stop it by its own PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(
        self,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        log_name: str = "server",
        cli: list[str] | None = None,
    ):
        """`args`: run uvicorn with these instead of `python -m server`; `cli`: extra `python -m server` options."""
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.args = args
        self.cli = list(cli or [])
        self.env = {
            **os.environ,
            "ICE_HOST_ADDRESSES": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
            # every test client comes from 127.0.0.1: only the rate-limit tests keep a real limit
            "OFFER_RATE_PER_MINUTE": "100000",
            "OFFER_RATE_BURST": "1000",
            **(env or {}),
        }
        self.log_path = ROOT / "test-artifacts" / f"{log_name}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> ServerProcess:
        self.log_path.parent.mkdir(exist_ok=True)
        cmd = [sys.executable, "-m", "server", "--port", str(self.port), *self.cli]
        if self.args:
            cmd = [
                sys.executable,
                "-m",
                "uvicorn",
                *self.args,
                "--port",
                str(self.port),
                "--host",
                "127.0.0.1",
            ]
        log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"server did not become healthy: {self.log_path.read_text()[-3000:]}")

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def rss_mb(self) -> float:
        assert self.proc is not None
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss / 1e6

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
