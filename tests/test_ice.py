"""RTCConfigurations from settings: static TURN, coturn REST credentials, providers, relay policy."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import shutil
import subprocess
import threading
import time

import pytest

from server import ice
from server.config import Settings
from server.ice import IceConfig, provider_ice_servers, turn_rest_credentials


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_rest_credentials_follow_coturns_scheme():
    username, credential = turn_rest_credentials("s3cret", "alice", ttl_s=600, now=1_700_000_000)
    assert username == "1700000600:alice"
    # the same HMAC-SHA1 computed by another implementation (OpenSSL), as coturn does
    digest = subprocess.run(
        ["openssl", "dgst", "-sha1", "-hmac", "s3cret", "-binary"],
        input=username.encode(),
        capture_output=True,
        check=True,
    ).stdout
    assert credential == base64.b64encode(digest).decode()


def test_shared_secret_mints_fresh_credentials_per_browser_and_relay_policy(monkeypatch):
    settings = Settings(
        turn_urls="turn:turn.example:3478?transport=udp, turns:turn.example:5349",
        turn_shared_secret="s3cret",
        turn_credential_ttl_s=600,
        ice_transport_policy="relay",
    )
    config = IceConfig(settings)
    first = config.client_configuration()
    assert first["iceTransportPolicy"] == "relay"
    (entry,) = first["iceServers"]
    assert entry["urls"] == ["turn:turn.example:3478?transport=udp", "turns:turn.example:5349"]
    expiry, user = entry["username"].split(":")
    assert user == "rtserver" and abs(int(expiry) - (time.time() + 600)) < 5
    monkeypatch.setattr(ice.time, "time", lambda: 2_000_000_000.0)
    assert config.client_configuration()["iceServers"][0]["username"] == "2000000600:rtserver"


def test_server_peers_reuse_credentials_until_half_their_lifetime(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(ice.time, "monotonic", lambda: clock[0])
    config = IceConfig(Settings(turn_urls="turn:t:3478", turn_shared_secret="s", turn_credential_ttl_s=600))
    first = config.server_configuration()
    clock[0] += 299
    assert config.server_configuration() is first
    clock[0] += 2
    monkeypatch.setattr(ice.time, "time", lambda: 3_000_000_000.0)
    assert config.server_configuration()["iceServers"][0]["username"] == "3000000600:rtserver"


def test_provider_is_called_only_when_due_and_failures_keep_the_last_servers(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(ice.time, "monotonic", lambda: clock[0])
    calls: list[int] = []

    def fetch() -> dict:
        calls.append(1)
        if len(calls) == 2:
            raise ConnectionError("offline")
        return {"iceServers": [{"urls": "turn:provider:3478", "username": "x", "credential": "y"}]}

    config = IceConfig(Settings(turn_credential_ttl_s=600), fetch_provider=fetch)
    assert config.client_configuration()["iceServers"][0]["urls"] == "turn:provider:3478"
    config.client_configuration()
    assert len(calls) == 1
    clock[0] = 301
    assert config.client_configuration()["iceServers"][0]["urls"] == "turn:provider:3478"  # failed: kept
    assert len(calls) == 2


def test_no_provider_call_unless_configured():
    assert IceConfig(Settings())._fetch_provider is None


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"turn_provider": "cloudflare"}, "CLOUDFLARE_TURN_KEY_ID"),
        ({"turn_provider": "twilio"}, "TWILIO_ACCOUNT_SID"),
        ({"turn_shared_secret": "s"}, "TURN_URLS"),
        ({"turn_urls": "turn:t", "turn_username": "u"}, "TURN_CREDENTIAL"),
        ({"ice_transport_policy": "relayish"}, "ice_transport_policy"),
    ],
)
def test_half_configured_turn_fails_at_start(env, complaint):
    with pytest.raises(ValueError, match=complaint):
        Settings(**env)


def test_provider_answers_become_clean_ice_servers():
    twilio_like = {
        "iceServers": [
            {"url": "stun:global.stun.twilio.com:3478", "urls": "stun:global.stun.twilio.com:3478"},
            {"url": "turn:global.turn.twilio.com:3478?transport=udp", "username": "u", "credential": "c"},
        ],
        "iceTransportPolicy": "relay",
    }
    assert provider_ice_servers(twilio_like) == [
        {"urls": "stun:global.stun.twilio.com:3478"},
        {"urls": "turn:global.turn.twilio.com:3478?transport=udp", "username": "u", "credential": "c"},
    ]
    single = {"iceServers": {"urls": ["turn:turn.cloudflare.com:3478"], "username": "u", "credential": "c"}}
    assert provider_ice_servers(single) == [single["iceServers"]]
    assert provider_ice_servers({}) == []


def test_cloudflare_keys_win_over_an_ambient_hf_token(monkeypatch):
    """fastrtc's helper prefers HF_TOKEN from the environment over the keys it is given."""
    import fastrtc

    seen: dict = {}

    def fake(**kwargs: object) -> dict:
        seen.update(kwargs)
        return {"iceServers": [{"urls": "turn:cf:3478", "username": "u", "credential": "c"}]}

    monkeypatch.setattr(fastrtc, "get_cloudflare_turn_credentials", fake)
    monkeypatch.setenv("HF_TOKEN", "hf_from_the_environment")
    settings = Settings(turn_provider="cloudflare", cloudflare_turn_key_id="k", cloudflare_turn_api_token="t")
    config = IceConfig(settings).client_configuration()
    assert config["iceServers"] == [{"urls": "turn:cf:3478", "username": "u", "credential": "c"}]
    assert seen == {"turn_key_id": "k", "turn_key_api_token": "t", "hf_token": "", "ttl": 3600}


async def test_server_refreshes_the_provider_off_the_event_loop():
    """With `keep_fresh` running, requests and offers read the cache and never call the provider."""
    loop_thread = threading.get_ident()
    threads: list[int] = []

    def fetch() -> dict:
        threads.append(threading.get_ident())
        return {"iceServers": [{"urls": "turn:provider:3478", "username": "x", "credential": "y"}]}

    config = IceConfig(Settings(turn_credential_ttl_s=600), fetch_provider=fetch)
    task = asyncio.create_task(config.keep_fresh())
    try:
        for _ in range(100):
            await asyncio.sleep(0.01)
            if threads:
                break
        assert config.server_configuration()["iceServers"][0]["urls"] == "turn:provider:3478"
        config._provider_cache = (0.0, config._provider_cache[1])  # due: still no call from here
        config.client_configuration()
        assert len(threads) == 1 and threads[0] != loop_thread
    finally:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert not config._refreshed_in_background


def test_server_credentials_never_outlive_the_providers(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(ice.time, "monotonic", lambda: clock[0])
    names = iter(f"turn:provider-{i}:3478" for i in range(10))
    config = IceConfig(
        Settings(turn_credential_ttl_s=600), fetch_provider=lambda: {"iceServers": [{"urls": next(names)}]}
    )
    config.refresh_provider()  # fetched at 1000, good for use until 1300
    clock[0] = 1200
    assert config.server_configuration()["iceServers"][0]["urls"] == "turn:provider-0:3478"
    config.refresh_provider()  # fetched at 1200
    clock[0] = 1301  # the cached server configuration holds provider-0's credentials: renewed
    assert config.server_configuration()["iceServers"][0]["urls"] == "turn:provider-1:3478"
