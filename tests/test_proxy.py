"""Two server processes behind a real nginx using deploy/nginx's routing: every request about a
session reaches the process that owns it, by the owner named in the session id."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.config import Settings
from tests.rtc_client import VideoClient, issue_session
from tests.server_process import ROOT, ServerProcess, free_port
from tests.ws_client import AudioSocketClient

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
pytestmark = pytest.mark.skipif(
    not Path(NGINX).exists(), reason="nginx is not installed (make test installs it)"
)

CONF = """
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {deploy}/routing.conf;
    upstream rt_any {{ server 127.0.0.1:{a}; server 127.0.0.1:{b}; }}
    upstream rt_a {{ server 127.0.0.1:{a}; }}
    upstream rt_b {{ server 127.0.0.1:{b}; }}
    server {{
        listen 127.0.0.1:{port};
        include {deploy}/locations.conf;
    }}
}}
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, dict[str, ServerProcess]]]:
    env = {"ASSISTANT_ENABLED": "false", "FORWARDED_ALLOW_IPS": "127.0.0.1"}
    servers = {
        name: ServerProcess(env={**env, "INSTANCE_ID": name}, log_name=f"proxy-{name}").start()
        for name in "ab"
    }
    tmp = tempfile.mkdtemp(prefix="nginx-")
    port = free_port()
    conf = Path(tmp) / "nginx.conf"
    conf.write_text(
        CONF.format(
            tmp=tmp, deploy=ROOT / "deploy" / "nginx", a=servers["a"].port, b=servers["b"].port, port=port
        )
    )
    proc = subprocess.Popen([NGINX, "-p", tmp, "-c", str(conf), "-g", "daemon off;"], stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"nginx did not start: {proc.stderr.read().decode() if proc.stderr else ''}")
        time.sleep(0.1)
    yield base, servers
    proc.terminate()
    proc.wait(5)
    for server in servers.values():
        server.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def active_video(server: ServerProcess) -> int:
    return httpx.get(f"{server.base_url}/healthz").json()["streams"]["video"]


async def test_sessions_are_routed_to_their_owner(cluster):
    base, servers = cluster
    ids = [await issue_session(base) for _ in range(6)]
    owners = {webrtc_id.split(".")[0] for webrtc_id, _ in ids}
    assert owners == {"a", "b"}, ids  # round-robin spreads new sessions over both processes
    by_owner = {owner: next(i for i, _ in ids if i.startswith(owner + ".")) for owner in "ab"}
    clients = {o: VideoClient(base, webrtc_id=i, width=320, height=240) for o, i in by_owner.items()}
    try:
        for client in clients.values():
            await client.connect()  # the offer goes through the proxy
            await client.wait_frames(10)
        assert active_video(servers["a"]) == 1 and active_video(servers["b"]) == 1
        for owner, client in clients.items():
            resp = await client.set_input(filter="gray" if owner == "a" else "edges")
            assert resp.status_code == 200, resp.text
        for owner, client in clients.items():  # outputs through the proxy come from the owner
            url = f"{base}/video/outputs?webrtc_id={client.webrtc_id}"
            seen = []
            async with httpx.AsyncClient(timeout=10) as http, http.stream("GET", url) as resp:
                assert resp.status_code == 200
                async for line in resp.aiter_lines():
                    if line.startswith("data:"):
                        seen.append(json.loads(line[5:])["params"]["filter"])
                        if seen[-1] == ("gray" if owner == "a" else "edges") or len(seen) > 20:
                            break
            assert seen[-1] == ("gray" if owner == "a" else "edges"), (owner, seen)
    finally:
        for client in clients.values():
            await client.close()


async def test_websocket_sessions_go_through_the_proxy_to_their_owner(cluster):
    base, servers = cluster
    webrtc_id, _ = await issue_session(base)
    owner = servers[webrtc_id.split(".")[0]]
    url = f"{base.replace('http', 'ws')}/chat/websocket/offer?webrtc_id={webrtc_id}"
    async with AudioSocketClient(url, session_id=webrtc_id) as client:
        await client.start()
        await client.speak(None, seconds_of_silence=0.3)
        assert httpx.get(f"{owner.base_url}/healthz").json()["streams"]["chat"] == 1
        resp = httpx.post(
            f"{base}/chat/input?webrtc_id={webrtc_id}", json={"webrtc_id": webrtc_id, "mode": "echo"}
        )
        assert resp.status_code == 200, resp.text
        assert not [m for _, m in client.events if m.get("event") == "error"], client.events


def test_a_process_refuses_sessions_it_does_not_own(cluster):
    _, servers = cluster
    foreign = asyncio.run(issue_session(servers["b"].base_url))[0]
    resp = httpx.post(f"{servers['a'].base_url}/video/input", json={"webrtc_id": foreign})
    assert resp.status_code == 421 and resp.json()["meta"]["error"] == "wrong_instance"


def test_compose_configs_are_accepted_by_nginx_and_coturn(tmp_path):
    """deploy/nginx/nginx.conf (with a throwaway certificate) passes `nginx -t`; coturn starts with
    deploy/turnserver.conf."""
    deploy = ROOT / "deploy"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test",
         "-keyout", tmp_path / "privkey.pem", "-out", tmp_path / "fullchain.pem"],
        check=True, capture_output=True,
    )  # fmt: skip
    conf = (deploy / "nginx" / "nginx.conf").read_text()
    conf = conf.replace("/etc/nginx/rtserver/", f"{deploy}/nginx/").replace(
        "/etc/nginx/certs/", f"{tmp_path}/"
    )
    conf = conf.replace("worker_processes auto;", f"worker_processes 1;\npid {tmp_path}/nginx.pid;")
    (tmp_path / "nginx.conf").write_text(conf)
    result = subprocess.run(
        [
            NGINX,
            "-t",
            "-p",
            str(tmp_path),
            "-c",
            str(tmp_path / "nginx.conf"),
            "-g",
            f"error_log {tmp_path}/e.log;",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    if shutil.which("turnserver") is None:
        return
    port = free_port()
    turn = subprocess.Popen(
        ["turnserver", "-c", str(deploy / "turnserver.conf"), "--static-auth-secret=s", "--listening-ip=127.0.0.1",
         f"--listening-port={port}", "--realm=test", f"--pidfile={tmp_path}/turn.pid", f"--userdb={tmp_path}/db"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path,
    )  # fmt: skip
    try:
        time.sleep(1.5)
        assert turn.poll() is None, turn.stdout.read().decode() if turn.stdout else ""
    finally:
        turn.terminate()
        turn.wait(5)


def interpolate(value: object, env: dict[str, str]) -> str:
    """Compose's variable substitution: ${VAR}, ${VAR:?message} (required), ${VAR:-default}."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        assert op != ":?", f"compose would stop: {arg}"
        return arg if op == ":-" else ""

    return re.sub(r"\$\{(\w+)(?:(:\?|:-)([^}]*))?\}", one, str(value))


def test_compose_wires_apps_proxy_and_turn_together():
    """deploy/compose.yaml: each app's settings (its command line wins over HOST/PORT) are valid, it
    listens on loopback where nginx's upstream rt_<INSTANCE_ID> points and where its HEALTHCHECK
    (PORT) looks, and it mints TURN credentials from the secret coturn is given, for coturn's port.
    (tests/test_docker.py brings the stack up for real.)"""
    yaml = pytest.importorskip("yaml")
    deploy = ROOT / "deploy"
    compose = yaml.safe_load((deploy / "compose.yaml").read_text())["services"]
    nginx = (deploy / "nginx" / "nginx.conf").read_text()
    upstreams = {
        name: re.findall(r"server ([\d.]+:\d+);", body)
        for name, body in re.findall(r"upstream (\w+)\s*\{([^}]*)\}", nginx)
    }
    turn_port = re.search(r"^listening-port=(\d+)$", (deploy / "turnserver.conf").read_text(), re.M)
    assert turn_port, "turnserver.conf sets no listening-port"
    variables = {"PUBLIC_HOST": "media.example.com", "PUBLIC_IP": "203.0.113.10", "TURN_SECRET": "s" * 32}
    turn = [interpolate(a, variables) for a in compose["turn"]["command"]]
    assert f"--static-auth-secret={'s' * 32}" in turn
    apps = {name: svc for name, svc in compose.items() if svc.get("image") == "rtserver"}
    assert len(apps) >= 2
    addresses = []
    for name, svc in apps.items():
        cmd = [str(a) for a in svc["command"]]
        assert cmd[:3] == ["python", "-m", "server"], name
        env = {k: interpolate(v, variables) for k, v in svc["environment"].items()}
        options = dict(zip(cmd[3::2], cmd[4::2], strict=True))
        given = {k.lower(): v for k, v in env.items()}
        settings = Settings(**{**given, "host": options["--host"], "port": options["--port"]})
        address = f"{settings.host}:{settings.port}"
        assert settings.host == "127.0.0.1", f"{name} would be reachable around the proxy"
        assert env["PORT"] == str(settings.port), f"{name}: the HEALTHCHECK would probe another port"
        assert upstreams[f"rt_{settings.instance_id}"] == [address], name
        assert settings.turn_shared_secret == "s" * 32 and settings.ice_transport_policy == "relay"
        assert all(f":{turn_port.group(1)}" in url for url in settings.turn_urls), settings.turn_urls
        addresses.append(address)
    assert sorted(upstreams["rt_any"]) == sorted(addresses)
