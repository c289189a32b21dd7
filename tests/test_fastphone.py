"""`python -m server --phone`: the temporary number reaches the hardened /chat (limits, time limit,
outputs), with Gradio's tunnel and the fastphone registry replaced at their network boundary
(`tests.apps.phone_main`); nothing here can reach the real services, which need the internet."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests import netaudit
from tests.audio_client import speech
from tests.server_process import ROOT, free_port
from tests.test_chat_rtc import SENTENCE, wait_until
from tests.ws_client import AudioSocketClient

RUN_PHONE = "from tests.apps import phone_main; phone_main()"


def audit_log(port: int) -> Path:
    return ROOT / "test-artifacts" / f"phone-{port}.net.log"


def start_phone(fake: str, port: int, **env: str) -> subprocess.Popen[str]:
    full_env = {**netaudit.as_deployed(dict(os.environ)), "HF_TOKEN": "hf_test_token", "PHONE_FAKE": fake, "ICE_HOST_ADDRESSES": "127.0.0.1",
                "PYTHONUNBUFFERED": "1", **env}  # fmt: skip
    cmd = [sys.executable, "-c", RUN_PHONE, "--phone", "--port", str(port)]
    if netaudit.available():
        cmd = netaudit.wrap(cmd, audit_log(port))
    return subprocess.Popen(
        cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float = 90) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} never printed:\n" + "\n".join(lines[-30:]))


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
async def test_the_temporary_number_reaches_the_hardened_chat():
    port = free_port()
    proc = start_phone("ok", port, CHAT_CONCURRENCY_LIMIT="1", CHAT_TIME_LIMIT_S="20")
    try:
        lines = wait_for_line(proc, "Call +1 555 0100 and enter code 4321")
        assert any(f"fake tunnel to 127.0.0.1:{port}" in line for line in lines)
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base) as http:
            twiml = await http.post("/telephone/incoming", data={"CallSid": "CA1", "From": "+15550100"})
            assert twiml.status_code == 200 and f"ws://127.0.0.1:{port}/chat/telephone/handler" in twiml.text
        url = f"ws://127.0.0.1:{port}/telephone/handler"  # the root path stock fastrtc mounts
        async with AudioSocketClient(url, phone=True) as caller:
            await caller.start()
            await caller.speak(None, 0.3)
            health = httpx.get(f"{base}/healthz").json()
            assert health["streams"]["chat"] == 1, "the call is a /chat session, counted like any other"
            async with AudioSocketClient(url, phone=True) as second:
                await second.start()
                assert await second.closed() == 1013
                assert second.refusal() == "concurrency_limit_reached", second.close_reason
            ended = await caller.speak(speech(SENTENCE), 1.0)
            assert await wait_until(lambda: caller.audible_after(ended), 5), caller.event_types()
        # uvicorn re-raises the signal once it has drained, so the exit status is SIGTERM's own
        assert netaudit.terminate(proc) in (0, -signal.SIGTERM)
        netaudit.check(audit_log(port), "python -m server --phone")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


@pytest.mark.parametrize(
    ("fake", "expected"),
    [("quota", "quota for this month is used up"), ("offline", "needs the internet")],
    ids=["quota-used-up", "offline"],
)
def test_phone_failures_end_with_one_clear_line(fake, expected):
    port = free_port()
    proc = start_phone(fake, port)
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out[-1000:]
    netaudit.check(audit_log(port), "python -m server --phone")
    assert out.strip().splitlines()[-1].startswith("error: ") and expected in out.strip().splitlines()[-1], (
        out[-1000:]
    )
