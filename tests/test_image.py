"""The container image's commands, run directly (no Docker engine here): its CMD starts a working
server, and its HEALTHCHECK passes while that server is up and fails once it is gone."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests import netaudit
from tests.server_process import ROOT, free_port

# The CPU image is the default build; the GPU image (its own file) is built on top of it.
DOCKERFILES = {"cpu": (ROOT / "Dockerfile").read_text(), "gpu": (ROOT / "Dockerfile.gpu").read_text()}


def stage(name: str) -> str:
    """The text of one build stage (each file has one)."""
    text = DOCKERFILES[name]
    assert re.findall(r"^FROM \S+ AS (\S+)$", text, flags=re.M) == [name]
    return re.split(r"^FROM .*$", text, flags=re.M)[1]


def exec_form(instruction: str, text: str) -> list[str]:
    match = re.search(rf"^{instruction}\b.*?(\[.*\])\s*$", text, flags=re.M)
    assert match, f"no exec-form {instruction} in the stage"
    return json.loads(match.group(1))


def localize(cmd: list[str], port: int) -> list[str]:
    return [sys.executable if a == "python" else str(port) if a == "8000" else a for a in cmd]


def health(cmd: list[str], port: int) -> int:
    env = {**os.environ, "PORT": str(port)}
    return subprocess.run(localize(cmd, port), cwd=ROOT, env=env, capture_output=True, timeout=15).returncode


def test_every_stage_copies_what_exists_and_stays_offline():
    for name in ("cpu", "gpu"):
        text = stage(name)
        for line in re.findall(r"^COPY (.+) \S+$", text, flags=re.M):
            for source in line.split():
                assert (ROOT / source).exists(), f"{name}: COPY {source} does not exist"
        assert re.findall(r"^USER (\S+)$", text, flags=re.M)[-1] == "app", name
    assert "HF_HUB_OFFLINE=1" in stage("cpu")  # the GPU image inherits its environment and CMD
    assert not re.search(r"^CMD", stage("gpu"), flags=re.M)
    assert exec_form("HEALTHCHECK", stage("gpu")) == exec_form("HEALTHCHECK", stage("cpu"))


def test_image_entry_point_serves_and_healthcheck_tells_up_from_down():
    text = stage("cpu")
    command = exec_form("CMD", text)
    check = exec_form("HEALTHCHECK", text)
    port = free_port()
    assert health(check, port) == 1  # nothing listening yet
    env = {
        **netaudit.as_deployed(dict(os.environ)),
        "ASSISTANT_ENABLED": "false",
        "ICE_HOST_ADDRESSES": "127.0.0.1",
    }
    log = open(ROOT / "test-artifacts" / f"image-cmd-{port}.log", "wb")  # noqa: SIM115
    audit = ROOT / "test-artifacts" / f"image-cmd-{port}.net.log"
    cmd = netaudit.wrap(localize(command, port), audit) if netaudit.available() else localize(command, port)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while health(check, port) != 0:
            assert proc.poll() is None, Path(log.name).read_text()[-2000:]
            assert time.monotonic() < deadline, "the image's command never became healthy"
            time.sleep(0.5)
        page = httpx.get(f"http://127.0.0.1:{port}/")
        assert page.status_code == 200 and "rtserver" in page.text
    finally:
        netaudit.terminate(proc)
        log.close()
    assert health(check, port) == 1
    netaudit.check(audit, "the image's command")
