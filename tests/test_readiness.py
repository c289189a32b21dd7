"""/readyz tells a load balancer to wait while models load; /healthz stays a liveness check."""

from __future__ import annotations

import time

import httpx

from tests.server_process import ServerProcess


def test_ready_only_once_models_are_loaded(tmp_path):
    gate = tmp_path / "loaded"
    server = ServerProcess(
        args=["--factory", "tests.apps:app_with_gated_assistant"],
        env={"READY_GATE": str(gate)},
        log_name="ready",
    ).start()
    try:
        resp = httpx.get(f"{server.base_url}/readyz")
        assert resp.status_code == 503, resp.text
        assert resp.json()["meta"]["error"] == "loading" and "assistant" in resp.json()["message"]
        assert resp.json()["meta"]["models"] == {"detector": "ready", "vad": "ready", "assistant": "loading"}
        assert httpx.get(f"{server.base_url}/healthz").status_code == 200  # alive meanwhile
        gate.touch()
        deadline = time.monotonic() + 10
        while httpx.get(f"{server.base_url}/readyz").status_code != 200:
            assert time.monotonic() < deadline, "never became ready"
            time.sleep(0.1)
        assert httpx.get(f"{server.base_url}/healthz").json()["assistant"] == "failed"
        assert httpx.get(f"{server.base_url}/readyz").json()["models"]["assistant"] == "failed"
    finally:
        server.stop()
