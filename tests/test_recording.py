"""RECORD=true: every session's media in both directions, in files PyAV opens, on every way it ends.

One recording server for the module (/video and /chat, a 1 MiB size cap that ordinary sessions stay
far below), whose last test stops it with SIGTERM; RECORD off is checked on the suite's default server.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import httpx
import numpy as np
import pytest

from tests.audio_client import speech
from tests.rtc_client import VideoClient
from tests.server_process import ROOT, ServerProcess
from tests.ws_client import AudioSocketClient

CAP_BYTES = 1024 * 1024  # RECORD_MAX_BYTES's minimum
CUES_ID = b"\x1c\x53\xbb\x6b"  # Matroska's index, written with the trailer: the file was closed properly
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


@pytest.fixture(scope="module")
def record_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("recordings") / "sessions"  # the server creates it


@pytest.fixture(scope="module")
def recording_server(record_dir: Path) -> Iterator[ServerProcess]:
    env = {
        "BUILTIN_STREAMS": "video,chat",
        "ASSISTANT_ENABLED": "false",
        "RECORD": "true",
        "RECORD_DIR": str(record_dir),
        "RECORD_MAX_BYTES": str(CAP_BYTES),
    }
    with ServerProcess(env=env, log_name="recording-server") as proc:
        yield proc


@dataclass
class Recorded:
    """What PyAV reads back from one recording."""

    duration_s: float  # the container's own duration (0 to its last timestamp)
    video_frames: int
    video_span_s: float  # first to last video frame
    audio_s: float  # decoded audio
    audio: np.ndarray  # float mono at `audio_rate`
    audio_rate: int
    audio_start_s: float
    closed_properly: bool


def read_back(path: Path) -> Recorded:
    with av.open(str(path)) as container:
        duration = (container.duration or 0) / 1e6
        pts: list[float] = []
        chunks: list[np.ndarray] = []
        rate, audio_start = 48_000, 0.0
        for frame in container.decode(*container.streams):
            if isinstance(frame, av.VideoFrame):
                pts.append(float(frame.time))
            else:
                if not chunks:
                    audio_start = float(frame.time or 0.0)
                rate = frame.sample_rate
                samples = frame.to_ndarray().reshape(-1)  # Opus decodes to float, PCM to int16
                chunks.append(samples / 32768 if samples.dtype == np.int16 else samples.astype(np.float32))
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return Recorded(
        duration_s=duration,
        video_frames=len(pts),
        video_span_s=max(pts) - min(pts) if pts else 0.0,
        audio_s=len(audio) / rate,
        audio=audio,
        audio_rate=rate,
        audio_start_s=audio_start,
        closed_properly=CUES_ID in path.read_bytes(),
    )


def audible_times(rec: Recorded, threshold: float = 0.01) -> list[float]:
    """Start times (recording seconds) of the 20 ms stretches louder than `threshold` RMS."""
    step = rec.audio_rate // 50
    n = len(rec.audio) // step
    rms = np.sqrt((rec.audio[: n * step].reshape(n, step) ** 2).mean(axis=1))
    return [rec.audio_start_s + i * 0.02 for i in np.nonzero(rms > threshold)[0]]


def metric(server: ServerProcess, name: str, stream: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics").text
    found = re.search(rf'^{name}{{stream="{stream}"}} (\S+)$', text, re.M)
    assert found, f"{name} for {stream} is not in /metrics"
    return float(found.group(1))


async def sessions_ended(server: ServerProcess, stream: str, timeout: float = 15.0) -> None:
    """Until the stream has no session: a session's recording is closed before its slot is freed."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        while (await http.get("/healthz")).json()["streams"][stream] != 0:
            assert time.monotonic() < deadline, f"{stream} sessions did not end"
            await asyncio.sleep(0.1)


def files_of(record_dir: Path, stream: str, session_id: str) -> tuple[Path, Path]:
    """The session's two files, by the names operators find them under."""
    inbound, outbound = (
        record_dir / f"{stream}-{session_id}-in.mkv",
        record_dir / f"{stream}-{session_id}-out.mkv",
    )
    assert inbound.exists() and outbound.exists(), sorted(p.name for p in record_dir.iterdir())
    return inbound, outbound


async def video_session(server: ServerProcess, seconds: float, **client: object) -> VideoClient:
    """A /video session of about `seconds` of frames both ways, closed by the client."""
    video = VideoClient(server.base_url, **client)  # type: ignore[arg-type]
    await video.connect()
    await video.wait_frames(3)
    await asyncio.sleep(seconds)
    await video.close()
    return video


def sent_span(video: VideoClient) -> float:
    return max(video.track.sent.values()) - min(video.track.sent.values())


async def test_a_video_session_is_recorded_both_ways_with_its_length_and_frames(recording_server, record_dir):
    video = await video_session(recording_server, 2.0)
    await sessions_ended(recording_server, "video")
    inbound, outbound = files_of(record_dir, "video", video.webrtc_id)
    sent, received, span = video.track.seq, len(video.received), sent_span(video)
    got_in, got_out = read_back(inbound), read_back(outbound)
    for rec in (got_in, got_out):
        assert rec.closed_properly
        assert span - 1.0 < rec.video_span_s < span + 0.5, (rec.video_span_s, span)
        assert rec.duration_s < span + 3.0, "wall-clock timestamps: no longer than the session"
    assert 0.7 * sent <= got_in.video_frames <= sent, ("what the client sent", got_in.video_frames, sent)
    assert 0.7 * received <= got_out.video_frames <= received + 15, (
        f"{got_out.video_frames} of {received} got"
    )


@needs_espeak
async def test_a_chat_session_is_recorded_in_both_directions_in_step(recording_server, record_dir):
    clip = speech("Recording my voice, one two three.")
    url = recording_server.base_url.replace("http://", "ws://") + "/chat/websocket/offer"
    async with AudioSocketClient(url) as client:
        started = time.monotonic()
        await client.start()
        await client.speak(None, 0.3)
        ended = await client.speak(clip, 0.5)
        deadline = time.monotonic() + 10
        while not client.audible_after(ended) or time.monotonic() - client.audible_after(ended)[-1] < 0.5:
            assert time.monotonic() < deadline, "the echo did not come back and finish"
            await client.speak(None, 0.2)  # a microphone keeps sending while it listens
        await client.send({"event": "stop"})
        await client.closed()
        length = time.monotonic() - started
    await sessions_ended(recording_server, "chat")
    inbound, outbound = files_of(record_dir, "chat", client.session_id)
    got_in, got_out = read_back(inbound), read_back(outbound)
    spoken, echoed = audible_times(got_in), audible_times(got_out)
    clip_s = len(clip) / 48_000
    assert got_in.closed_properly and got_out.closed_properly
    assert length - 1.5 < got_in.audio_start_s + got_in.audio_s < length + 0.5, (got_in.audio_s, length)
    assert len(spoken) * 0.02 > 0.6 * clip_s, "the client's speech is in the -in file"
    assert len(echoed) * 0.02 > 0.6 * clip_s, "the echo is in the -out file"
    assert spoken[-1] - 0.2 < echoed[0] < spoken[-1] + 2.0, ("in and out line up", spoken[-1], echoed[0])


async def test_the_size_cap_stops_a_recording_and_leaves_valid_files(recording_server, record_dir):
    noise = np.random.default_rng(7).integers(0, 256, (480, 640, 3), np.uint8)
    video = await video_session(recording_server, 3.0, background=noise)
    await sessions_ended(recording_server, "video")
    inbound, outbound = files_of(record_dir, "video", video.webrtc_id)
    total = inbound.stat().st_size + outbound.stat().st_size
    assert total <= CAP_BYTES, f"{total} bytes recorded, cap {CAP_BYTES}"
    got_in, got_out = read_back(inbound), read_back(outbound)
    assert got_in.closed_properly and got_out.closed_properly, "stopped at the cap, still closed properly"
    assert got_in.video_frames > 0 and got_out.video_frames > 0
    assert got_in.video_span_s < sent_span(video) - 0.5, "the recording stopped before the session did"


async def test_the_bytes_written_are_counted_in_the_metrics(recording_server, record_dir):
    await sessions_ended(recording_server, "video")
    on_disk = sum(p.stat().st_size for p in record_dir.glob("video-*.mkv"))
    assert on_disk > 0, "a video session was recorded above"
    assert metric(recording_server, "rt_recording_bytes_total", "video") == on_disk
    assert metric(recording_server, "rt_recording_dropped_frames_total", "video") >= 0  # exposed too


async def test_without_record_the_default_server_writes_nothing(server):
    """On the suite's shared default server (RECORD unset)."""
    video = await video_session(server, 1.0)
    await sessions_ended(server, "video")
    default_dir = ROOT / "recordings"  # RECORD_DIR's default
    assert not (default_dir.exists() and list(default_dir.glob(f"*{video.webrtc_id}*")))
    assert metric(server, "rt_recording_bytes_total", "video") == 0
    assert video.received, "the session itself ran"


def test_the_duration_cap_stops_a_recording_at_its_length_and_leaves_valid_files(tmp_path):
    """In process: 2.5 s of 30 fps video and 20 ms audio into a recorder capped at 1 s."""
    from streams.recording import RecordingPolicy, SessionRecorder

    recorder = SessionRecorder(RecordingPolicy(tmp_path, max_s=1.0), "av", "cap-test", "audio-video")
    image = np.zeros((240, 320, 3), np.uint8)
    tone = (np.sin(np.arange(960) / 48_000 * 2 * np.pi * 440) * 8000).astype(np.int16)
    t0 = time.monotonic()
    for i in range(125):  # 2.5 s, paced: the cap counts wall-clock time
        image[:] = (i * 2) % 256
        frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        if i % 2 == 0:  # 25 fps video beside 50 chunks a second of audio
            recorder.video_in(frame)
            recorder.video_out(frame)
        recorder.audio_in(48_000, tone)
        recorder.audio_out(48_000, tone)
        time.sleep(max(0.0, t0 + (i + 1) * 0.02 - time.monotonic()))
    recorder.close()
    assert recorder.stopped is not None and "duration" in recorder.stopped, recorder.stopped
    for path in (tmp_path / "av-cap-test-in.mkv", tmp_path / "av-cap-test-out.mkv"):
        rec = read_back(path)
        assert rec.closed_properly, path
        assert 0.8 <= rec.duration_s <= 1.3, (path.name, rec.duration_s)  # 1 s cap, one frame or chunk over
        assert 15 <= rec.video_frames <= 33, (path.name, rec.video_frames)  # ~25 in the first second


def test_an_unusable_record_dir_stops_the_server_at_start_saying_why(tmp_path):
    from server.app import create_app
    from server.config import Settings
    from server.user_streams import StartupError

    taken = tmp_path / "a-file"
    taken.write_text("not a folder")
    with pytest.raises(StartupError, match="RECORD_DIR=.*a-file"):
        create_app(Settings(builtin_streams=[], record=True, record_dir=taken / "sessions"))


async def test_sigterm_mid_session_leaves_complete_files_of_the_right_length(recording_server, record_dir):
    """Last in this module: it stops the module's server."""
    video = VideoClient(recording_server.base_url)
    await video.connect()
    url = recording_server.base_url.replace("http://", "ws://") + "/chat/websocket/offer"
    async with AudioSocketClient(url) as chat:
        started = time.monotonic()
        await chat.start()
        talking = asyncio.create_task(chat.speak(None, 30))  # silence from the microphone until cut off
        await video.wait_frames(3)
        await asyncio.sleep(2.0)
        stopped_at = time.monotonic()
        recording_server.signal(signal.SIGTERM)
        assert recording_server.proc is not None
        await asyncio.to_thread(recording_server.proc.wait, 30)
        length = time.monotonic() - started
        talking.cancel()
    await video.close()
    inbound, outbound = files_of(record_dir, "video", video.webrtc_id)
    sent = [t for t in video.track.sent.values() if t < stopped_at]  # the client goes on sending a while
    span = max(sent) - min(sent)
    for path in (inbound, outbound):
        rec = read_back(path)
        assert rec.closed_properly, f"{path.name}: no trailer"
        assert span - 1.5 < rec.video_span_s < span + 0.5, (path.name, rec.video_span_s, span)
    chat_in = read_back(record_dir / f"chat-{chat.session_id}-in.mkv")
    assert chat_in.closed_properly
    assert length - 2.0 < chat_in.audio_start_s + chat_in.audio_s < length + 0.5, (chat_in.audio_s, length)
