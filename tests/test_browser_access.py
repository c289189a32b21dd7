"""The page against a server with AUTH_TOKEN and a time limit: it asks for the token in plain words,
connects once given it, and says why the server ended the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.server_process import ServerProcess
from tests.test_browser import ARTIFACTS, COUNT_FRAMES, chromium_page, pytestmark  # noqa: F401

TOKEN = "browser-access-token-long-enough"


@pytest.fixture(scope="module")
def guarded_server() -> Iterator[ServerProcess]:
    with ServerProcess(
        env={"AUTH_TOKEN": TOKEN, "GENERATE_TIME_LIMIT_S": "4", "ASSISTANT_ENABLED": "false"},
        log_name="guarded-server",
    ) as proc:
        yield proc


async def test_page_asks_for_the_token_then_reports_the_time_limit(guarded_server):
    errors: list[str] = []
    async with chromium_page(guarded_server.base_url + "/", errors) as page:
        await page.click("#gen-connect")
        await page.wait_for_selector("#access:not([hidden])", timeout=10000)
        status = await page.text_content("#gen-status")
        assert "needs an access token" in status, status
        await page.fill("#access-token", TOKEN)
        await page.click("#access button[type=submit]")
        await page.click("#gen-connect")
        await page.wait_for_function("document.getElementById('gen-video').videoWidth > 0", timeout=20000)
        assert await page.evaluate(COUNT_FRAMES, "gen-video") > 20
        await page.wait_for_function(
            "document.getElementById('gen-status').textContent.includes('time limit')", timeout=15000
        )
        status = await page.text_content("#gen-status")
        assert status.startswith("The server ended the session"), status
        await page.screenshot(path=str(ARTIFACTS / "time-limit-message.png"))
    # the only console errors are the browser's own notes on the refused (401) requests
    assert all("401" in e for e in errors), errors
