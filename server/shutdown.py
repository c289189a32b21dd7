"""Graceful shutdown on SIGTERM/SIGINT: refuse new sessions, tell every client why, close them all.

uvicorn on a signal stops listening and then waits for open connections to finish before the app's
lifespan shutdown runs; a server-sent-event stream or a WebSocket never finishes by itself, so
without this the process hangs until killed, and clients are cut off without a word. Here the
signal first starts a drain: new offers get 503 `shutting_down`, each session is told
(`end_stream` on the data channel, `ended` on its outputs, close code 1012 on WebSockets) and
closed, which ends those connections, and uvicorn then finishes its own shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Drain:
    """Runs `close_all()` once, bounded by `grace_s`, as soon as the process is asked to stop."""

    def __init__(
        self, start_draining: Callable[[], None], close_all: Callable[[], Awaitable[Any]], grace_s: float
    ):
        self.start_draining = start_draining
        self.close_all = close_all
        self.grace_s = grace_s
        self.task: asyncio.Task[None] | None = None

    def install(self) -> None:
        """Chain in front of the signal handlers installed now (uvicorn's, inside its serve())."""
        if threading.current_thread() is not threading.main_thread():
            return  # signals only reach the main thread (e.g. an app run in a test thread)
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            previous = signal.getsignal(sig)

            def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
                loop.call_soon_threadsafe(self.begin)
                if callable(previous):
                    previous(signum, frame)

            signal.signal(sig, handler)

    def begin(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.run())

    async def run(self) -> None:
        self.start_draining()
        logger.info(
            "shutting down: refusing new sessions, closing the open ones (grace %.0f s)", self.grace_s
        )
        try:
            await asyncio.wait_for(self.close_all(), self.grace_s)
        except (TimeoutError, asyncio.TimeoutError):
            logger.warning("shutdown: sessions still closing after %.0f s", self.grace_s)

    async def finish(self) -> None:
        """From the lifespan shutdown: make sure the drain ran (no signal, e.g. a test client)."""
        self.begin()
        assert self.task is not None
        await self.task
