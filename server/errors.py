"""One refusal type and one renderer for every HTTP route: `{"status": "failed", "meta": {"error":
code, ...}, "message": ...}` with a real status code (stock fastrtc answers refusals with HTTP 200).

Routes and dependencies raise; `install_error_handlers` renders. Media-side refusals
(`streams.OfferRejected`, `streams.inputs.InvalidInput`) are rendered here too, so `streams/` stays
free of HTTP.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from streams.inputs import InvalidInput
from streams.runtime import OfferRejected

# Media-side refusal codes and their HTTP status.
STATUS_BY_CODE = {
    "invalid_sdp": 400,
    "invalid_offer": 400,
    "invalid_candidate_format": 400,
    "too_many_candidates": 429,
    "too_many_listeners": 429,
    "too_many_pending_offers_from_client": 429,
    "unsupported_transport": 400,
    "unknown_connection": 404,
    "connection_already_exists": 409,
    "connection_closed": 409,
    "concurrency_limit_reached": 503,
    "server_limit_reached": 503,
    "too_many_pending_offers": 503,
    "shutting_down": 503,
    "session_failed": 503,
}


class Refusal(Exception):
    """A request the server refuses, in its one error shape."""

    def __init__(self, status: int, code: str, message: str, *, retry_after_s: float | None = None,
                 **meta: Any) -> None:  # fmt: skip
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s
        self.meta = meta

    @classmethod
    def from_rejection(cls, exc: OfferRejected) -> Refusal:
        return cls(STATUS_BY_CODE.get(exc.code, 400), exc.code, exc.message, **exc.meta)


def refusal(status: int, code: str, message: str, **meta: Any) -> JSONResponse:
    """The one error shape as a response (for code that must return rather than raise)."""
    return JSONResponse(
        status_code=status,
        content={"status": "failed", "meta": {"error": code, **meta}, "message": message},
    )


def render(exc: Refusal) -> JSONResponse:
    response = refusal(exc.status, exc.code, exc.message, **exc.meta)
    if exc.retry_after_s is not None:
        response.headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    return response


def describe_errors(errors: list[Any]) -> str:
    """Pydantic errors as one line for people: `field: problem; field: problem`."""
    parts = []
    for err in errors:
        if err.get("type") == "json_invalid":
            parts.append("the body is not valid JSON")
            continue
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query"))
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Refusal)
    async def _refusal(request: Request, exc: Refusal) -> JSONResponse:
        return render(exc)

    @app.exception_handler(OfferRejected)
    async def _rejected(request: Request, exc: OfferRejected) -> JSONResponse:
        return render(Refusal.from_rejection(exc))

    @app.exception_handler(InvalidInput)
    async def _invalid_input(request: Request, exc: InvalidInput) -> JSONResponse:
        return refusal(422, "invalid_input", str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return refusal(422, "invalid_request", describe_errors(list(exc.errors())))
