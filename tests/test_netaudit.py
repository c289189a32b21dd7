"""The network audit itself: it catches a lookup and a connection (so it can fail), and onnxruntime
makes none with the server's defaults. Programs here run in a network namespace of their own that
has no interface up, so what they attempt is recorded by the audit and never leaves the machine."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests import netaudit
from tests.server_process import ROOT

pytestmark = [
    pytest.mark.skipif(not netaudit.available(), reason="strace is not installed (make test installs it)"),
    pytest.mark.skipif(
        shutil.which("unshare") is None or os.geteuid() != 0, reason="needs root and unshare -n"
    ),
]


def audited(
    name: str, code: str, env: dict[str, str] | None = None, timeout: float = 120
) -> list[netaudit.Attempt]:
    """Run `code` audited in an isolated network namespace, with the telemetry switch only as `env` sets it."""
    log = ROOT / "test-artifacts" / f"audit-{name}.net.log"
    log.parent.mkdir(exist_ok=True)
    cmd = netaudit.wrap(["unshare", "-n", sys.executable, "-c", code], log)
    base = {k: v for k, v in netaudit.as_deployed(dict(os.environ)).items() if k != "ORT_DISABLE_TELEMETRY"}
    proc = subprocess.run(cmd, cwd=ROOT, env={**base, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return netaudit.scan(log)


LEAKY = """
import socket
for call in (lambda: socket.getaddrinfo("telemetry.example.com", 443),
             lambda: socket.create_connection(("192.0.2.7", 443), timeout=1),
             lambda: socket.create_connection(("127.0.0.1", 9), timeout=1)):
    try:
        call()
    except OSError:
        pass
"""


def test_the_audit_catches_a_dns_lookup_and_a_connection_but_not_loopback():
    attempts = audited("leaky", LEAKY)
    assert any(a.port == 53 for a in attempts), [str(a) for a in attempts]
    assert any(a.address == "192.0.2.7" and a.port == 443 and a.call == "connect" for a in attempts)
    assert not any(a.address == "127.0.0.1" and a.port == 9 for a in attempts)
    lookup = next(a for a in attempts if a.port == 53)
    assert any("getaddrinfo" in frame for frame in lookup.stack), lookup.stack  # the stack names the call
    log = ROOT / "test-artifacts" / "audit-leaky.net.log"
    with pytest.raises(netaudit.NetworkAttempt, match="192.0.2.7 port 443"):
        netaudit.check(log, "a leaky program")


# What the server does with onnxruntime at start: the detector and the VAD (and, in assistant mode,
# Whisper's own VAD use and Piper) each make a session; telemetry would start with the first.
ORT_START = """
import time
import streams  # applies the server's offline defaults, as `python -m server` does
from server.config import DEFAULT_MODEL
from streams.detection import Detector
from streams.vad import SileroVAD
Detector(DEFAULT_MODEL).detect(__import__("numpy").zeros((480, 640, 3), "uint8"))
SileroVAD().warmup()
time.sleep(12)
"""


def test_onnxruntime_makes_no_lookup_with_the_server_defaults():
    attempts = audited("onnxruntime-defaults", ORT_START)
    assert attempts == [], [str(a) for a in attempts]


# `python -m server` in the isolated namespace, with its loopback up so it can bind and serve.
SERVER_IN_NAMESPACE = """
import fcntl, runpy, socket, struct, sys
fcntl.ioctl(socket.socket(), 0x8914, struct.pack("16sH", b"lo", 0x1 | 0x40))  # SIOCSIFFLAGS: lo up
sys.argv = ["server", "--port", "8765"]
runpy.run_module("server", run_name="__main__")
"""


def test_a_server_that_looks_things_up_fails_the_audit_naming_the_library():
    """The cause (issue 18): onnxruntime >= 1.29 sends 1DS telemetry on Linux unless
    ORT_DISABLE_TELEMETRY=1, the server's default. The real server with it switched back on makes
    lookups within seconds, and the audit fails, blaming onnxruntime's own library."""
    import time
    from importlib.metadata import version

    log = ROOT / "test-artifacts" / "audit-server-telemetry-on.net.log"
    env = {
        **netaudit.as_deployed(dict(os.environ)),
        "ORT_DISABLE_TELEMETRY": "0",
        "ICE_HOST_ADDRESSES": "127.0.0.1",
    }
    cmd = netaudit.wrap(["unshare", "-n", sys.executable, "-c", SERVER_IN_NAMESPACE], log)
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert proc.stdout is not None
        started, deadline = False, time.monotonic() + 120
        while not started and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "the server stopped"
            started = "Application startup complete" in line
        assert started, "the server did not start in 2 minutes"
        deadline = time.monotonic() + 60  # the first lookup came 6 s after start-up here
        while not netaudit.scan(log) and time.monotonic() < deadline:
            assert proc.poll() is None, "the server stopped"
            time.sleep(0.5)
    finally:
        netaudit.terminate(proc)
    major, minor = (int(x) for x in version("onnxruntime").split(".")[:2])
    if (major, minor) < (1, 29):
        assert netaudit.scan(log) == [], "onnxruntime before 1.29 had no telemetry on Linux"
        return
    with pytest.raises(netaudit.NetworkAttempt, match=r"port 53, from onnxruntime"):
        netaudit.check(log, "python -m server with ORT_DISABLE_TELEMETRY=0")


def test_a_call_split_by_another_thread_keeps_its_stack(tmp_path):
    """strace prints `<unfinished ...>` and later `<... connect resumed>`, with the stack after the
    second line: the library must still be named (it was "?" on CI's first lookups)."""
    log = tmp_path / "split.net.log"
    log.write_text(
        '7 connect(21, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.0.0.53")}, 16 <unfinished ...>\n'
        "8 futex(0x1, FUTEX_WAKE, 1) = 0\n"
        "7  <... connect resumed>)            = -1 ENETUNREACH (Network is unreachable)\n"
        " > /usr/lib/x86_64-linux-gnu/libc.so.6(__connect+0x4b) [0x10a7fb]\n"
        " > /usr/lib/x86_64-linux-gnu/libc.so.6(getaddrinfo+0x1506) [0x1]\n"
        " > /site-packages/onnxruntime/capi/onnxruntime_pybind11_state.so(PyInit+0x1) [0x2]\n"
    )
    (attempt,) = netaudit.scan(log)
    assert attempt.port == 53 and attempt.library.startswith("onnxruntime_pybind11_state"), attempt.stack
