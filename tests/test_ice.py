"""RTCConfigurations from settings: static TURN, coturn REST credentials, providers, relay policy."""

from __future__ import annotations

import base64
import shutil
import subprocess
import time

import pytest

from server import ice
from server.config import Settings
from server.ice import IceConfig, turn_rest_credentials


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
