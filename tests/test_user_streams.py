"""Your own fastrtc handler, served hardened: fastrtc-style apps with only their import line changed,
served by `python -m server --streams module:attr` and driven through the real protocol."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests import netaudit
from tests.audio_client import ChatClient, loudest_frame_rms, speech
from tests.rtc_client import ReceiveClient, VideoClient, percentile
from tests.server_process import ROOT, ServerProcess, free_port
from tests.test_chat_rtc import SENTENCE, wait_until
from tests.test_video_rtc import read_sse
from tests.ws_client import AudioSocketClient

TOKEN = "user-streams-secret-token"
APPS = [
    "tests.user_apps.object_detection:stream",
    "tests.user_apps.generator:stream",
    "tests.user_apps.voice:stream",
    "tests.user_apps.hardening:streams",
    "tests.user_apps.audio_video:stream",
]


@pytest.fixture(scope="module")
def users() -> Iterator[ServerProcess]:
    """The server with four user apps beside the built-ins, and an access token required."""
    cli = [arg for app in APPS for arg in ("--streams", app)]
    with ServerProcess(cli=cli, env={"AUTH_TOKEN": TOKEN}, log_name="user-streams") as proc:
        yield proc


def outputs_url(server: ServerProcess, stream: str, webrtc_id: str) -> str:
    return f"{server.base_url}/{stream}/outputs?webrtc_id={webrtc_id}&token={TOKEN}"


async def test_user_streams_are_listed_beside_the_built_ins(users):
    health = httpx.get(f"{users.base_url}/healthz").json()
    assert set(health["streams"]) == {"video", "generate", "chat", "object_detection", "generator", "voice",
                                      "slow", "every", "fragile", "mirror"}  # fmt: skip
    assert "Serving your stream 'object_detection' (video, send-receive) at /object_detection/" in users.log()


async def test_object_detection_example_takes_its_slider_by_parameter_name(users):
    client = VideoClient(users.base_url, stream="object_detection", token=TOKEN)
    await client.connect()
    try:
        await client.wait_frames(10)
        ok = await client.set_input(conf_threshold=0.62)
        assert ok.status_code == 200 and ok.json()["params"] == {"conf_threshold": 0.62}, ok.text
        events = await read_sse(outputs_url(users, "object_detection", client.webrtc_id), 5,
                                until=lambda e: e.get("values", [None, None])[1] == 0.62)  # fmt: skip
        assert events and events[-1] == {"type": "outputs", "values": [0, 0.62]}, events[-3:]
        too_high = await client.set_input(conf_threshold=1.5)
        assert too_high.status_code == 422 and too_high.json()["meta"]["error"] == "invalid_input"
        assert "conf_threshold" in too_high.json()["message"] and "1" in too_high.json()["message"]
        unknown = await client.set_input(iou=0.5)
        assert unknown.status_code == 422 and "iou" in unknown.json()["message"]
        await client.wait_frames(10)  # the stream goes on after refused inputs
    finally:
        await client.close()


@pytest.mark.serial
async def test_generator_example_is_paced_at_its_fps_and_follows_a_live_fps(users):
    client = ReceiveClient(users.base_url, stream="generator", token=TOKEN)
    await client.connect()
    try:
        await asyncio.sleep(2.0)
        t0 = time.monotonic()
        await asyncio.sleep(3.0)
        assert abs(client.rate(t0) - 15) <= 1.5, (
            f"VideoStreamHandler(fps=15) delivered {client.rate(t0):.1f} fps"
        )
        assert (await client.set_input(fps=25)).status_code == 200
        await asyncio.sleep(1.5)
        t1 = time.monotonic()
        await asyncio.sleep(3.0)
        assert abs(client.rate(t1) - 25) <= 2.5, f"live fps 25 delivered {client.rate(t1):.1f} fps"
        counters = [c for t, c, _ in client.frames if t >= t0]
        gaps = [b - a for a, b in zip(counters, counters[1:], strict=False) if b - a != 1]
        assert gaps == [], f"a change of fps must not restart the generator: {gaps[:5]}"
        bad = await client.set_input(colour="purple")
        assert bad.status_code == 422 and "choose one of: red, green, blue" in bad.json()["message"]
        assert (await client.set_input(colour="blue")).status_code == 200
        assert (await client.set_input(fps=0)).status_code == 422
    finally:
        await client.close()


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
async def test_reply_on_pause_example_echoes_over_webrtc_and_websocket(users):
    client = ChatClient(users.base_url, stream="voice", token=TOKEN)
    await client.connect()
    try:
        clip = speech(SENTENCE)
        _, ended = await client.mic.say(clip)
        assert await wait_until(lambda: client.reply_audio(ended), 5), "no echo came back over WebRTC"
        delay_ms = (client.reply_audio(ended)[0] - ended) * 1000
        print(f"\nuser ReplyOnPause over WebRTC: end of speech -> first echo {delay_ms:.0f} ms")
        assert delay_ms < 1500
        assert client.logs("pause_detected") and client.logs("response_starting")
        await asyncio.sleep(len(clip) / 48_000 + 0.5)
        loudest = max(rms for t, rms in client.received if t > ended)
        assert 0.3 < loudest / loudest_frame_rms(clip) < 2.0, f"echo level {loudest:.3f}: distorted or lost"
    finally:
        await client.close()
    # the stream's limit is fastrtc's default, 1: the WebSocket waits for the WebRTC session to end
    assert await wait_until(
        lambda: httpx.get(f"{users.base_url}/healthz").json()["streams"]["voice"] == 0, 10
    )
    url = users.base_url.replace("http://", "ws://") + f"/voice/websocket/offer?token={TOKEN}"
    async with AudioSocketClient(url) as ws:
        await ws.start()
        await ws.speak(None, 0.3)
        ended = await ws.speak(speech(SENTENCE), 1.0)
        assert await wait_until(lambda: ws.audible_after(ended), 5), ws.event_types()


@pytest.mark.serial
async def test_a_slow_user_handler_keeps_latency_bounded_and_other_sessions_unaffected(users):
    slow = VideoClient(users.base_url, stream="slow", token=TOKEN)
    other = VideoClient(users.base_url, stream="fragile", token=TOKEN)
    await slow.connect()
    await other.connect()
    try:
        await slow.wait_frames(5, timeout=20)
        await other.wait_frames(30)
        await asyncio.sleep(4)
        slow_frames, other_frames = slow.window(3), other.window(3)
        slow_p50 = percentile([r.latency_s for r in slow_frames], 50) * 1000
        other_p50 = percentile([r.latency_s for r in other_frames], 50) * 1000
        print(f"\n200 ms handler: {len(slow_frames) / 3:.1f} fps, p50 {slow_p50:.0f} ms; "
              f"other session: {len(other_frames) / 3:.1f} fps, p50 {other_p50:.0f} ms")  # fmt: skip
        assert all(r.orientation == "flip" for r in slow_frames[-5:]), "the slow handler's output arrives"
        assert 3 <= len(slow_frames) / 3 <= 6, "newest-frame skipping: about 5 fps from a 200 ms handler"
        assert slow_p50 < 600, f"latency must not build up behind a slow handler ({slow_p50:.0f} ms)"
        assert len(other_frames) / 3 > 24 and other_p50 < 150, "another session is unaffected"
        t0 = time.monotonic()
        assert httpx.get(f"{users.base_url}/healthz").status_code == 200
        assert time.monotonic() - t0 < 0.5, "the event loop stays free"
    finally:
        await slow.close()
        await other.close()


async def test_skip_frames_false_processes_every_frame_of_a_burst(users):
    client = VideoClient(users.base_url, stream="every", token=TOKEN, fps=30)
    await client.connect()
    try:
        await client.wait_frames(60)
        sent = client.track.seq
        await asyncio.sleep(1.0)
        events = await read_sse(outputs_url(users, "every", client.webrtc_id), 3,
                                until=lambda e: e.get("processed", 0) >= sent)  # fmt: skip
        assert events and events[-1]["processed"] >= sent, (sent, events[-1:])
        seqs = [r.seq for r in client.received]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "every frame came back, in order"
    finally:
        await client.close()


async def test_a_raising_user_handler_is_reported_without_its_internals_and_the_stream_goes_on(users):
    client = VideoClient(users.base_url, stream="fragile", token=TOKEN)
    await client.connect()
    try:
        await client.wait_frames(10)
        assert client.received[-1].orientation == "flip"
        assert (await client.set_input(fail=True)).status_code == 200
        assert await wait_until(lambda: any(m.get("type") == "error" for m in client.messages), 5)
        error = next(m for m in client.messages if m.get("type") == "error")
        assert "sk-internal" not in error["message"] and "10.0.0.7" not in error["message"], error
        incident = re.search(r"incident ([0-9a-f]{8})", error["message"])
        assert incident, error
        logged = [line for line in users.log().splitlines() if incident.group(1) in line]
        assert logged and "sk-internal-1234" in logged[0], "the operator finds the details by the id"
        await client.wait_frames(20)
        assert client.received[-1].orientation == "upright", "frames keep coming, unprocessed"
        assert (await client.set_input(fail=False)).status_code == 200
        await asyncio.sleep(0.5)
        await client.wait_frames(10)
        assert client.received[-1].orientation == "flip", "and are processed again once it recovers"
    finally:
        await client.close()
    metrics = httpx.get(f"{users.base_url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    assert 'rt_handler_errors_total{stream="fragile"}' in metrics


async def test_limits_tokens_and_metrics_apply_to_user_streams(users):
    body_for = lambda i: {"type": "offer", "webrtc_id": f"nobody-{i}", "sdp": "v=0"}  # noqa: E731
    async with httpx.AsyncClient(base_url=users.base_url) as http:
        resp = await http.post("/slow/webrtc/offer", json=body_for(1))
        assert resp.status_code == 401 and resp.json()["meta"]["error"] == "unauthorized", resp.text
    clients = [VideoClient(users.base_url, stream="slow", token=TOKEN) for _ in range(3)]
    try:
        await clients[0].connect()
        await clients[1].connect()
        with pytest.raises(RuntimeError, match="503.*concurrency_limit_reached"):
            await clients[2].connect()
        metrics = httpx.get(f"{users.base_url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
        assert 'rt_sessions_active{stream="slow",transport="webrtc"} 2.0' in metrics
        assert 'rt_offers_total{outcome="concurrency_limit_reached",stream="slow"}' in metrics
    finally:
        for c in clients:
            if hasattr(c, "pc"):
                await c.close()


def start_failure(*streams: str) -> str:
    """Run `python -m server --streams ...` and return what it printed when it refused to start."""
    cli = [arg for s in streams for arg in ("--streams", s)]
    cmd = [sys.executable, "-m", "server", "--port", str(free_port()), *cli]
    audit = ROOT / "test-artifacts" / f"start-failure-{abs(hash(streams))}.net.log"
    if netaudit.available():
        cmd = netaudit.wrap(cmd, audit)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    netaudit.check(audit, f"python -m server --streams {' '.join(streams)}")
    assert proc.returncode != 0, f"the server started: {proc.stdout[-500:]}"
    return proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("tests.user_apps.bad.clash:stream", "two streams are named 'video' (a built-in stream)"),
        ("tests.user_apps.bad.broken:stream", "cannot import tests.user_apps.bad.broken: RuntimeError: this module has a bug on line 3 (broken.py:3)"),
        ("tests.user_apps.bad.audio_function:stream", "wrap your function as ReplyOnPause(fn)"),
        ("tests.user_apps.bad.stock:stream", "is not a streams.Stream (build it with `from streams import Stream`"),
        ("tests.user_apps.voice:nothing", "has no attribute 'nothing'"),
        ("tests.user_apps.nowhere:stream", "cannot import tests.user_apps.nowhere: ModuleNotFoundError"),
        ("tests.user_apps.voice", "expected MODULE:ATTR"),
    ],
    ids=["name-clash", "import-error", "unsupported-shape", "stock-stream", "no-attribute", "no-module", "no-attr"],
)  # fmt: skip
def test_a_bad_streams_option_stops_start_up_with_one_clear_line(spec, expected):
    """The CLI's own code path, run in this process (a process per case cost 15-26 s each, mostly
    imports); `test_the_cli_prints_one_line_and_exits_non_zero` runs one case as a real process."""
    from server.__main__ import main

    with pytest.raises(SystemExit) as stopped:
        main(["--port", "1", "--streams", spec])
    line = str(stopped.value.code)
    assert line.startswith("error: --streams") or line.startswith("error: two streams"), line
    assert expected in line, line


def test_the_cli_prints_one_line_and_exits_non_zero():
    line = start_failure("tests.user_apps.bad.clash:stream")
    assert line.startswith("error: two streams are named 'video' (a built-in stream)"), line


def test_create_app_refuses_a_second_stream_with_the_same_name():
    from server.app import create_app
    from server.user_streams import StartupError
    from streams import Stream

    first = Stream(lambda frame: frame, modality="video", name="mine")
    second = Stream(lambda frame: frame, modality="video", name="mine")
    with pytest.raises(StartupError, match="two streams are named 'mine'"):
        create_app(streams=[first, second])


async def test_a_fastrtc_app_mounting_its_stream_on_its_own_fastapi_app_is_served_hardened():
    """`stream.mount(app)` then `uvicorn module:app`, as in fastrtc's docs: fastrtc's root routes,
    the app's own routes, and the server's checks (limit 1 by default, metrics, drain)."""
    with ServerProcess(args=["tests.user_apps.mounted:app"], log_name="mounted") as server:
        assert httpx.get(f"{server.base_url}/hello").json() == {"hello": "world"}
        client = VideoClient(server.base_url, stream="")
        second = VideoClient(server.base_url, stream="")
        await client.connect()
        try:
            await client.wait_frames(10)
            assert client.received[-1].orientation == "flip"
            with pytest.raises(RuntimeError, match="503.*concurrency_limit_reached"):
                await second.connect()  # fastrtc's default concurrency_limit is 1
            metrics = httpx.get(f"{server.base_url}/metrics").text
            assert 'rt_sessions_active{stream="",transport="webrtc"} 1.0' in metrics
        finally:
            await client.close()
            if hasattr(second, "pc"):
                await second.pc.close()


# fastrtc's documented browser client (data channel before the offer, whole offer after ICE
# gathering), pointed at a user stream's routes, plus its input and outputs by name.
FASTRTC_PAGE = """<!doctype html><video id="remote" autoplay playsinline muted></video><script>
const token = "%(token)s", stream = "%(stream)s", webrtc_id = "page-" + Math.random().toString(36).slice(2);
const auth = {"Content-Type": "application/json", "Authorization": "Bearer " + token};
window.outputs = [];
window.start = async () => {
  const pc = new RTCPeerConnection({iceServers: []});
  const camera = await navigator.mediaDevices.getUserMedia({video: true});
  camera.getTracks().forEach((t) => pc.addTrack(t, camera));
  pc.createDataChannel("text");
  pc.ontrack = (e) => { document.getElementById("remote").srcObject = e.streams[0] || new MediaStream([e.track]); };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((r) => { if (pc.iceGatheringState === "complete") r();
    else pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && r()); });
  const resp = await fetch(`/${stream}/webrtc/offer`, {method: "POST", headers: auth,
    body: JSON.stringify({sdp: pc.localDescription.sdp, type: "offer", webrtc_id})});
  await pc.setRemoteDescription(await resp.json());
  const events = new EventSource(`/${stream}/outputs?webrtc_id=${webrtc_id}&token=${token}`);
  events.addEventListener("output", (e) => window.outputs.push(JSON.parse(e.data)));  // as fastrtc's demos
  window.setInput = async (values) => (await fetch(`/${stream}/input`, {method: "POST", headers: auth,
    body: JSON.stringify({webrtc_id, ...values})})).status;
};
</script>"""


@pytest.mark.skipif(shutil.which("/usr/bin/chromium") is None, reason="Debian chromium is not installed")
async def test_chromium_with_fastrtcs_client_code_drives_a_user_stream(users):
    from tests.test_browser import COUNT_FRAMES, chromium_page

    errors: list[str] = []
    page_url = f"{users.base_url}/fastrtc-client.html"
    html = FASTRTC_PAGE % {"token": TOKEN, "stream": "object_detection"}
    async with chromium_page("about:blank", errors) as page:
        await page.route(page_url, lambda route: route.fulfill(body=html, content_type="text/html"))
        await page.route("**/favicon.ico", lambda route: route.fulfill(status=204))
        await page.goto(page_url)
        await page.evaluate("window.start()")
        await page.wait_for_function("document.getElementById('remote').videoWidth > 0", timeout=20000)
        frames = await page.evaluate(COUNT_FRAMES, "remote")
        assert frames >= 15, f"only {frames} frames in 3 s from a detector handler"
        assert await page.evaluate("window.setInput({conf_threshold: 0.55})") == 200
        assert await page.evaluate("window.setInput({conf_threshold: 7})") == 422
        await page.wait_for_function(
            "window.outputs.some((o) => o.values && o.values[1] === 0.55)", timeout=10000
        )
        await page.screenshot(path=str(ROOT / "test-artifacts" / "user-stream-chromium.png"))
    assert [e for e in errors if "status of 422" not in e] == [], errors  # the 422 is the refused input


async def test_an_audio_video_handler_gets_both_and_sends_both_back(users):
    from aiortc import AudioStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError

    from tests.rtc_client import NumberedTrack, decode_frame, pin_loopback, session_http

    pin_loopback()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.createDataChannel("text")
    camera = NumberedTrack(fps=30)
    pc.addTrack(camera)
    pc.addTrack(AudioStreamTrack())  # aiortc's silence source
    received: dict[str, list] = {"video": [], "audio": []}

    async def read(track) -> None:
        try:
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    received["video"].append(decode_frame(frame.to_ndarray(format="gray")).orientation)
                else:
                    received["audio"].append(frame.samples)
        except MediaStreamError:
            return

    readers = []
    pc.on("track", lambda track: readers.append(asyncio.ensure_future(read(track))))
    await pc.setLocalDescription(await pc.createOffer())
    async with session_http(users.base_url, "av-1", TOKEN) as http:
        resp = await http.post("/mirror/webrtc/offer",
                               json={"sdp": pc.localDescription.sdp, "type": "offer", "webrtc_id": "av-1"})  # fmt: skip
    assert resp.status_code == 200, resp.text
    await pc.setRemoteDescription(RTCSessionDescription(**resp.json()))
    try:
        await asyncio.sleep(4)
        video = received["video"]
        assert 40 <= len(video) <= 75, f"{len(video)} frames in 4 s from video_emit at 15 fps"
        assert video[-1] == "flip", video[-5:]
        assert len(received["audio"]) > 100, "audio comes back (50 frames a second)"
    finally:
        for reader in readers:
            reader.cancel()
        await pc.close()


def resident_mb(server: ServerProcess) -> float:
    metrics = httpx.get(f"{server.base_url}/metrics").text
    line = next(x for x in metrics.splitlines() if x.startswith("process_resident_memory_bytes "))
    return float(line.split()[1]) / 2**20


async def test_only_the_enabled_built_ins_load_their_models(server):
    """BUILTIN_STREAMS= serves just the user's stream: no detector, VAD, Whisper or Piper in memory,
    and the page shows no panel for what is not served."""
    cli = ["--streams", "tests.user_apps.generator:stream"]
    with ServerProcess(cli=cli, env={"BUILTIN_STREAMS": ""}, log_name="no-builtins") as alone:
        health = httpx.get(f"{alone.base_url}/healthz").json()
        assert set(health["streams"]) == {"generator"}
        assert "detector" not in health and "assistant" not in health
        assert httpx.get(f"{alone.base_url}/readyz").status_code == 200
        assert httpx.post(f"{alone.base_url}/video/webrtc/offer", json={}).status_code in (404, 405)
        assert await wait_until(lambda: httpx.get(f"{server.base_url}/readyz").status_code == 200, 60)
        alone_mb, full_mb = resident_mb(alone), resident_mb(server)
        print(
            f"\nresident memory before any session: user stream only {alone_mb:.0f} MB, all built-ins {full_mb:.0f} MB"
        )
        assert alone_mb < full_mb * 0.8, (alone_mb, full_mb)
