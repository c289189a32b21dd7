"""/video from server-side sources (issue 16): an uploaded clip, a URL on loopback, a file of MEDIA_DIR,
through the same filters, detector, `/input` and `/outputs` as the camera; refusals that leave nothing
behind. Real server process, aiortc client peers, a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import av
import cv2
import httpx
import numpy as np
import pytest
import skimage

from tests.media_servers import HttpMediaServer, RtspMediaServer, rtsp_unavailable
from tests.rtc_client import ReceiveClient, VideoClient
from tests.server_process import ServerProcess
from tests.test_chat_rtc import wait_until
from tests.test_video_rtc import read_sse

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
UPLOAD_MAX_BYTES = 3 * 1024 * 1024


def render_clip(path: Path, *, seconds: float = 2.0, fps: int = 15, size: tuple[int, int] = (640, 360),
                codec: str = "mpeg4") -> Path:  # fmt: skip
    """A clip of the astronaut photo (a person for the detector) sliding right, with a white marker
    block top-left (so a flip is visible); `codec` mpeg4 in .mp4 / .mkv, which every FFmpeg decodes."""
    w, h = size
    photo = cv2.resize(cv2.imread(str(SKIMAGE_DATA / "astronaut.png")), (h - 40, h - 40))
    options = {"movflags": "faststart"} if path.suffix == ".mp4" else {}
    with av.open(str(path), "w", options=options) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.bit_rate = 1_500_000
        frames = int(seconds * fps)
        for i in range(frames):
            img = np.full((h, w, 3), 90, np.uint8)
            x = int(20 + (w - photo.shape[1] - 40) * i / max(1, frames - 1))
            img[20 : 20 + photo.shape[0], x : x + photo.shape[1]] = photo
            img[:24, :24] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("sources")
    (root / "media" / "sub").mkdir(parents=True)
    (root / "web" / "allowed").mkdir(parents=True)
    (root / "tmp").mkdir()
    clip = render_clip(root / "media" / "walk.mp4")
    render_clip(root / "media" / "sub" / "walk.mkv", seconds=1.0)
    render_clip(root / "web" / "allowed" / "walk.mkv", seconds=1.0)
    (root / "secret.mp4").write_bytes(clip.read_bytes())  # outside MEDIA_DIR
    (root / "media" / "escape.mp4").symlink_to(root / "secret.mp4")
    yield {"root": root, "clip": clip, "media": root / "media", "web": root / "web", "tmp": root / "tmp"}


@pytest.fixture(scope="module")
def web(media: dict[str, Path]) -> Iterator[HttpMediaServer]:
    server = HttpMediaServer(media["web"]).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def rtsp(media: dict[str, Path]) -> Iterator[RtspMediaServer]:
    if why := rtsp_unavailable():
        pytest.skip(why)
    server = RtspMediaServer(media["clip"], mount="/cam").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def source_server(media: dict[str, Path], web: HttpMediaServer) -> Iterator[ServerProcess]:
    """Only /video, with a media folder, one allowed URL pattern, a 3 MB upload cap, and its own
    temporary folder (so the test sees every upload file the server makes)."""
    with ServerProcess(
        env={
            "BUILTIN_STREAMS": "video",
            "MEDIA_DIR": str(media["media"]),
            "MEDIA_URL_ALLOW": f"http://127.0.0.1:{web.port}/allowed/*,rtsp://127.0.0.1:*/cam",
            "UPLOAD_MAX_BYTES": str(UPLOAD_MAX_BYTES),
            "TMPDIR": str(media["tmp"]),
        },
        log_name="sources-server",
    ) as proc:
        yield proc


def upload_files(media: dict[str, Path]) -> list[Path]:
    return [p for p in media["tmp"].rglob("*") if p.is_file()]


async def receive_client(base_url: str) -> ReceiveClient:
    """A client that sends no camera (a receive-only video offer) and keeps the last frame."""
    client = ReceiveClient(base_url, stream="video", webrtc_id=f"src-{time.monotonic_ns()}", keep_last=True)
    await client.connect()
    return client


async def upload(base_url: str, webrtc_id: str, name: str, data: bytes, **kwargs: object) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        return await http.post("/video/upload", params={"webrtc_id": webrtc_id},
                               files={"file": (name, data, "video/mp4")}, **kwargs)  # fmt: skip


async def test_an_uploaded_clip_comes_back_processed_with_detections_and_its_file_goes_with_the_session(
    source_server, media
):
    client = await receive_client(source_server.base_url)
    try:
        resp = await upload(source_server.base_url, client.webrtc_id, "walk.mp4", media["clip"].read_bytes())
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["upload"]["codec"] == "mpeg4" and body["upload"]["width"] == 640
        assert body["upload"]["bytes"] == media["clip"].stat().st_size
        assert body["params"]["source"] == "upload"
        assert len(upload_files(media)) == 1  # the session's private copy
        ok = await client.set_input(filter="flip", detect=True, conf_threshold=0.4)
        assert ok.status_code == 200, ok.text
        events = await read_sse(
            f"{source_server.base_url}/video/outputs?webrtc_id={client.webrtc_id}", 20,
            until=lambda e: any(d["label"] == "person" for d in e.get("detections", [])),
        )  # fmt: skip
        people = [d for e in events for d in e.get("detections", []) if d["label"] == "person"]
        assert people, f"no person detected in the uploaded clip: {events[-3:]}"
        assert await wait_until(lambda: len(client.frames) >= 20, 15), "20 frames of the upload"
        assert client.last_frame is not None and client.last_frame.shape[:2] == (360, 640)
        # flipped upside down: the white marker block is now at the bottom left
        assert client.last_frame[-20:, 2:20].mean() > 200 > client.last_frame[2:20, 2:20].mean()
    finally:
        await client.close()
    assert await wait_until(lambda: not upload_files(media), 10), (
        "the upload to be deleted when the session ended"
    )


async def test_an_upload_that_is_not_a_video_or_too_big_is_refused_and_leaves_nothing_on_disk(
    source_server, media
):
    client = await receive_client(source_server.base_url)
    try:
        resp = await upload(
            source_server.base_url, client.webrtc_id, "notes.mp4", b"not a video at all " * 500
        )
        assert resp.status_code == 415, resp.text
        assert resp.json()["meta"]["error"] == "not_a_video"
        assert "rtserver" not in resp.json()["message"], "the refusal names the server's temporary file"
        big = np.random.default_rng(1).integers(0, 255, UPLOAD_MAX_BYTES + 200_000, np.uint8).tobytes()
        resp = await upload(source_server.base_url, client.webrtc_id, "big.mp4", big)
        assert resp.status_code == 413, resp.text
        assert resp.json()["meta"]["error"] == "too_large"
        async with httpx.AsyncClient(base_url=source_server.base_url, timeout=10) as http:
            plain = await http.post("/video/upload", params={"webrtc_id": client.webrtc_id}, content=b"abc")
            assert plain.status_code == 415 and plain.json()["meta"]["error"] == "unsupported_media_type"
            nobody = await http.post("/video/upload", params={"webrtc_id": "nobody-here"},
                                     files={"file": ("a.mp4", b"x", "video/mp4")})  # fmt: skip
            assert nobody.status_code == 404 and nobody.json()["meta"]["error"] == "unknown_connection"
        early = await client.set_input(source="upload")  # nothing uploaded: 422 saying what to do
        assert early.status_code == 422 and "/video/upload" in early.json()["message"], early.text
        assert upload_files(media) == []
        assert (await client.set_input(filter="gray")).status_code == 200  # the session is unharmed
    finally:
        await client.close()


async def test_a_url_source_on_loopback_plays_and_urls_outside_media_url_allow_are_refused(
    source_server, web
):
    client = await receive_client(source_server.base_url)
    try:
        for url in (
            "http://10.0.0.1/allowed/walk.mkv",  # another host
            f"http://127.0.0.1:{web.port}/other/walk.mkv",  # another path
            f"http://127.0.0.1:{web.port}@169.254.169.254/allowed/walk.mkv",  # credentials hiding the host
            "file:///etc/passwd",
            f"http://127.0.0.1:{web.port}/allowed/walk.mkv extra",
        ):
            resp = await client.set_input(source="url", url=url)
            assert resp.status_code == 422, (url, resp.text)
            assert resp.json()["meta"]["error"] == "invalid_input"
        resp = await client.set_input(
            source="url", url=f"http://127.0.0.1:{web.port}/allowed/walk.mkv", fps=10
        )
        assert resp.status_code == 200, resp.text
        assert await wait_until(lambda: len(client.frames) >= 15, 15), "frames from the URL source"
        assert (
            client.last_frame is not None and client.last_frame[2:20, 2:20].mean() > 200
        )  # the clip's marker
    finally:
        await client.close()


async def test_an_rtsp_url_source_plays_through_the_detector(source_server, rtsp):
    client = await receive_client(source_server.base_url)
    try:
        resp = await client.set_input(source="url", url=rtsp.url, detect=True, conf_threshold=0.4)
        assert resp.status_code == 200, resp.text
        events = await read_sse(
            f"{source_server.base_url}/video/outputs?webrtc_id={client.webrtc_id}", 20,
            until=lambda e: any(d["label"] == "person" for d in e.get("detections", [])),
        )  # fmt: skip
        playing = [e for e in events if e.get("type") == "source" and e.get("state") == "playing"]
        assert playing and playing[0]["container"] == "rtsp", events[:3]
        assert any(d["label"] == "person" for e in events for d in e.get("detections", [])), events[-3:]
        assert await wait_until(lambda: len(client.frames) >= 10, 15), "frames from the RTSP source"
    finally:
        await client.close()


async def test_media_dir_is_listed_and_no_name_leaves_it(source_server, media):
    client = await receive_client(source_server.base_url)
    try:
        async with httpx.AsyncClient(base_url=source_server.base_url, timeout=10) as http:
            listing = (await http.get("/video/media", params={"webrtc_id": client.webrtc_id})).json()
        names = [f["name"] for f in listing["files"]]
        assert names == ["sub/walk.mkv", "walk.mp4"], names  # the link out of the folder is not listed
        for name in ("../secret.mp4", "/etc/passwd", "escape.mp4", "sub/../../secret.mp4", "sub\\..\\x.mp4",
                     "missing.mp4", ""):  # fmt: skip
            resp = await client.set_input(source="file", file=name)
            assert resp.status_code == 422, (name, resp.text)
        states: list[str] = []
        collector = asyncio.ensure_future(read_sse(
            f"{source_server.base_url}/video/outputs?webrtc_id={client.webrtc_id}", 30,
            until=lambda e: e.get("type") == "source" and states.append(e["state"]) is None and states.count("ended") == 2,
        ))  # fmt: skip
        await asyncio.sleep(0.3)
        resp = await client.set_input(source="file", file="sub/walk.mkv", loop=False)
        assert resp.status_code == 200, resp.text
        assert await wait_until(lambda: "ended" in states, 15), (
            "the source to end"
        )  # loop=false: once (15 frames)
        assert states == ["playing", "ended"], states
        assert len(client.frames) >= 5
        again = await client.set_input(seek=0.5)  # an ended source plays again from there
        assert again.status_code == 200, again.text
        await asyncio.wait_for(collector, 20)
        assert states == ["playing", "ended", "playing", "ended"], states
    finally:
        await client.close()


async def test_a_camera_session_switches_to_a_media_file_and_back(source_server):
    client = VideoClient(source_server.base_url)
    await client.connect()
    try:
        await client.wait_frames(10)
        assert (await client.set_input(source="file", file="walk.mp4", fps=30)).status_code == 200
        await asyncio.sleep(1.0)
        switched = len(client.received)
        await client.wait_frames(10)
        assert all(r.orientation == "unknown" for r in client.received[switched + 2 :]), "camera frames"
        assert (await client.set_input(source="camera")).status_code == 200
        await asyncio.sleep(0.5)
        back = len(client.received)
        await client.wait_frames(10)
        assert sum(r.orientation == "upright" for r in client.received[back:]) >= 8
    finally:
        await client.close()
