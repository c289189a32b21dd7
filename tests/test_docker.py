"""The images for real, on a Docker daemon, built with the commands docs/deploy.md gives (issue 17).

No container registry is reachable here, so the base is made from Debian packages
(`make docker-base`); the CPU image built on it (`make docker`) is run, becomes healthy as uid
10001, serves a WebRTC session and a chat WebSocket turn, becomes ready with no network at all
(nothing is downloaded at start) and stops promptly. deploy/compose.yaml comes up with locally
built images and routes a relay-only session through nginx and coturn to each app. The GPU image's
Python environment (Dockerfile.gpu without the CUDA wheels: no GPU here) has the CPU image's pins
and falls back to CPU, saying so in /healthz.

All of it runs on one xdist worker, in file order, a few minutes cold; the build and run times go to
test-artifacts/docker-timings.json. `make test` starts a Docker daemon when run as root; without
one, these tests skip (and fail in CI, where a skip means a broken install).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiortc import RTCConfiguration, RTCIceServer, RTCIceTransportPolicy
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.rtc_client import VideoClient, issue_session
from tests.server_process import ROOT, free_port
from tests.test_chat_rtc import SENTENCE, wait_until
from tests.ws_client import AudioSocketClient

LOCAL_BASE = "local/python:3.11-bookworm"
IMAGE = "rtserver"
GPU_ENV_IMAGE = "rtserver:gpu-env"  # Dockerfile.gpu without the CUDA wheels
COMPOSE_PROJECT = "rtserver-test"
DEPLOY = ROOT / "deploy"
TIMINGS = ROOT / "test-artifacts" / "docker-timings.json"

# The image builds alone take minutes cold: far over the suite's per-test default.
pytestmark = pytest.mark.timeout(900)


def pins(path: Path) -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return {canonicalize_name(n): v for n, v in (line.split("==") for line in lines if line)}


def test_pins_cover_pyproject_and_are_the_same_in_both_images():
    """requirements/runtime.txt pins every runtime dependency at a version pyproject.toml allows;
    the GPU image's onnxruntime-gpu runs onnxruntime's version and moves no other pin."""
    import tomllib

    runtime = pins(ROOT / "requirements" / "runtime.txt")
    gpu = pins(ROOT / "requirements" / "gpu.txt")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for spec in project["project"]["dependencies"]:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate({"python_version": "3.11"}):
            continue
        name = canonicalize_name(req.name)
        assert name in runtime, f"{name} is not pinned: run deploy/lock.py"
        assert req.specifier.contains(runtime[name], prereleases=True), (spec, runtime[name])
    assert gpu["onnxruntime-gpu"] == runtime["onnxruntime"]
    assert not set(gpu) & set(runtime), "gpu.txt must only add packages"
    assert all(name.startswith("nvidia-") for name in set(gpu) - {"onnxruntime-gpu"}), gpu


def test_the_default_build_is_the_cpu_image_and_needs_no_registry_syntax():
    """The classic builder builds every stage before the target, so the default Dockerfile has one
    stage; no `# syntax=` line (BuildKit would fetch that image from a registry); the dependency
    layer comes before the code, so a code change does not reinstall them."""
    text = (ROOT / "Dockerfile").read_text()
    assert re.findall(r"^FROM (.+)$", text, flags=re.M) == ["${BASE_IMAGE} AS cpu"]
    assert not re.search(r"^#\s*syntax\s*=", text, flags=re.M | re.I)
    assert text.index("pip install --no-deps -r") < text.index("COPY server")
    assert "ARG PIP_INDEX_URL" in text and "ARG CA_CERTIFICATES" in text
    gpu = (ROOT / "Dockerfile.gpu").read_text()
    assert re.findall(r"^FROM (.+)$", gpu, flags=re.M) == ["${CPU_IMAGE} AS gpu"]
    ignore = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert ignore[0] == "*", "the context is an allowlist: secrets in deploy/ never reach an image"
    assert not [line for line in ignore if line.startswith("!deploy")]


def compose(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["docker-compose", "-f", str(DEPLOY / "compose.yaml"), *args],
        env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed "
                    "(`make test` installs it as root)")  # fmt: skip
@pytest.mark.parametrize("missing", ["PUBLIC_HOST", "PUBLIC_IP", "TURN_SECRET"])
def test_compose_refuses_to_start_without_a_required_variable(missing, tmp_path):
    """A blank TURN_SECRET once started coturn and the apps with an empty secret."""
    env = {"PUBLIC_HOST": "media.example.com", "PUBLIC_IP": "203.0.113.10", "TURN_SECRET": "s" * 32}
    clean = {k: v for k, v in os.environ.items() if k not in env}
    (tmp_path / "empty.env").write_text("")  # and not a developer's deploy/.env
    del env[missing]
    result = subprocess.run(
        ["docker-compose", "--env-file", str(tmp_path / "empty.env"), "-f", str(DEPLOY / "compose.yaml"), "config"],
        env={**clean, **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0, result.stdout
    assert f"set {missing}" in result.stderr, result.stderr


# --- a Docker daemon and the images ---------------------------------------------------------------


def docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {result.stderr[-3000:]}")
    return result.stdout.strip()


@pytest.fixture(scope="module")
def timings() -> Iterator[dict[str, Any]]:
    """Seconds and sizes measured here, for test-artifacts/docker-timings.json."""
    found: dict[str, Any] = {}
    start = time.monotonic()
    yield found
    found["module_s"] = round(time.monotonic() - start, 1)
    TIMINGS.parent.mkdir(exist_ok=True)
    TIMINGS.write_text(json.dumps(found, indent=2) + "\n")


@pytest.fixture(scope="module")
def daemon(timings: dict[str, Any]) -> Iterator[None]:
    """A Docker daemon that answers, held for this module alone: two test runs on one machine
    would otherwise build the same tags and bind the same compose ports at once."""
    if shutil.which("docker") is None:
        pytest.skip("no docker command: `make test` installs Debian's docker.io when run as root")
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode != 0:
        pytest.skip(
            "no Docker daemon answers: `make test` starts one when run as root (Makefile: docker-daemon)"
        )
    with open("/tmp/rtserver-docker-tests.lock", "w") as lock:
        waited = time.monotonic()
        fcntl.flock(lock, fcntl.LOCK_EX)
        timings["waited_for_lock_s"] = round(time.monotonic() - waited, 1)
        yield


def make(*targets: str, timeout: float = 600) -> float:
    """Run `make TARGETS` as a user would; the seconds it took."""
    start = time.monotonic()
    result = subprocess.run(
        ["make", "-s", *targets], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise RuntimeError(f"make {' '.join(targets)} failed:\n{(result.stdout + result.stderr)[-4000:]}")
    return round(time.monotonic() - start, 1)


@pytest.fixture(scope="module")
def image(daemon: None, timings: dict[str, Any]) -> str:
    """The CPU image, built as docs/deploy.md says for a machine with no container registry."""
    inspect = subprocess.run(["docker", "image", "inspect", LOCAL_BASE], capture_output=True, timeout=60)
    timings["base_cached"] = inspect.returncode == 0
    timings["base_s"] = make("docker-base")
    timings["cpu_build_s"] = make("docker", f"BASE_IMAGE={LOCAL_BASE}", f"IMAGE={IMAGE}")
    timings["cpu_image_bytes"] = int(docker("image", "inspect", "-f", "{{.Size}}", IMAGE))
    return IMAGE


class Container:
    """One `docker run -d`, its log kept in test-artifacts/, removed on exit. It runs the image's own
    HEALTHCHECK every second instead of every 15 s, so that the test need not wait for it."""

    def __init__(self, image: str, network: str = "host", env: dict[str, str] | None = None,
                 command: list[str] | None = None) -> None:  # fmt: skip
        self.name = f"rtserver-test-{os.getpid()}-{time.monotonic_ns()}"
        envs = [f"--env={k}={v}" for k, v in (env or {}).items()]
        self.cmd = ["run", "-d", "--name", self.name, f"--network={network}", "--health-interval=1s",
                    *envs, image, *(command or [])]  # fmt: skip

    def __enter__(self) -> Container:
        self.started = time.monotonic()
        docker(*self.cmd)
        return self

    def __exit__(self, *exc: object) -> None:
        log = ROOT / "test-artifacts" / f"{self.name}.log"
        log.parent.mkdir(exist_ok=True)
        log.write_text(self.logs())
        docker("rm", "-f", self.name, check=False)

    def logs(self) -> str:
        result = subprocess.run(["docker", "logs", self.name], capture_output=True, text=True, timeout=30)
        return result.stdout + result.stderr

    def state(self, field: str) -> str:
        return docker("inspect", "-f", "{{" + field + "}}", self.name)

    def wait_healthy(self, timeout: float = 120) -> float:
        """Seconds from `docker run` until the image's HEALTHCHECK passed."""
        deadline = time.monotonic() + timeout
        while (status := self.state(".State.Health.Status")) != "healthy":
            if self.state(".State.Running") != "true" or time.monotonic() > deadline:
                raise AssertionError(f"container {status}, not healthy:\n{self.logs()[-3000:]}")
            time.sleep(0.25)
        return round(time.monotonic() - self.started, 1)

    def get(self, path: str, port: int = 8000) -> Any:
        """GET a JSON route from inside the container (for `--network none`)."""
        code = (f"import json, urllib.request; print(json.dumps(json.load(urllib.request.urlopen("
                f"'http://127.0.0.1:{port}{path}', timeout=5))))")  # fmt: skip
        return json.loads(docker("exec", self.name, "python", "-c", code))

    def stop(self) -> float:
        start = time.monotonic()
        docker("stop", "-t", "10", self.name, timeout=30)
        return round(time.monotonic() - start, 1)


@pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (make test installs it)"
)
async def test_the_cpu_image_serves_webrtc_and_chat_as_an_unprivileged_user(image, timings):
    """The image on the host's network (WebRTC's UDP as deployed): healthy, uid 10001, a video
    session with frames back and a live flip, one chat turn echoed over WebSocket, a prompt stop."""
    from tests.audio_client import speech

    port = free_port()
    with Container(
        image, env={"PORT": str(port), "ICE_HOST_ADDRESSES": "127.0.0.1", "ASSISTANT_ENABLED": "false"},
        command=["python", "-m", "server", "--host", "127.0.0.1", "--port", str(port)],
    ) as box:  # fmt: skip
        timings["cpu_healthy_s"] = box.wait_healthy()
        assert docker("exec", box.name, "id", "-u") == "10001"
        base = f"http://127.0.0.1:{port}"
        client = VideoClient(base, width=320, height=240)
        try:
            await client.connect()
            await client.wait_frames(15)
            assert (await client.set_input(filter="flip")).status_code == 200
            assert await wait_until(lambda: client.received[-1].orientation == "flip", 5)
            latencies = sorted(r.latency_s for r in client.received[-15:] if r.latency_s == r.latency_s)
            timings["cpu_video_p50_ms"] = round(latencies[len(latencies) // 2] * 1000, 1)
        finally:
            await client.close()
        url = f"ws://127.0.0.1:{port}/chat/websocket/offer"
        async with AudioSocketClient(url) as chat:
            await chat.start()
            await chat.speak(None, 0.3)
            ended = await chat.speak(speech(SENTENCE), 1.0)
            assert await wait_until(lambda: chat.audible_after(ended), 5), chat.event_types()
            await chat.send({"event": "stop"})
            assert await chat.closed() == 1000
        timings["cpu_stop_s"] = box.stop()
        assert timings["cpu_stop_s"] < 5, "SIGTERM must stop the server, not the 10 s SIGKILL"
        assert box.state(".State.ExitCode") == "0", box.logs()[-2000:]


def test_the_cpu_image_becomes_ready_with_no_network(image, timings):
    """`--network none`, everything on (the assistant's speech-to-text and voice too): every model
    comes from the image, so the server gets ready with nothing to download."""
    with Container(image, network="none") as box:
        timings["offline_healthy_s"] = box.wait_healthy()
        deadline = time.monotonic() + 60
        while box.get("/healthz")["assistant"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.5)
        ready = box.get("/readyz")
        assert ready["status"] == "ready", ready
        assert set(ready["models"].values()) == {"ready"}, ready
        timings["offline_ready_s"] = round(time.monotonic() - box.started, 1)


# --- deploy/compose.yaml --------------------------------------------------------------------------


def host_address() -> str:
    """This machine's address on its default route (no packet is sent), else loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("203.0.113.1", 9))  # TEST-NET-3: the route lookup alone names the interface
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def port_in_use(port: int, kind: int) -> bool:
    """Whether a server holds the port (connections left in TIME_WAIT do not count, as for nginx)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


@pytest.fixture
def stack(image: str, tmp_path: Path, timings: dict[str, Any], monkeypatch) -> Iterator[str]:
    """deploy/compose.yaml up (`docker-compose up -d --build`, as docs/deploy.md says), with this
    machine's address as PUBLIC_HOST and PUBLIC_IP and a throwaway certificate for it. On top, for
    the test only: coturn may relay to that address (private here, a public one needs no exception;
    on loopback, loopback peers), the apps' health is checked every second, their assistant is off."""
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (`make test` installs it as root)")
    busy = [p for p, kind in ((80, socket.SOCK_STREAM), (443, socket.SOCK_STREAM), (3478, socket.SOCK_DGRAM),
                              (8001, socket.SOCK_STREAM), (8002, socket.SOCK_STREAM)) if port_in_use(p, kind)]  # fmt: skip
    assert not busy, f"the compose stack needs these host ports free: {busy}"
    address = host_address()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={address}",
         "-addext", f"subjectAltName=IP:{address}", "-keyout", tmp_path / "privkey.pem",
         "-out", tmp_path / "fullchain.pem"],
        check=True, capture_output=True,
    )  # fmt: skip
    shipped = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    extra = [f"--allowed-peer-ip={address}"]
    if address.startswith("127."):  # no other interface: coturn must relay on loopback too
        extra += ["--allow-loopback-peers", f"--relay-ip={address}"]
    fast_health = {"interval": "1s", "timeout": "5s", "retries": 3}
    override = {
        "services": {
            "proxy": {"volumes": [f"{tmp_path}:/etc/nginx/certs:ro"]},
            "turn": {"command": [*shipped["turn"]["command"], *extra]},
            **{name: {"environment": {"ASSISTANT_ENABLED": "false"}, "healthcheck": fast_health}
               for name in ("app-a", "app-b")},
        }
    }  # fmt: skip
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(override))
    (tmp_path / "empty.env").write_text("")
    env = {"PUBLIC_HOST": address, "PUBLIC_IP": address, "TURN_SECRET": "compose-test-" + "s" * 20,
           "BASE_IMAGE": LOCAL_BASE, "COMPOSE_PROJECT_NAME": COMPOSE_PROJECT}  # fmt: skip
    files = ["--env-file", str(tmp_path / "empty.env"), "-f", str(DEPLOY / "compose.yaml"), "-f", str(tmp_path / "test.yaml")]  # fmt: skip

    def run(*args: str, timeout: float = 300) -> float:
        start = time.monotonic()
        result = subprocess.run(["docker-compose", *files, *args], env={**os.environ, **env},
                                capture_output=True, text=True, timeout=timeout)  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"docker-compose {' '.join(args)}:\n{result.stderr[-4000:]}")
        return round(time.monotonic() - start, 1)

    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "fullchain.pem"))  # httpx: trust the test's cert
    run("down", timeout=120)  # what a killed run may have left
    try:
        start = time.monotonic()
        timings["compose_up_s"] = run("up", "-d", "--build")
        deadline = time.monotonic() + 120
        while True:
            states = {n: docker("inspect", "-f", "{{.State.Health.Status}}", f"{COMPOSE_PROJECT}_{n}_1")
                      for n in ("app-a", "app-b")}  # fmt: skip
            if set(states.values()) == {"healthy"}:
                break
            assert time.monotonic() < deadline, f"apps not healthy: {states}"
            time.sleep(0.5)
        timings["compose_healthy_s"] = round(time.monotonic() - start, 1)
        yield f"https://{address}"
    finally:
        logs = subprocess.run(["docker-compose", *files, "logs", "--no-color"], env={**os.environ, **env},
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        (ROOT / "test-artifacts" / "compose-stack.log").write_text(logs.stdout + logs.stderr)
        timings["compose_down_s"] = run("down", timeout=120)


async def test_compose_routes_a_relay_only_session_through_nginx_to_each_app(stack, timings):
    """Through nginx's TLS: new sessions go round-robin to both apps; each one's offer reaches its
    owner, and its media flows only through coturn (relay candidates on both ends)."""
    base = stack
    ids = [(await issue_session(base))[0] for _ in range(4)]
    by_owner = {owner: next(i for i in ids if i.startswith(owner + ".")) for owner in "ab"}
    for owner, webrtc_id in by_owner.items():
        config = httpx.get(f"{base}/api/rtc-config", params={"webrtc_id": webrtc_id}).json()
        assert config["iceTransportPolicy"] == "relay", config
        relay_only = RTCConfiguration(
            iceServers=[RTCIceServer(**s) for s in config["iceServers"]],
            iceTransportPolicy=RTCIceTransportPolicy.RELAY,
        )
        client = VideoClient(base, webrtc_id=webrtc_id, width=320, height=240, rtc_configuration=relay_only)
        try:
            await client.connect()
            await client.wait_frames(15, timeout=20)
            types = {line.split(" typ ")[1].split()[0] for line in client.pc.localDescription.sdp.splitlines()
                     if " typ " in line}  # fmt: skip
            assert types == {"relay"}, types
            port = {"a": 8001, "b": 8002}[owner]
            health = httpx.get(f"http://127.0.0.1:{port}/healthz").json()
            assert health["instance"] == owner and health["streams"]["video"] == 1, health
        finally:
            await client.close()


# --- the GPU image's Python environment -----------------------------------------------------------


def freeze(image: str) -> dict[str, str]:
    """name -> version of every distribution in the image's venv."""
    out = docker("run", "--rm", "--network=none", "--entrypoint=pip", image, "freeze", "--all")
    return dict(line.split("==") for line in out.splitlines() if "==" in line)


def test_the_gpu_image_keeps_the_cpu_pins_and_falls_back_to_cpu_saying_so(image, timings):
    """Dockerfile.gpu without the CUDA wheels (no GPU here; with them the only library left
    unresolved is the driver's libcuda, see docs/deploy.md): the CPU image's exact pins with
    onnxruntime-gpu in place of onnxruntime; CUDA is requested, cannot start, and both the log and
    /healthz say the detector runs on CPU."""
    timings["gpu_env_build_s"] = make("docker-gpu", f"BASE_IMAGE={LOCAL_BASE}", f"IMAGE={image}",
                                      f"GPU_IMAGE={GPU_ENV_IMAGE}", "CUDA_EXTRAS=")  # fmt: skip
    try:
        check_gpu_environment(image, timings)
    finally:  # a test artifact: each code change would otherwise leave another 350 MB behind
        docker("rmi", GPU_ENV_IMAGE, check=False)


def check_gpu_environment(image: str, timings: dict[str, Any]) -> None:
    """Same pins as the CPU image but onnxruntime's wheel; runs, and says it fell back to CPU."""
    cpu, gpu = freeze(image), freeze(GPU_ENV_IMAGE)
    assert gpu.pop("onnxruntime-gpu") == cpu.pop("onnxruntime")
    assert gpu == cpu
    with Container(GPU_ENV_IMAGE, network="none", env={"ASSISTANT_ENABLED": "false"}) as box:
        timings["gpu_env_healthy_s"] = box.wait_healthy()
        available = docker("exec", box.name, "python", "-c", "import onnxruntime; print(onnxruntime.get_available_providers())")  # fmt: skip
        assert "CUDAExecutionProvider" in available, "this is the CUDA build of onnxruntime"
        detector = box.get("/healthz")["detector"]
        assert detector["providers_requested"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
        assert detector["providers"] == ["CPUExecutionProvider"], detector
        assert "CUDAExecutionProvider requested but not in use" in box.logs()
