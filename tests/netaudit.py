"""Network audit: server processes started by the tests run under strace, and any attempt to reach a
non-loopback address, or a DNS server (port 53, even on loopback), fails the test, naming the
process, the address, the call and the library on the call stack that made it.

`strace --seccomp-bpf` stops the process only on the traced calls, `-k` records each one's stack.
Traced: `connect` (every TCP connection and every DNS lookup starts with one: glibc connects its
UDP socket to the resolver) and `sendto`. Not traced: `sendmsg`, which uvloop uses for every RTP
packet on loopback; unwinding a stack per media packet stalls the event loop (a browser session
fell to 1 fps), and nothing that looks a name up or opens a connection goes by it alone.
Addresses of this machine's own interfaces count as local (traffic to them never leaves it; a
browser on the same machine offers them as ICE candidates).
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STRACE = shutil.which("strace")
CALLS = "connect,sendto"

_CALL = re.compile(r"^(?P<pid>\d+)\s+(?P<call>connect|sendto|sendmsg)\((?P<args>.*)$")
_INET = re.compile(
    r'sa_family=AF_INET, sin_port=htons\((?P<port>\d+)\), sin_addr=inet_addr\("(?P<addr>[\d.]+)"\)'
)
_INET6 = re.compile(
    r'sa_family=AF_INET6, sin6_port=htons\((?P<port>\d+)\).*?inet_pton\(AF_INET6, "(?P<addr>[0-9a-fA-F:.]+)"'
)
_RESUMED = re.compile(r"^(?P<pid>\d+)\s+<\.\.\. (?:connect|sendto|sendmsg) resumed>")
_FRAME = re.compile(r"^\s*>\s*(?P<path>\S+?)(?:\((?P<symbol>[^)]*)\))?\s+\[0x[0-9a-f]+\]")
# Frames that only pass the call along: the library to blame is the first one not in this list.
_PLUMBING = ("libc.so", "libc-", "libpthread", "ld-linux", "libresolv", "libnss_", "/python3", "libpython")


# onnxruntime (1.32) switches its telemetry off when one of these CI variables is set (CI=true too), so under CI an
# audited server would look clean whatever its settings. Audited processes run without them, as a
# deployed server does; found by reading the library's strings after the audit passed on CI only.
CI_MARKERS = ("CI", "TF_BUILD", "GITHUB_ACTIONS", "GITLAB_CI", "CIRCLECI", "TRAVIS", "JENKINS_URL",
              "CODEBUILD_BUILD_ID", "BUILDKITE", "TEAMCITY_VERSION", "APPVEYOR", "BITBUCKET_BUILD_NUMBER")  # fmt: skip


def as_deployed(env: dict[str, str]) -> dict[str, str]:
    """`env` without the variables that make libraries behave differently under CI."""
    return {k: v for k, v in env.items() if k not in CI_MARKERS}


def available() -> bool:
    return STRACE is not None


def wrap(cmd: list[str], log: Path) -> list[str]:
    """`cmd` under the audit, writing what it attempted to `log`."""
    assert STRACE is not None
    return [STRACE, "-f", "-qq", "--seccomp-bpf", "-k", "-e", f"trace={CALLS}", "-e", "signal=none",
            "-o", str(log), "--", *cmd]  # fmt: skip


@dataclass
class Attempt:
    pid: int
    call: str
    address: str
    port: int
    stack: list[str] = field(default_factory=list)

    @property
    def library(self) -> str:
        for frame in self.stack:
            if not any(p in frame for p in _PLUMBING):
                return frame
        return self.stack[0] if self.stack else "?"

    def __str__(self) -> str:
        return f"pid {self.pid}: {self.call} to {self.address} port {self.port}, from {self.library}"


def _local_addresses() -> set[str]:
    import psutil

    return {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs}


def _is_allowed(address: str, port: int, local: set[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if port == 53:  # a DNS query, wherever the resolver is
        return False
    return ip.is_loopback or ip.is_unspecified or str(ip) in local


def scan(log: Path) -> list[Attempt]:
    """Every attempt in an audit log to reach beyond loopback."""
    attempts: list[Attempt] = []
    current: Attempt | None = None
    unfinished: dict[int, Attempt] = {}  # by pid: calls whose stack comes after their "resumed" line
    local = _local_addresses()
    for line in log.read_text(errors="replace").splitlines():
        frame = _FRAME.match(line)
        if frame is not None:
            if current is not None:
                where = frame["path"].rsplit("/", 1)[-1]
                current.stack.append(f"{where}({frame['symbol']})" if frame["symbol"] else where)
            continue
        current = None
        resumed = _RESUMED.match(line)
        if resumed is not None:  # a call split by another thread's: its stack follows this line
            current = unfinished.pop(int(resumed["pid"]), None)
            continue
        call = _CALL.match(line)
        if call is None:
            continue
        found = _INET.search(call["args"]) or _INET6.search(call["args"])
        if found is None:
            continue  # AF_UNIX, AF_NETLINK, AF_UNSPEC (disconnect), or a connected socket's send
        port = int(found["port"])
        if _is_allowed(found["addr"], port, local):
            continue
        current = Attempt(int(call["pid"]), call["call"], found["addr"], port)
        attempts.append(current)
        if call["args"].rstrip().endswith("<unfinished ...>"):
            unfinished[current.pid], current = current, None
    return attempts


class NetworkAttempt(AssertionError):
    """A server process tried to reach beyond loopback."""


def check(log: Path, what: str) -> None:
    attempts = scan(log) if log.exists() else []
    if attempts:
        shown = "\n".join(f"  {a}" for a in attempts[:10])
        more = f"\n  ... and {len(attempts) - 10} more" if len(attempts) > 10 else ""
        raise NetworkAttempt(f"{what} tried to reach the network (audit log {log}):\n{shown}{more}")


def terminate(proc: subprocess.Popen[Any], timeout: float = 15) -> int:
    """SIGTERM the audited program (strace's child; signalling strace would only detach it)."""
    import psutil

    targets = psutil.Process(proc.pid).children() if available() else []
    for target in targets or [psutil.Process(proc.pid)]:
        target.send_signal(signal.SIGTERM)
    return proc.wait(timeout)
