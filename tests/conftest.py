from __future__ import annotations

from collections.abc import Iterator

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
