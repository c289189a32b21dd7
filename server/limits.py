"""Request limits enforced before any handler runs: body size, and new sessions per client."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.access import Denied


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """`receive` that first hands out `messages` (the body already read), then the real one."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


def _refusal_body(limit: int) -> bytes:
    return json.dumps(
        {
            "status": "failed",
            "meta": {"error": "body_too_large", "limit": limit},
            "message": f"request body exceeds {limit} bytes",
        }
    ).encode()


class BodySizeLimit:
    """Pure ASGI middleware: 413 for bodies over `max_bytes`, by header or by counting."""

    def __init__(self, app: ASGIApp, max_bytes: int, streamed: Callable[[str], bool] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.streamed = streamed  # paths whose route reads the body as a stream, with its own cap

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.streamed is not None and self.streamed(scope["path"])):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._reject(send)
            return
        # Read the whole body here, before the app: a body that overflows while FastAPI parses it
        # would become its generic 400 ("error parsing the body") instead of our 413.
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message], receive), send)  # the client left
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_bytes:
                await self._reject(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        whole: Message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([whole], receive), send)

    async def _reject(self, send: Send) -> None:
        body = _refusal_body(self.max_bytes)
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class RateLimiter:
    """Per-client token bucket for new sessions: `burst` at once, then `per_minute` steadily.

    Keys are client addresses; behind a proxy run uvicorn with `--proxy-headers` so they are the
    real ones. Old buckets are dropped so a flood of addresses cannot grow memory without bound.
    """

    def __init__(self, per_minute: float, burst: int, max_clients: int = 10_000) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last update)

    def denial(self, key: str, what: str) -> Denied | None:
        """`acquire`, as the one refusal every rate-limited route gives (429 with Retry-After)."""
        wait = self.acquire(key)
        if wait <= 0:
            return None
        message = f"too many {what} from this address; retry in {max(1, round(wait))} s"
        return Denied(429, "rate_limited", message, retry_after_s=wait)

    def acquire(self, key: str) -> float:
        """0.0 if allowed (and counted), else the seconds until the next attempt may pass."""
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._store(key, tokens - 1.0, now)
            return 0.0
        self._store(key, tokens, now)
        return (1.0 - tokens) / self.rate if self.rate > 0 else 60.0

    def _store(self, key: str, tokens: float, now: float) -> None:
        self._buckets.pop(key, None)
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_clients:  # oldest-touched first (dicts keep insertion order)
            del self._buckets[next(iter(self._buckets))]
