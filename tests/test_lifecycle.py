"""Sessions end, and free their slots, when a client dies without a goodbye."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from tests.server_process import ROOT, ServerProcess


@pytest.fixture(scope="module")
def fast_dead_peer_server():
    with ServerProcess(env={"ICE_DEAD_PEER_TIMEOUT_S": "3"}, log_name="dead-peer") as proc:
        yield proc


@pytest.mark.parametrize("kind", ["generate", "video"])
def test_killed_client_is_cleaned_up(fast_dead_peer_server, kind):
    server = fast_dead_peer_server
    client = subprocess.Popen(
        [sys.executable, "-m", "tests.client_proc", server.base_url, kind],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    try:
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "ready"
        assert httpx.get(f"{server.base_url}/healthz").json()["streams"][kind] == 1
        client.kill()  # no close, no BYE: the peer just vanishes
        client.wait(5)
        killed = time.monotonic()
        while time.monotonic() - killed < 20:
            if httpx.get(f"{server.base_url}/healthz").json()["streams"][kind] == 0:
                break
            time.sleep(0.25)
        took = time.monotonic() - killed
        print(f"\n{kind}: session ended {took:.1f} s after the client died")
        assert httpx.get(f"{server.base_url}/healthz").json()["streams"][kind] == 0
        assert "ended" in server.log()
    finally:
        client.kill()
