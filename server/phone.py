"""Twilio Voice webhook: TwiML that connects the call to our Media Streams WebSocket.

Stock fastrtc always answers `wss://HOST/...` (drops the port, forces TLS) and never checks the
request came from Twilio. Here the stream URL keeps the scheme, host and port the caller used
(behind a proxy, run uvicorn with `--proxy-headers` so they are the public ones), and when
`TWILIO_AUTH_TOKEN` is set the `X-Twilio-Signature` header is validated and each call is answered
once: the signature covers no time, so a captured webhook would otherwise mint a stream token
every time it is posted again.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, VoiceResponse

from server.errors import Refusal

logger = logging.getLogger(__name__)


def stream_url(request: Request, handler_path: str) -> str:
    scheme = "wss" if request.url.scheme in ("https", "wss") else "ws"
    return f"{scheme}://{request.url.netloc}{handler_path}"


class AnsweredCalls:
    """The `CallSid`s this process answered, remembered for `ttl_s` (bounded: oldest forgotten)."""

    def __init__(self, ttl_s: float = 86_400.0, capacity: int = 100_000) -> None:
        self.ttl_s, self.capacity = ttl_s, capacity
        self._answered: OrderedDict[str, float] = OrderedDict()

    def first_time(self, call_sid: str) -> bool:
        now = time.monotonic()
        while self._answered and (
            len(self._answered) >= self.capacity or next(iter(self._answered.values())) < now - self.ttl_s
        ):
            self._answered.popitem(last=False)
        if call_sid in self._answered:
            return False
        self._answered[call_sid] = now
        return True


def make_incoming_call_route(
    handler_path: str, auth_token: str | None, stream_token: Callable[[], str] | None = None
):  # noqa: ANN201 - FastAPI endpoint
    """`stream_token`, when access tokens are on, makes the token Twilio passes back in `start`.
    Handing one out to any caller would open the door AUTH_TOKEN closes, so then calls need
    TWILIO_AUTH_TOKEN: only Twilio can sign the webhook."""
    validator = RequestValidator(auth_token) if auth_token else None
    answered = AnsweredCalls()

    async def incoming_call(request: Request) -> Any:
        if stream_token is not None and validator is None:
            raise Refusal(
                403, "phone_disabled", "phone calls need TWILIO_AUTH_TOKEN on a server that has AUTH_TOKEN"
            )
        form = dict(await request.form())
        if validator is not None:
            signature = request.headers.get("X-Twilio-Signature", "")
            if not validator.validate(str(request.url), form, signature):
                logger.warning("phone webhook refused: bad X-Twilio-Signature from %s", request.client)
                raise Refusal(403, "bad_signature", "X-Twilio-Signature does not match this request")
            call_sid = str(form.get("CallSid", ""))
            if not answered.first_time(call_sid):
                logger.warning("phone webhook refused: call %s was answered before (replay)", call_sid[:64])
                raise Refusal(409, "call_already_answered", "this call's webhook was answered before")
        response = VoiceResponse()
        connect = Connect()
        stream = connect.stream(url=stream_url(request, handler_path))
        if stream_token is not None:
            stream.parameter(name="token", value=stream_token())
        response.append(connect)
        logger.info("phone call %s from %s", form.get("CallSid", "-"), form.get("From", "-"))
        return Response(content=str(response), media_type="application/xml")

    return incoming_call
