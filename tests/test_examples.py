"""The clients in examples/ run against a real server, as a user runs them, so they never rot."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.server_process import ServerProcess
from tests.test_browser import ARTIFACTS, CHROMIUM, chromium_page

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

needs_chromium = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason="Debian chromium is not installed (make test installs it)"
)
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def run_example(name: str, *args: str, timeout: float = 60) -> str:
    """Run an example as a user does; its output, after checking it exited 0."""
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=timeout
    )
    print(f"\n$ {name} {' '.join(args)}\n{proc.stdout}{proc.stderr}")
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@contextmanager
def static_site() -> Iterator[str]:
    """examples/ served from another origin than the server's (a free port of its own)."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(EXAMPLES)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    with static_site() as origin:
        yield origin


@pytest.fixture(scope="module")
def cors_server(site: str) -> Iterator[ServerProcess]:
    """A server that lets pages from `site` call it."""
    with ServerProcess(env={"ALLOWED_ORIGINS": site}, log_name="examples-cors") as proc:
        yield proc


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wav = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "Hello there, how are you today?"],
                   check=True)  # fmt: skip
    return wav


@needs_chromium
async def test_browser_example_connects_from_another_origin_with_trickle_ice(site, cors_server):
    errors: list[str] = []
    async with chromium_page(f"{site}/browser.html?server={cors_server.base_url}", errors) as page:
        await page.click("#connect")
        await page.wait_for_function("document.getElementById('remote').videoWidth > 0", timeout=20000)
        await page.wait_for_function("window.outputReports > 0", timeout=10000)
        await page.wait_for_function(
            "session.pc.iceGatheringState === 'complete' && window.candidateStatuses.length > 0",
            timeout=10000,
        )
        await page.wait_for_timeout(500)  # the last candidates' answers
        statuses = await page.evaluate("window.candidateStatuses")
        await page.select_option("#filter", "gray")
        await page.wait_for_function("document.getElementById('outputs').textContent.includes('gray')")
        await page.screenshot(path=str(ARTIFACTS / "example-browser.png"))
        await page.click("#connect")
        assert "Not connected" in await page.text_content("#status")
    print(f"\ncandidate POSTs: {statuses}")
    assert statuses and all(status == 200 for status in statuses), statuses
    assert errors == [], errors


@needs_chromium
async def test_browser_example_from_an_unlisted_origin_is_refused(cors_server):
    """The server answers 403 `origin_not_allowed` without CORS headers, so the browser hides the answer
    from the page (which can only say it was refused or unreachable); DevTools' network log shows it."""
    errors: list[str] = []
    urls: dict[str, str] = {}
    statuses: list[tuple[str, int]] = []  # (request id, HTTP status)
    cors_errors: list[str] = []
    with static_site() as stranger:
        async with chromium_page(f"{stranger}/browser.html?server={cors_server.base_url}", errors) as page:
            devtools = await page.context.new_cdp_session(page)
            devtools.on(
                "Network.requestWillBeSent", lambda e: urls.update({e["requestId"]: e["request"]["url"]})
            )
            devtools.on(
                "Network.responseReceivedExtraInfo",
                lambda e: statuses.append((e["requestId"], e["statusCode"])),
            )
            devtools.on(
                "Network.loadingFailed",
                lambda e: cors_errors.append((e.get("corsErrorStatus") or {}).get("corsError")),
            )
            await devtools.send("Network.enable")
            await page.click("#connect")
            await page.wait_for_function("document.getElementById('status').className === 'error'")
            status = await page.text_content("#status")
    answers = [(urls.get(request), code) for request, code in statuses]
    print(f"\npage says: {status}\nnetwork: {answers} {cors_errors}\nconsole: {errors}")
    assert f"refused this page's origin ({stranger})" in status, status
    assert (f"{cors_server.base_url}/api/session", 403) in answers, answers
    assert cors_errors == ["MissingAllowOriginHeader"], cors_errors


def test_webrtc_client_example_gets_frames_and_reports_back(server):
    out = run_example("webrtc_client.py", "--server", server.base_url, "--seconds", "4")
    summary = re.search(r"received (\d+) frames, (\d+) output reports", out)
    assert summary and int(summary[1]) > 0 and int(summary[2]) > 0, out


@pytest.mark.parametrize(
    ("rate", "voice"),
    [
        pytest.param(48_000, "espeak", marks=needs_espeak, id="48000-speech"),
        pytest.param(16_000, "espeak", marks=needs_espeak, id="16000-speech"),
        pytest.param(48_000, "synthetic", id="48000-synthetic-voice"),
    ],
)
def test_websocket_client_example_hears_the_reply_at_its_rate(server, request, rate, voice):
    wav = [str(request.getfixturevalue("speech_wav"))] if voice == "espeak" else []
    out = run_example("websocket_client.py", *wav, "--server", server.base_url, "--rate", str(rate))
    back = re.search(r"media messages of (\d+) samples = (\d+) Hz", out)
    assert back and int(back[2]) == rate, out
    assert '"pause_detected"' in out and "closed: 1000" in out, out


@needs_espeak
def test_twilio_simulator_barge_in_gets_a_clear_and_only_twilio_messages(server, speech_wav):
    out = run_example("twilio_simulator.py", str(speech_wav), "--server", server.base_url, "--barge-in")
    assert "clear received" in out and "violations: none" in out, out
    assert "closed 1000" in out, out
