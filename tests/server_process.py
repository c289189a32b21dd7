"""Start the real server in a subprocess on a free loopback port, under the network audit
(`tests.netaudit`); stop it by its own PID, then fail if it tried to reach beyond loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from tests import netaudit

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
        audit: bool = True,
    ):
        """`args`: run uvicorn with these instead of `python -m server`; `cli`: extra `python -m server`
        options; `audit=False` (benchmarks only): no strace, whose stops would skew the timings."""
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.args = args
        self.cli = list(cli or [])
        self.env = {
            **os.environ,
            "ICE_HOST_ADDRESSES": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
            # every test client comes from 127.0.0.1: only the limit tests keep real per-client limits
            "OFFER_RATE_PER_MINUTE": "100000",
            "OFFER_RATE_BURST": "1000",
            "MAX_PENDING_OFFERS_PER_CLIENT": "1000",
            **(env or {}),
        }
        self.log_path = ROOT / "test-artifacts" / f"{log_name}-{self.port}.log"
        self.audit_log = self.log_path.with_suffix(".net.log")
        self.audited = audit and netaudit.available()
        if self.audited:
            self.env = netaudit.as_deployed(self.env)
        self.proc: subprocess.Popen[bytes] | None = None  # strace, with the server as its child

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
        if self.audited:
            cmd = netaudit.wrap(cmd, self.audit_log)
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

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            self.stop()
        except netaudit.NetworkAttempt:
            if exc_type is None:  # report it unless the test already failed for another reason
                raise

    @property
    def pid(self) -> int:
        """The server's own PID (the audit's strace is its parent)."""
        assert self.proc is not None
        if not self.audited:
            return self.proc.pid
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            children = psutil.Process(self.proc.pid).children()
            if children:
                return children[0].pid
            time.sleep(0.02)
        raise RuntimeError("the audited server process did not start")

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def rss_mb(self) -> float:
        return psutil.Process(self.pid).memory_info().rss / 1e6

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL), then check its network audit."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.signal(signal.SIGTERM)
                self.proc.wait(10)
            except (subprocess.TimeoutExpired, ProcessLookupError, psutil.NoSuchProcess, RuntimeError):
                for child in psutil.Process(self.proc.pid).children(recursive=True):
                    child.kill()
                self.proc.kill()
                self.proc.wait(5)
        if self.audited:
            netaudit.check(self.audit_log, f"the server on port {self.port} ({self.log_path.name})")
