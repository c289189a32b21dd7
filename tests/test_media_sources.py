"""URL video sources against real loopback media servers (`tests.media_servers`): a rendered clip over
HTTP (with byte ranges), as HLS, and over RTSP (GStreamer's RTSP server), read by PyAV and OpenCV,
and played by `/generate` (source=file) with `GENERATE_VIDEO_PATH` set to the URL, received over
WebRTC by an aiortc client. Each clip frame carries `CLIP_COUNTER_BASE + its index` in the counter
bands that the client reads, so the frames that arrive are known to be the clip's, in order."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import av
import cv2
import httpx
import pytest

from server.config import Settings
from tests.media_servers import (
    CLIP_COUNTER_BASE,
    CLIP_FPS,
    CLIP_SECONDS,
    CLIP_SIZE,
    RTSP_FPS,
    RTSP_SECONDS,
    RTSP_SIZE,
    HttpMediaServer,
    RtspMediaServer,
    http_media_fixture,  # noqa: F401 - a fixture, used by name
    media_clip_fixture,  # noqa: F401
    media_folder_fixture,  # noqa: F401
    rtsp_media_fixture,  # noqa: F401
    rtsp_options,
    rtsp_unavailable,
)
from tests.rtc_client import ReceiveClient, decode_counter
from tests.server_process import ServerProcess

ONLY_GENERATE = {"BUILTIN_STREAMS": "generate"}  # no detector or chat models to load: light on 2 cores


def clip_index(counter: int, frames: int) -> int | None:
    """The clip frame a received counter names, or None (the server's test pattern, or a misread)."""
    index = counter - CLIP_COUNTER_BASE
    return index if 0 <= index < frames else None


def opencv_frames(url: str, limit: int) -> list[tuple[int | None, tuple[int, int]]]:
    cap = cv2.VideoCapture(url)
    try:
        assert cap.isOpened(), f"OpenCV cannot open {url}"
        frames = []
        while len(frames) < limit:
            ok, img = cap.read()
            if not ok:
                break
            counter = decode_counter(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))
            frames.append((clip_index(counter, 10_000), (img.shape[1], img.shape[0])))
        return frames
    finally:
        cap.release()


def pyav_frames(url: str, limit: int, **options: str) -> list[tuple[int | None, tuple[int, int]]]:
    frames = []
    with av.open(url, options=options, timeout=10) as container:
        for frame in container.decode(video=0):
            frames.append((clip_index(decode_counter(frame.to_ndarray(format="gray")), 10_000),
                           (frame.width, frame.height)))  # fmt: skip
            if len(frames) >= limit:
                break
    return frames


@pytest.fixture(scope="module", autouse=True)
def launched_url_servers(
    request: pytest.FixtureRequest, http_media: HttpMediaServer, media_clip: Path
) -> Iterator[dict[str, Future[ServerProcess]]]:
    """The app servers of the /generate tests, launched in the background as the module starts (their
    start-up overlaps the tests of the media servers), and only when a selected test wants them:
    GENERATE_VIDEO_PATH is the clip's HTTP URL on one, the RTSP clip's URL on the other (when the
    RTSP server can run here)."""
    wanted = any(
        "url_servers" in getattr(item, "fixturenames", ()) and item.module is request.module
        for item in request.session.items
    )
    envs: dict[str, dict[str, str]] = {}
    if wanted:
        envs["http"] = {"GENERATE_VIDEO_PATH": http_media.url(media_clip.name)}
        if rtsp_unavailable() is None:
            rtsp_media: RtspMediaServer = request.getfixturevalue("rtsp_media")
            envs["rtsp"] = {
                "GENERATE_VIDEO_PATH": rtsp_media.url,
                "OPENCV_FFMPEG_CAPTURE_OPTIONS": "rtsp_transport;tcp",
            }
    procs = {
        name: ServerProcess(env={**ONLY_GENERATE, **env}, log_name=f"url-{name}")
        for name, env in envs.items()
    }
    pool = ThreadPoolExecutor(2, thread_name_prefix="server-start")
    starts = {name: pool.submit(proc.start, 90) for name, proc in procs.items()}
    try:
        yield starts
    finally:
        pool.shutdown(wait=True)  # a start still under way finishes (or fails and stops itself)
        with contextlib.ExitStack() as stops:  # stop all, even if one's network audit fails
            for proc in procs.values():
                stops.callback(proc.stop)


@pytest.fixture(scope="module")
def url_servers(launched_url_servers: dict[str, Future[ServerProcess]]) -> dict[str, Future[ServerProcess]]:
    """name -> its launched server; `.result()` waits until it answers (see launched_url_servers)."""
    return launched_url_servers


async def receive_clip(
    server: ServerProcess, frames: int, want: int, seconds: float = 25.0
) -> list[int | None]:
    """Switch a new /generate session to source=file and return the clip indices of the frames
    received (None for any other frame), once `want` clip frames have arrived."""
    client = ReceiveClient(server.base_url)
    await client.connect()
    try:
        resp = await client.set_input(source="file", width=320, height=240)  # light on 2 cores
        assert resp.status_code == 200, resp.text
        deadline = time.monotonic() + seconds
        while True:
            indices = [clip_index(counter, frames) for _, counter, _ in client.frames]
            if sum(i is not None for i in indices) >= want:
                return indices
            assert time.monotonic() < deadline, (
                f"{sum(i is not None for i in indices)} of {want} clip frames in {seconds:.0f} s "
                f"({len(indices)} frames in all): {server.log()[-2000:]}"
            )
            await asyncio.sleep(0.2)
    finally:
        await client.close()


def mostly_rising(values: list[int]) -> bool:
    """Each value above the one before, bar the odd misread counter (a video frame over WebRTC)."""
    pairs = list(zip(values, values[1:], strict=False))
    return sum(b > a for a, b in pairs) >= 0.9 * len(pairs)


def settled(indices: list[int | None]) -> list[int | None]:
    """The frames from the first clip frame on (the session shows its test pattern until then)."""
    first = next(n for n, i in enumerate(indices) if i is not None)
    return indices[first:]


# --- the servers themselves --------------------------------------------------------------------------


def test_http_server_answers_single_byte_ranges(http_media, media_clip):
    data = media_clip.read_bytes()
    url, size = http_media.url(media_clip.name), len(data)
    with httpx.Client(timeout=10) as http:
        whole = http.get(url)
        assert whole.status_code == 200 and whole.content == data
        assert whole.headers["accept-ranges"] == "bytes"
        assert (
            whole.headers["content-type"] == {".mp4": "video/mp4", ".webm": "video/webm"}[media_clip.suffix]
        )
        part = http.get(url, headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == data[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{size}"
        tail = http.get(url, headers={"Range": f"bytes={size - 10}-"})
        assert tail.status_code == 206 and tail.content == data[-10:]
        suffix = http.get(url, headers={"Range": "bytes=-16"})
        assert suffix.status_code == 206 and suffix.content == data[-16:]
        past = http.get(url, headers={"Range": f"bytes={size}-"})
        assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"
        head = http.head(url, headers={"Range": "bytes=0-9"})
        assert head.status_code == 206 and head.headers["content-length"] == "10" and head.content == b""
        assert http.get(http_media.url("missing.mp4")).status_code == 404


def assert_whole_clip_in_pyav_and_opencv(url: str) -> None:
    frames = round(CLIP_SECONDS * CLIP_FPS)
    for reader in (pyav_frames, opencv_frames):
        got = reader(url, 1000)
        assert [i for i, _ in got] == list(range(frames)), reader.__name__
        assert {size for _, size in got} == {CLIP_SIZE}, reader.__name__


def test_clip_over_http_decodes_whole_and_in_order_in_pyav_and_opencv(http_media, media_clip):
    assert_whole_clip_in_pyav_and_opencv(http_media.url(media_clip.name))


def test_an_mp4_whose_index_is_far_from_its_start_is_read_with_range_requests(http_media, media_folder):
    if not (media_folder / "padded.mp4").exists():
        pytest.skip("the clip is VP8 in .webm (no H.264 or MPEG-4 encoder in PyAV)")
    frames = round(CLIP_SECONDS * CLIP_FPS)
    for reader in (pyav_frames, opencv_frames):
        del http_media.requests[:]
        got = reader(http_media.url("padded.mp4"), 1000)
        assert [i for i, _ in got] == list(range(frames)), reader.__name__
        starts = [
            int(r[6:].split("-")[0]) for _, path, r in http_media.requests if path == "/padded.mp4" and r
        ]
        assert any(start > 1024 * 1024 for start in starts), (reader.__name__, http_media.requests)


def test_hls_playlist_over_http_decodes_whole_in_pyav_and_opencv(http_media, media_folder):
    if not (media_folder / "hls" / "index.m3u8").exists():
        pytest.skip("the clip is VP8 (no H.264 or MPEG-4 encoder in PyAV): no HLS")
    assert_whole_clip_in_pyav_and_opencv(http_media.url("hls/index.m3u8"))


def test_rtsp_server_streams_the_clip_over_tcp_to_pyav_and_opencv(rtsp_media, monkeypatch):
    assert " 200 " in rtsp_options(rtsp_media.url)
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
    for got in (pyav_frames(rtsp_media.url, 12, rtsp_transport="tcp"), opencv_frames(rtsp_media.url, 12)):
        assert [i for i, _ in got] == list(range(12))  # each client gets its own session from the start
        assert {size for _, size in got} == {RTSP_SIZE}


def test_rtsp_server_process_ends_when_stopped_or_when_its_parent_goes(media_clip):
    if why := rtsp_unavailable():
        pytest.skip(why)
    server = RtspMediaServer(media_clip).start()
    proc = server.proc
    assert proc is not None and proc.poll() is None
    server.stop()
    assert proc.poll() is not None
    orphan = RtspMediaServer(media_clip).start()
    assert orphan.proc is not None and orphan.proc.stdin is not None
    orphan.proc.stdin.close()  # as when the test process dies: its end of the pipe closes
    assert orphan.proc.wait(10) == 0
    orphan.stop()


def test_a_generate_file_source_loops_an_rtsp_clip_by_opening_it_again(media_clip, monkeypatch):
    """Rewinding RTSP with CAP_PROP_POS_FRAMES replayed it once, then every read blocked for
    OpenCV's 30 s timeout; `VideoFileSource` reopens a URL at its end instead."""
    if why := rtsp_unavailable():
        pytest.skip(why)
    from streams.generation import VideoFileSource

    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
    server = RtspMediaServer(media_clip).start()
    try:
        source = VideoFileSource(server.url)
        frames = int(CLIP_SECONDS * CLIP_FPS)
        t0 = time.monotonic()
        for i in range(frames * 3 + 2):  # three times through, and into a fourth
            source.frame(i, 320, 180, CLIP_FPS)
        source.close()
        assert time.monotonic() - t0 < 25, f"{frames * 3 + 2} frames took {time.monotonic() - t0:.1f} s"
    finally:
        server.stop()


# --- /generate with a URL source ---------------------------------------------------------------------


def test_setting_keeps_a_url_video_path_as_written():
    for url in ("https://h/x.mp4", "rtsp://127.0.0.1:8554/cam?a=1", "http://127.0.0.1:1/live/index.m3u8"):
        assert Settings(generate_video_path=url).generate_video_path == url


async def test_generate_plays_an_http_clip_url_over_webrtc_and_loops_it(url_servers):
    frames = round(CLIP_SECONDS * CLIP_FPS)
    server = await asyncio.to_thread(url_servers["http"].result)
    indices = settled(await receive_clip(server, frames, want=frames + 12))
    clip = [i for i in indices if i is not None]
    assert len(clip) >= 0.9 * len(indices), f"frames other than the clip's: {indices}"
    restarts = [n for n, (a, b) in enumerate(zip(clip, clip[1:], strict=False)) if a - b > frames // 2]
    assert restarts, f"the clip did not start over (an HTTP seek to its start): {clip}"
    first_pass = clip[: restarts[0] + 1]
    assert mostly_rising(first_pass) and len(set(first_pass)) >= frames // 2, first_pass


async def test_generate_plays_an_rtsp_url_over_webrtc(rtsp_media, url_servers):
    frames = round(RTSP_SECONDS * RTSP_FPS)
    server = await asyncio.to_thread(url_servers["rtsp"].result)
    indices = settled(await receive_clip(server, frames, want=24))
    clip = [i for i in indices if i is not None]
    assert len(clip) >= 0.9 * len(indices), f"frames other than the clip's: {indices}"
    assert mostly_rising(clip) and len(set(clip)) >= 12, clip


def test_opencv_reads_rtsp_with_its_default_transport(rtsp_media, monkeypatch):
    """What the server does when OPENCV_FFMPEG_CAPTURE_OPTIONS is not set."""
    monkeypatch.delenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", raising=False)
    assert os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS") is None
    assert [i for i, _ in opencv_frames(rtsp_media.url, 3)] == list(range(3))
