from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.server_process import ServerProcess


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    """The real server, started the way a user does (`python -m server`), shared by the session."""
    with ServerProcess(log_name="server") as proc:
        yield proc


@pytest.fixture(scope="session")
def test_server() -> Iterator[ServerProcess]:
    """The server with extra test filters (`slow200`: 200 ms per frame; `explode`: raises),
    a default filter of `mirror`, a limit of 3 video sessions, 2 chat sessions of at most 4 s,
    and Twilio signature checks."""
    with ServerProcess(
        args=["--factory", "tests.apps:app_with_test_filters"],
        env={
            "VIDEO_CONCURRENCY_LIMIT": "3",
            "VIDEO_DEFAULT_FILTER": "mirror",
            "CHAT_CONCURRENCY_LIMIT": "2",
            "CHAT_TIME_LIMIT_S": "4",
            "TWILIO_AUTH_TOKEN": "test-token",
        },
        log_name="test-server",
    ) as proc:
        yield proc


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    """In CI (CI=true) a skipped test fails: CI can install everything a test needs, so a skip there
    means a broken install, not a missing optional tool."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which must be able to run every test: {report.longrepr}"
