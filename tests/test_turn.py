"""TURN for real: a coturn started on loopback, our server and its clients relay-only through it,
with static credentials and with coturn's shared-secret (REST) credentials; wrong credentials
fail with a clear message on the page."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aioice import TransportPolicy, stun
from aioice.turn import TurnClientUdpProtocol
from aiortc import RTCConfiguration, RTCIceServer, RTCIceTransportPolicy
from aiortc.rtcicetransport import RTCIceGatherer

from server.ice import turn_rest_credentials
from tests.rtc_client import VideoClient, issue_session
from tests.server_process import ROOT, ServerProcess, free_port
from tests.test_browser import ARTIFACTS, COUNT_FRAMES, STRIP_VALUES, chromium_page

pytestmark = pytest.mark.skipif(shutil.which("turnserver") is None, reason="coturn is not installed")

SECRET = "coturn-shared-secret"


class Coturn:
    """A real coturn on 127.0.0.1, relaying between loopback peers, stopped by its own PID."""

    def __init__(self, auth: list[str], config: Path | None = None) -> None:
        self.port = free_port()
        low = 49152 + (self.port % 1000) * 10
        self.log_path = ROOT / "test-artifacts" / f"coturn-{self.port}.log"
        self.log_path.parent.mkdir(exist_ok=True)
        self.workdir = tempfile.mkdtemp(prefix="coturn-")
        self.cmd = [
            "turnserver", "-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
            f"--listening-port={self.port}", "--realm=test", "--no-tls", "--no-dtls", "--no-cli",
            "--allow-loopback-peers", f"--min-port={low}", f"--max-port={low + 9}", "--verbose",
            f"--pidfile={self.workdir}/turn.pid", f"--userdb={self.workdir}/turndb", "--log-file=stdout",
            *auth,
        ]  # fmt: skip
        if config is not None:  # the shipped file, with this test's addresses and ports on top
            self.cmd.remove("-n")  # "no configuration file"
            self.cmd.remove("--allow-loopback-peers")
            self.cmd[1:1] = ["-c", str(config)]
        self.url = f"turn:127.0.0.1:{self.port}?transport=udp"

    def __enter__(self) -> Coturn:
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.workdir)
        deadline = time.monotonic() + 10
        while b"listener opened on" not in self.log_path.read_bytes() and b"IPv4. UDP listener" not in (
            self.log_path.read_bytes()
        ):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"coturn did not start: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        self.log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def allocations(self) -> int:
        return self.log_path.read_text(errors="replace").count("ALLOCATE processed, success")


@pytest.fixture(scope="module")
def static_turn() -> Iterator[Coturn]:
    with Coturn(["--lt-cred-mech", "--user=alice:wonderland"]) as turn:
        yield turn


@pytest.fixture(scope="module")
def secret_turn() -> Iterator[Coturn]:
    with Coturn(["--use-auth-secret", f"--static-auth-secret={SECRET}"]) as turn:
        yield turn


def relay_server(turn: Coturn, name: str, **credentials: str) -> ServerProcess:
    return ServerProcess(
        env={
            "TURN_URLS": turn.url,
            "ICE_TRANSPORT_POLICY": "relay",
            "ASSISTANT_ENABLED": "false",
            **{k.upper(): v for k, v in credentials.items()},
        },
        log_name=name,
    ).start()


async def relay_only_video_session(server: ServerProcess) -> list[str]:
    """Connect a relay-only aiortc client with the ICE configuration the page would get; media must
    flow. Returns the candidate types the client offered."""
    webrtc_id, _ = await issue_session(server.base_url)
    config = httpx.get(f"{server.base_url}/api/rtc-config?webrtc_id={webrtc_id}").json()
    assert config["iceTransportPolicy"] == "relay"
    relay_only = RTCConfiguration(
        iceServers=[RTCIceServer(**s) for s in config["iceServers"]],
        iceTransportPolicy=RTCIceTransportPolicy.RELAY,
    )
    client = VideoClient(
        server.base_url, webrtc_id=webrtc_id, width=320, height=240, rtc_configuration=relay_only
    )
    try:
        await client.connect()
        await client.wait_frames(15, timeout=20)
        return [
            line.split(" typ ")[1].split()[0]
            for line in client.pc.localDescription.sdp.splitlines()
            if " typ " in line
        ]
    finally:
        await client.close()


async def test_relay_only_with_static_credentials(static_turn):
    server = relay_server(static_turn, "turn-static", turn_username="alice", turn_credential="wonderland")
    try:
        before = static_turn.allocations()
        types = await relay_only_video_session(server)
        assert types and set(types) == {"relay"}, types
        assert static_turn.allocations() >= before + 2  # the client's and the server's own
    finally:
        server.stop()


async def test_relay_only_with_shared_secret_credentials(secret_turn):
    server = relay_server(secret_turn, "turn-secret", turn_shared_secret=SECRET, turn_credential_ttl_s="600")
    try:
        stranger = httpx.get(f"{server.base_url}/api/rtc-config")  # no session: no relay to mint
        assert stranger.status_code == 403 and stranger.json()["meta"]["error"] == "session_required"
        made_up = httpx.get(f"{server.base_url}/api/rtc-config", params={"webrtc_id": "made-up-id"})
        assert made_up.status_code == 403
        webrtc_id, _ = await issue_session(server.base_url, None)
        config = httpx.get(f"{server.base_url}/api/rtc-config", params={"webrtc_id": webrtc_id}).json()
        assert config["iceServers"][0]["username"].endswith(":rtserver")
        before = secret_turn.allocations()
        types = await relay_only_video_session(server)
        assert set(types) == {"relay"}, types
        assert secret_turn.allocations() >= before + 2
    finally:
        server.stop()


async def test_wrong_shared_secret_gathers_no_relay(secret_turn):
    """What the page checks: coturn refuses credentials minted from another secret."""
    username, credential = turn_rest_credentials("not-it", "u", 600)
    gatherer = RTCIceGatherer([RTCIceServer(urls=secret_turn.url, username=username, credential=credential)])
    gatherer._connection._transport_policy = TransportPolicy.RELAY
    await gatherer.gather()
    assert not [c for c in gatherer.getLocalCandidates() if c.type == "relay"]
    await gatherer._connection.close()


async def browser_relay_session(server: ServerProcess, screenshot: str) -> None:
    """The camera panel, relay-only as the server's configuration says: frames advance, the selected
    candidate pair is a relay one, and the console stays clean."""
    errors: list[str] = []
    async with chromium_page(server.base_url + "/", errors) as page:
        await page.click("#connect")
        await page.wait_for_function("document.getElementById('remote').videoWidth > 0", timeout=30000)
        assert await page.evaluate(COUNT_FRAMES, "remote") > 15
        pair_type = await page.evaluate(SELECTED_PAIR_TYPE, "/video")
        assert pair_type == "relay", pair_type
        await page.wait_for_function(
            "document.querySelector('#camera-rtc .rtc-stat.rtt .value')?.textContent.endsWith(' ms')",
            timeout=10000,
        )
        print(f"\nthrough coturn ({screenshot}): {await page.evaluate(STRIP_VALUES, 'camera-rtc')}")
        await page.screenshot(path=str(ARTIFACTS / screenshot))
    assert not errors, errors


async def test_browser_relay_only_with_shared_secret_credentials(secret_turn):
    server = relay_server(secret_turn, "turn-browser-secret", turn_shared_secret=SECRET)
    try:
        before = secret_turn.allocations()
        await browser_relay_session(server, "camera-panel-relay-secret.png")
        assert secret_turn.allocations() >= before + 2  # the browser's and the server's own
    finally:
        server.stop()


async def test_browser_relay_only_and_wrong_credentials_message(static_turn):
    good = relay_server(static_turn, "turn-browser", turn_username="alice", turn_credential="wonderland")
    bad = relay_server(static_turn, "turn-browser-bad", turn_username="alice", turn_credential="wrong")
    try:
        await browser_relay_session(good, "camera-panel-relay.png")
        async with chromium_page(bad.base_url + "/", []) as page:
            await page.click("#connect")
            await page.wait_for_function(
                "document.getElementById('status').classList.contains('error')", timeout=30000
            )
            status = await page.text_content("#status")
            assert "TURN server" in status, status
            await page.screenshot(path=str(ARTIFACTS / "turn-wrong-credentials.png"))
            print(f"\nwrong TURN credentials, the page says: {status}")
    finally:
        good.stop()
        bad.stop()


SELECTED_PAIR_TYPE = """async (stream) => {
  const stats = await window.rtcPeers[stream].getStats(); let pair = null; const byId = {};
  stats.forEach((s) => { byId[s.id] = s; if (s.type === 'transport') pair = s.selectedCandidatePairId; });
  const local = byId[byId[pair]?.localCandidateId]; return local?.candidateType ?? 'none';
}"""


# Addresses a relay must never reach for a stranger: cloud metadata (link-local), carrier-grade NAT,
# benchmarking, documentation, private, loopback, "this network"; plus one public address that must
# stay reachable (so the check can fail).
FORBIDDEN_PEERS = ["169.254.169.254", "100.64.0.1", "100.127.255.254", "198.18.0.1", "198.19.255.1",
                   "192.0.2.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "127.0.0.1", "0.0.0.1",
                   "240.0.0.1"]  # fmt: skip


async def test_the_shipped_coturn_config_refuses_relays_to_internal_ranges():
    """deploy/turnserver.conf as shipped (issue 13: 169.254.169.254, 100.64/10 and 198.18/15 were
    granted): a real coturn refuses each forbidden peer with 403 and allows a public one."""
    conf = ROOT / "deploy" / "turnserver.conf"
    assert "no-tcp-relay" in conf.read_text().split(), "TCP relays (RFC 6062) are off"
    with Coturn([f"--static-auth-secret={SECRET}"], config=conf) as turn:
        username, password = turn_rest_credentials(SECRET, "audit", 600)
        server = ("127.0.0.1", turn.port)
        transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: TurnClientUdpProtocol(
                server, username=username, password=password, lifetime=600, channel_refresh_time=500
            ),
            remote_addr=server,
        )
        try:
            await protocol.connect()  # the allocation
            refused = {}
            for n, peer in enumerate([*FORBIDDEN_PEERS, "8.8.8.8"]):
                try:
                    await protocol.channel_bind(0x4000 + n, (peer, 9))
                    refused[peer] = None
                except stun.TransactionFailed as exc:
                    refused[peer] = exc.response.attributes.get("ERROR-CODE")
        finally:
            transport.close()
    assert refused.pop("8.8.8.8") is None, "a public peer must stay reachable"
    assert {peer: code[0] if code else None for peer, code in refused.items()} == dict.fromkeys(
        FORBIDDEN_PEERS, 403
    )
