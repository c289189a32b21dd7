"""The two audio WebSocket wire protocols as small serializers: fastrtc's and Twilio Media Streams.

`server/audio_ws.py` runs one session the same way for both; everything that differs on the wire
lives here, so neither protocol is a flag threaded through the session code.

- **fastrtc** (`/{stream}/websocket/offer`): `start` names the session in `websocket_id` and may
  state the client's rates (`input_sample_rate`, `output_sample_rate`; absent: the handler's own,
  which is what stock fastrtc assumes). Handler messages (`{"type": "log" | "error", ...}`) are
  forwarded; a refusal or a server-side end is an `error` event before the close; a client's
  `stop` is answered only by a normal close.
- **Twilio** (`/{stream}/telephone/handler`): 8 kHz μ-law both ways, `streamSid` on every message,
  and only the messages Twilio accepts (`media`, `mark`, `clear`; anything else is warning 31951 /
  error 31924 in the caller's Twilio console). Refusals and ends are a close code and reason only.
  A `mark` follows each reply; Twilio echoes it once the caller has heard the reply.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Protocol

from server.offers import SESSION_ID_PATTERN

PHONE_RATE = 8_000
# What a fastrtc WebSocket client may state in `start`: telephone to full-band rates.
MIN_RATE, MAX_RATE = 8_000, 48_000


class BadStart(ValueError):
    """A `start` message the server cannot use (the socket closes with a protocol error)."""


class SocketProtocol(Protocol):
    transport: ClassVar[str]

    def session_id(self, start: dict[str, Any]) -> str: ...
    def rates(self, start: dict[str, Any], handler: Any) -> tuple[int, int]: ...
    def media(self, payload: str) -> dict[str, Any]: ...
    def clear(self) -> dict[str, Any]: ...
    def mark(self, name: str) -> dict[str, Any] | None: ...
    def forward(self, handler_message: str) -> str | None: ...
    def refusal(self, code: str, message: str, **meta: Any) -> dict[str, Any] | None: ...


def _checked_id(value: Any, field: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(SESSION_ID_PATTERN, value):
        raise BadStart(f"start needs a {field} matching {SESSION_ID_PATTERN}")
    return value


def _rate(start: dict[str, Any], key: str, default: int) -> int:
    value = start.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_RATE <= value <= MAX_RATE:
        raise BadStart(f"{key} must be an integer from {MIN_RATE} to {MAX_RATE} (Hz), not {value!r}")
    return value


class FastrtcSocket:
    """fastrtc's JSON μ-law protocol, with the client's rates stated in `start`."""

    transport: ClassVar[str] = "websocket"

    def __init__(self) -> None:
        self.id = ""

    def session_id(self, start: dict[str, Any]) -> str:
        self.id = _checked_id(start.get("websocket_id"), "websocket_id")
        return self.id

    def rates(self, start: dict[str, Any], handler: Any) -> tuple[int, int]:
        return (
            _rate(start, "input_sample_rate", handler.input_sample_rate),
            _rate(start, "output_sample_rate", handler.output_sample_rate),
        )

    def media(self, payload: str) -> dict[str, Any]:
        return {"event": "media", "media": {"payload": payload}}

    def clear(self) -> dict[str, Any]:
        return {"event": "clear"}

    def mark(self, name: str) -> dict[str, Any] | None:
        return None  # fastrtc's clients know no marks

    def forward(self, handler_message: str) -> str | None:
        return handler_message

    def refusal(self, code: str, message: str, **meta: Any) -> dict[str, Any] | None:
        return {"event": "error", "status": "failed", "meta": {"error": code, **meta}, "message": message}


class TwilioSocket:
    """Twilio Media Streams: only `media`, `mark` and `clear` go out, each with the `streamSid`."""

    transport: ClassVar[str] = "phone"

    def __init__(self) -> None:
        self.id = ""

    def session_id(self, start: dict[str, Any]) -> str:
        self.id = _checked_id(start.get("streamSid"), "streamSid")
        return self.id

    def rates(self, start: dict[str, Any], handler: Any) -> tuple[int, int]:
        return PHONE_RATE, PHONE_RATE

    def media(self, payload: str) -> dict[str, Any]:
        return {"event": "media", "streamSid": self.id, "media": {"payload": payload}}

    def clear(self) -> dict[str, Any]:
        return {"event": "clear", "streamSid": self.id}

    def mark(self, name: str) -> dict[str, Any] | None:
        return {"event": "mark", "streamSid": self.id, "mark": {"name": name}}

    def forward(self, handler_message: str) -> str | None:
        return None  # Twilio rejects anything but media, mark and clear

    def refusal(self, code: str, message: str, **meta: Any) -> dict[str, Any] | None:
        return None  # said by the close code and reason alone
