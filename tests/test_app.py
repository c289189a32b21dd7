"""The app's own routes, settings and offline defaults."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import numpy as np
import pytest

from server.config import Settings
from server.ice import IceConfig
from streams.filters import FILTERS


def test_settings_read_from_environment(monkeypatch):
    monkeypatch.setenv("ICE_HOST_ADDRESSES", "127.0.0.1, 10.0.0.5")
    monkeypatch.setenv(
        "ICE_SERVERS", '[{"urls": "turn:turn.example:3478", "username": "u", "credential": "p"}]'
    )
    monkeypatch.setenv("VIDEO_CONCURRENCY_LIMIT", "12")
    s = Settings()
    assert s.ice_host_addresses == ["127.0.0.1", "10.0.0.5"]
    assert s.video_concurrency_limit == 12
    assert IceConfig(s).client_configuration() == {
        "iceServers": [{"urls": "turn:turn.example:3478", "username": "u", "credential": "p"}]
    }
    monkeypatch.setenv("VIDEO_CONCURRENCY_LIMIT", "0")
    with pytest.raises(ValueError):
        Settings()


def test_server_never_uses_a_public_stun_default():
    assert IceConfig(Settings()).server_configuration() == {"iceServers": []}


def test_offline_defaults_are_set_before_gradio_and_onnxruntime_load():
    keys = ("GRADIO_ANALYTICS_ENABLED", "HF_HUB_OFFLINE", "ORT_DISABLE_TELEMETRY")
    env = {k: v for k, v in os.environ.items() if k not in keys}
    for entry in ("server", "streams"):  # a user's app imports only `streams`
        code = f"import {entry}, os; print(*(os.environ[k] for k in {keys!r}))"
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.split() == ["False", "1", "1"], entry
    env["HF_HUB_OFFLINE"] = "0"  # an operator's explicit choice wins
    code = f"import server, os; print(*(os.environ[k] for k in {keys!r}))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "0", "1"]


def test_health_config_metrics_and_page(server):
    with httpx.Client(base_url=server.base_url) as http:
        health = http.get("/healthz").json()
        assert health["status"] == "ok" and "video" in health["streams"]
        assert health["detector"]["format"] == "nanodet"
        assert http.get("/api/rtc-config").json() == {"iceServers": []}
        metrics = http.get("/metrics").text
        assert 'rt_sessions_active{stream="video",transport="webrtc"}' in metrics
        page = http.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        script = http.get("/rtc.js").text
        assert "/webrtc/offer" in script and "/api/rtc-config" in script and "createDataChannel" in script


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_filters_keep_shape_and_type(name):
    frame = np.random.default_rng(1).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    out = FILTERS[name].apply(frame)
    assert out.shape == frame.shape and out.dtype == np.uint8
    if name != "none":
        assert not np.array_equal(out, frame)


def test_geometric_filters_move_boxes_with_the_picture():
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[10:20, 30:50] = 255
    box = (30, 10, 49, 19)
    for name in ("flip", "mirror", "gray"):
        out = FILTERS[name].apply(frame)
        x1, y1, x2, y2 = FILTERS[name].map_box(box, 200, 100)
        assert out[y1 : y2 + 1, x1 : x2 + 1].min() == 255, name


def test_phone_option_fails_clearly_without_a_token():
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    env["HF_HOME"] = "/nonexistent-hf-home"  # no cached token either
    out = subprocess.run([sys.executable, "-m", "server", "--phone"], env=env, capture_output=True, text=True)
    assert out.returncode == 1 and "HF_TOKEN" in out.stderr, out.stderr[-500:]


def test_bitrate_bounds_are_added_to_every_video_codec_in_the_answer():
    from server.bitrate import apply_bitrate_bounds

    sdp = (
        "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 97 98 99\r\na=rtpmap:97 VP8/90000\r\na=rtpmap:98 rtx/90000\r\n"
        "a=fmtp:98 apt=97\r\na=rtpmap:99 H264/90000\r\na=fmtp:99 packetization-mode=1;x-google-min-bitrate=9\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10\r\n"
    )
    out = apply_bitrate_bounds(sdp, 500, 2500).split("\r\n")
    bounds = "x-google-min-bitrate=500;x-google-start-bitrate=1000;x-google-max-bitrate=2500"
    assert f"a=fmtp:97 {bounds}" in out  # VP8 had no fmtp line: added right after its rtpmap
    assert out.index(f"a=fmtp:97 {bounds}") == out.index("a=rtpmap:97 VP8/90000") + 1
    assert f"a=fmtp:99 packetization-mode=1;{bounds}" in out  # an old value is replaced, not doubled
    assert "a=fmtp:98 apt=97" in out and "a=fmtp:111 minptime=10" in out  # rtx and audio untouched


async def test_video_answers_carry_the_bitrate_floor(server):
    from tests.rtc_client import VideoClient

    client = VideoClient(server.base_url)
    answer = await client.connect()
    try:
        assert "x-google-min-bitrate=500" in answer["sdp"]
        await client.wait_frames(5)  # and aiortc clients still accept it
    finally:
        await client.close()
