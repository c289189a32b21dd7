"""ICE: what host addresses aiortc gathers, and the RTCConfigurations (STUN/TURN) for browsers and
for the server's own peers."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from typing import Any

from streams.fastrtc_adapter import pin_host_addresses, set_dead_peer_timeout

logger = logging.getLogger(__name__)

__all__ = [
    "IceConfig",
    "pin_host_addresses",
    "provider_ice_servers",
    "set_dead_peer_timeout",
    "turn_rest_credentials",
]


def turn_rest_credentials(secret: str, user: str, ttl_s: float, now: float | None = None) -> tuple[str, str]:
    """coturn's `use-auth-secret` scheme (the TURN REST API draft): username `<expiry>:<user>`,
    credential base64(HMAC-SHA1(secret, username)). coturn checks it with the same secret and
    refuses it after the expiry, so nothing long-lived ever reaches a browser."""
    username = f"{int((now if now is not None else time.time()) + ttl_s)}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def provider_ice_servers(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """A provider's `iceServers` as clean RTCIceServer dicts. Twilio's entries carry a deprecated `url`
    besides `urls`; Cloudflare has answered with a single object rather than a list."""
    servers = answer.get("iceServers") or []
    if isinstance(servers, dict):
        servers = [servers]
    clean = []
    for entry in servers:
        urls = entry.get("urls") or entry.get("url")
        if urls:
            clean.append({"urls": urls} | {k: entry[k] for k in ("username", "credential") if k in entry})
    return clean


class IceConfig:
    """The one source of RTCConfigurations, for browsers and for the server's own peers.

    Static servers come from ICE_SERVERS and TURN_URLS; with TURN_SHARED_SECRET the TURN entries get
    fresh REST credentials; TURN_PROVIDER adds Cloudflare's or Twilio's servers through fastrtc's
    helpers (network calls, made only when configured, cached for half their lifetime). In the server,
    `keep_fresh()` runs those calls in a thread ahead of time, so a request or an offer never waits on
    the provider's API with the event loop (and every live session's media) blocked.
    """

    RETRY_S = 30.0  # after a failed provider call

    def __init__(self, settings: Any, fetch_provider: Callable[[], dict[str, Any]] | None = None) -> None:
        self.settings = settings
        self._fetch_provider = fetch_provider or self._provider_fetcher()
        self._provider_cache: tuple[float, list[dict[str, Any]]] | None = None
        self._server_cache: tuple[float, dict[str, Any]] | None = None
        self._refreshed_in_background = False

    def _turn_servers(self) -> list[dict[str, Any]]:
        s = self.settings
        if not s.turn_urls:
            return []
        if s.turn_shared_secret:
            username, credential = turn_rest_credentials(
                s.turn_shared_secret, s.turn_user, s.turn_credential_ttl_s
            )
        else:
            username, credential = s.turn_username, s.turn_credential
        entry: dict[str, Any] = {"urls": list(s.turn_urls)}
        if username is not None:
            entry |= {"username": username, "credential": credential}
        return [entry]

    def _provider_fetcher(self) -> Callable[[], dict[str, Any]] | None:
        s = self.settings
        if s.turn_provider == "cloudflare":
            from fastrtc import get_cloudflare_turn_credentials

            return lambda: get_cloudflare_turn_credentials(
                turn_key_id=s.cloudflare_turn_key_id,
                turn_key_api_token=s.cloudflare_turn_api_token,
                hf_token="",  # else an HF_TOKEN in the environment silently wins over the keys
                ttl=int(s.turn_credential_ttl_s),
            )
        if s.turn_provider == "twilio":
            from fastrtc import get_twilio_turn_credentials

            return lambda: get_twilio_turn_credentials(s.twilio_account_sid, s.twilio_auth_token)
        return None

    def refresh_provider(self) -> bool:
        """Fetch the provider's servers now (blocking). False if it failed: the last ones are kept."""
        if self._fetch_provider is None:
            return True
        try:
            servers = provider_ice_servers(self._fetch_provider())
        except Exception as exc:  # offline, bad keys: keep serving what we have
            logger.error("TURN provider %s failed: %s", self.settings.turn_provider, exc)
            return False
        self._provider_cache = (time.monotonic() + self.settings.turn_credential_ttl_s / 2, servers)
        logger.info("TURN provider %s: %d ICE servers", self.settings.turn_provider, len(servers))
        return True

    async def keep_fresh(self) -> None:
        """Refresh the provider's credentials in a thread at a third of their lifetime, until cancelled."""
        if self._fetch_provider is None:
            return
        self._refreshed_in_background = True
        try:
            while True:
                ok = await asyncio.to_thread(self.refresh_provider)
                await asyncio.sleep(self.settings.turn_credential_ttl_s / 3 if ok else self.RETRY_S)
        finally:
            self._refreshed_in_background = False

    def _provider_servers(self) -> list[dict[str, Any]]:
        if self._fetch_provider is None:
            return []
        due = self._provider_cache is None or time.monotonic() >= self._provider_cache[0]
        if due and not self._refreshed_in_background:
            self.refresh_provider()
        return self._provider_cache[1] if self._provider_cache else []

    @property
    def hands_out_credentials(self) -> bool:
        """TURN (or a provider's) credentials go to browsers: a relay is worth stealing."""
        s = self.settings
        return (
            bool(s.turn_urls and (s.turn_username or s.turn_shared_secret))
            or s.turn_provider != "none"
            or any(server.credential for server in s.ice_servers)
        )

    def client_configuration(self) -> dict[str, Any]:
        """For one browser, now: REST credentials are minted per call."""
        servers = [s.model_dump(exclude_none=True) for s in self.settings.ice_servers]
        config: dict[str, Any] = {"iceServers": servers + self._turn_servers() + self._provider_servers()}
        if self.settings.ice_transport_policy == "relay":
            config["iceTransportPolicy"] = "relay"
        return config

    def server_configuration(self) -> dict[str, Any]:
        """For the server's peers: the same servers, re-minted when half the credential lifetime is gone
        (or when the provider's credentials are renewed, whichever comes first)."""
        now = time.monotonic()
        if self._server_cache is None or now >= self._server_cache[0]:
            config = self.client_configuration()
            expiry = now + self.settings.turn_credential_ttl_s / 2
            if self._provider_cache is not None:
                expiry = min(expiry, self._provider_cache[0])
            self._server_cache = (expiry, config)
        return self._server_cache[1]
