"""Who may drive which session: server-issued session ids that name their owner process, optional
token authentication, and the browser origin allow-list.

Stock fastrtc lets the client invent the `webrtc_id` and trusts it everywhere, so anyone who learns
an id can post inputs to, or read the outputs of, someone else's session, and several processes
behind a proxy cannot tell whose session a request is for. Here:

- `POST /api/session` issues `<instance>.<32 hex>`: the prefix names the process that owns it, so a
  proxy can route every request for the session to that process (see docs/deploy.md), and a process
  answers 421 for ids owned by another.
- With `AUTH_TOKEN` set, every session route needs a credential: the token itself (`Authorization:
  Bearer`, for servers) or the short-lived session token `/api/session` signed for that one id (for
  pages: `?token=` works where headers cannot be set, as in EventSource and WebSocket).
- With `ALLOWED_ORIGINS` set, browsers from other origins are refused (the page's own origin is
  always allowed); browsers that name the server by a host it does not know are refused whatever
  the origin (DNS rebinding, `BrowserGuard`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger(__name__)

INSTANCE_ID_PATTERN = r"^[a-z0-9-]{1,32}$"
_OWNED_ID = re.compile(r"^(?P<owner>[a-z0-9-]{1,32})\.[0-9a-f]{32}$")
MAX_ISSUED = 100_000  # session ids remembered for TURN credentials (about 10 MB at most)
# What the token in our TwiML is signed for (the call's stream id is not known yet); '#' is in no
# session id, so a phone token drives no session.
PHONE_SUBJECT = "#phone"


@dataclass(frozen=True)
class Denied:
    """A refusal in the server's one error shape (see `server.errors`)."""

    status: int
    code: str
    message: str
    retry_after_s: float | None = None

    @property
    def body(self) -> dict[str, Any]:
        return {"status": "failed", "meta": {"error": self.code}, "message": self.message}


def owner_of(webrtc_id: str) -> str | None:
    """The instance that issued this id, or None for ids a client made up itself."""
    match = _OWNED_ID.match(webrtc_id)
    return match["owner"] if match else None


class Access:
    """Issues session ids and tokens, and checks each request's claim on a session."""

    def __init__(self, instance_id: str, auth_token: str | None, session_ttl_s: float) -> None:
        self.instance_id = instance_id
        self.auth_token = auth_token or None
        self.session_ttl_s = session_ttl_s
        self._issued: dict[str, float] = {}  # webrtc_id -> expiry (monotonic), for TURN credentials
        # Derived from the shared token (so every process behind one proxy verifies the same tokens)
        # with HKDF, never the token itself; AUTH_TOKEN's length is checked at start (settings).
        self._key = HKDF(algorithm=SHA256(), length=32, salt=b"rtserver", info=b"session tokens v1").derive(
            (self.auth_token or "").encode()
        )

    def was_issued(self, webrtc_id: str | None) -> bool:
        """This process issued `webrtc_id` (by `POST /api/session`) and it has not expired."""
        expiry = self._issued.get(webrtc_id or "")
        return expiry is not None and expiry > time.monotonic()

    @property
    def required(self) -> bool:
        return self.auth_token is not None

    def issue(self) -> dict[str, Any]:
        webrtc_id = f"{self.instance_id}.{secrets.token_hex(16)}"
        now = time.monotonic()
        self._issued[webrtc_id] = now + self.session_ttl_s
        while len(self._issued) > MAX_ISSUED or next(iter(self._issued.values())) < now:
            del self._issued[next(iter(self._issued))]  # oldest first: insertion order is issue order
        return {
            "webrtc_id": webrtc_id,
            "token": self.sign(webrtc_id) if self.required else None,
            "expires_in": self.session_ttl_s,
            "instance": self.instance_id,
        }

    def sign(self, subject: str, ttl_s: float | None = None) -> str:
        """`<expiry>.<base64url HMAC-SHA256(subject|expiry)>`: stateless, checked by any process."""
        expiry = int(time.time() + (ttl_s if ttl_s is not None else self.session_ttl_s))
        return f"{expiry}.{self._mac(subject, expiry)}"

    def _mac(self, subject: str, expiry: int) -> str:
        digest = hmac.new(self._key, f"{subject}|{expiry}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def _valid_for(self, credential: str, subject: str) -> bool:
        expiry_text, _, mac = credential.partition(".")
        # ASCII digits, at most 12 (year 33658): int() of thousands of digits raises, and isdigit()
        # accepts other scripts' digits
        if not (expiry_text.isascii() and expiry_text.isdigit() and len(expiry_text) <= 12):
            return False
        if int(expiry_text) < time.time():
            return False
        return hmac.compare_digest(mac.encode(), self._mac(subject, int(expiry_text)).encode())

    def is_master(self, credential: str | None) -> bool:
        """Compared as bytes: `compare_digest` raises on non-ASCII strings (a 500 before)."""
        return credential is not None and hmac.compare_digest(
            credential.encode(), (self.auth_token or "").encode()
        )

    def check_any(self, credential: str | None, webrtc_id: str | None) -> Denied | None:
        """Routes for whoever holds a session (the ICE configuration): the token, or a valid session
        token together with the `webrtc_id` it was issued for."""
        if not self.required or self.is_master(credential):
            return None
        if credential and webrtc_id and self._valid_for(credential, webrtc_id):
            return None
        return _unauthorized(credential)

    def check_master(self, credential: str | None) -> Denied | None:
        if not self.required or self.is_master(credential):
            return None
        return _unauthorized(credential)

    def check_session(self, webrtc_id: str, credential: str | None) -> Denied | None:
        """Is this request allowed to drive session `webrtc_id` on this process?"""
        owner = owner_of(webrtc_id)
        if owner is not None and owner != self.instance_id:
            return Denied(
                421,
                "wrong_instance",
                f"session {webrtc_id!r} belongs to server instance {owner!r}, not {self.instance_id!r}: "
                "route requests by the webrtc_id query parameter (see docs/deploy.md)",
            )
        if not self.required or self.is_master(credential):
            return None
        if credential and self._valid_for(credential, webrtc_id):
            return None
        if credential and "." in credential:
            return Denied(
                403, "forbidden", "this session token is for another session or has expired; get a new one"
            )
        return _unauthorized(credential)

    def check_phone(self, credential: str | None) -> Denied | None:
        if not self.required or self.is_master(credential):
            return None
        if credential and self._valid_for(credential, PHONE_SUBJECT):
            return None
        return _unauthorized(credential)


def _unauthorized(credential: str | None) -> Denied:
    if credential:
        return Denied(401, "unauthorized", "the access token is not valid")
    return Denied(
        401,
        "unauthorized",
        "this server needs an access token: send Authorization: Bearer <token> or ?token=<session token>",
    )


def credential_of(headers: Any, query: Any) -> str | None:
    """Bearer header first, then `?token=` (EventSource and browser WebSockets cannot set headers)."""
    header = headers.get("authorization") or ""
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    token = query.get("token")
    return token or None


def host_name(host: str) -> str:
    """`Host` header without its port: `example.com:8000` -> `example.com`, `[::1]:80` -> `::1`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_local_or_literal(name: str) -> bool:
    """IP literals and `localhost` names cannot be rebound by someone else's DNS."""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class BrowserGuard:
    """Pure ASGI middleware for requests a browser makes (those with `Origin` or `Sec-Fetch-Site`);
    servers, curl and Twilio send neither and pass.

    - Origins outside `ALLOWED_ORIGINS` (when set) get 403 `origin_not_allowed` (HTTP) or a 1008 close.
    - DNS rebinding: a page on the attacker's name, re-resolved to this server's address, is "same
      origin" (its Origin equals the Host header), so the origin check alone lets it in. A browser
      request must therefore name this server by a host it knows: `ALLOWED_HOSTS`, or by default the
      hosts of `ALLOWED_ORIGINS`, IP literals and `localhost`. Others get 403 `host_not_allowed`.
    """

    def __init__(self, app: ASGIApp, allowed_origins: list[str], allowed_hosts: list[str]) -> None:
        self.app = app
        self.origins = {o.rstrip("/").lower() for o in allowed_origins}
        hosts = allowed_hosts or [urlsplit(o).hostname or "" for o in self.origins]
        self.hosts = {host_name(h) for h in hosts if h}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or []}
        origin = headers.get("origin")
        if origin is None and "sec-fetch-site" not in headers:
            await self.app(scope, receive, send)
            return
        host = headers.get("host", "")
        if origin is not None and not self._origin_allowed(origin, host):
            code, message = "origin_not_allowed", f"origin {origin[:100]} is not allowed (ALLOWED_ORIGINS)"
        elif not self._host_allowed(host_name(host)):
            code = "host_not_allowed"
            message = (
                f"this server does not answer browsers by the name {host_name(host)[:100]!r}: "
                "if that name is yours, add it to ALLOWED_HOSTS"
            )
        else:
            await self.app(scope, receive, send)
            return
        logger.warning("refused %s %s: %s", scope["type"], scope.get("path"), code)
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008, "reason": f"{code}: {message}"[:120]})
            return
        body = json.dumps(Denied(403, code, message).body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _origin_allowed(self, origin: str, host: str) -> bool:
        normalized = origin.rstrip("/").lower()
        if not self.origins or normalized in self.origins or "*" in self.origins:
            return True
        return urlsplit(normalized).netloc == host.lower()  # the page this server serves itself

    def _host_allowed(self, name: str) -> bool:
        return "*" in self.hosts or name in self.hosts or is_local_or_literal(name)
