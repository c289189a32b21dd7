"""Real loopback media servers for tests: a rendered clip served over HTTP (with Range requests), as
HLS, and over RTSP, so that URL video sources (`GENERATE_VIDEO_PATH=http://...`, `rtsp://...`) are
tested against real servers rather than mocks.

- `render_test_clip`: a short synthetic clip made with PyAV (H.264 through libx264 when the PyAV wheel
  has it, else libopenh264, else MPEG-4 Part 2 in .mp4, else VP8 in .webm). Each frame carries its
  number as 16 black/white blocks in a top and a bottom band (the layout of `streams.generation`'s
  test pattern, read back by `tests.rtc_client.decode_counter`), offset by `CLIP_COUNTER_BASE` so
  that a clip's frames are never mistaken for the server's own test pattern, which counts from 0.
- `HttpMediaServer`: a folder served on 127.0.0.1 from a thread of the test process, with single
  byte-range requests (FFmpeg reads an .mp4 whose index is at the end with a Range request;
  Python's `SimpleHTTPRequestHandler` ignores Range). `render_hls` makes an HLS playlist and MPEG-TS
  segments of a clip with PyAV's `hls` muxer, for the same server.
- `RtspMediaServer`: GStreamer's RTSP server library (gst-rtsp-server) driven from a small script
  under the system Python (`/usr/bin/python3`, which has `gi`; the venv does not) as a subprocess.
  Debian packages (the Makefile's APT list): gir1.2-gst-rtsp-server-1.0 (pulls in
  libgstrtspserver-1.0-0, which itself depends on gstreamer1.0-plugins-base/-good/-bad),
  gstreamer1.0-plugins-base, gstreamer1.0-plugins-good (qtdemux, matroskademux, the RTP payloaders)
  and python3-gi. Chosen because it binds an ephemeral port (parallel test workers never collide),
  serves a file without re-encoding (the clip's H.264 is only repacketised: no x264enc, no
  plugins-ugly), answers an RTSP PLAY with a Range (a seek), needs no configuration file and starts
  in about 0.2 s. Not chosen: VLC (`cvlc`, 43 packages even without recommends), live555MediaServer
  (no installable Debian 12 package here, and fixed ports 554/8554), MediaMTX (no Debian package),
  the pure-Python RTSP servers on PyPI (young single-author projects).
  Readiness: the script prints its bound port, then `start` waits for a 200 answer to an RTSP
  OPTIONS request. Teardown: SIGTERM (then SIGKILL); the script also quits when its stdin pipe
  closes, so it never outlives a test process that was killed.
  Transport: both work on loopback. RTP interleaved in the RTSP TCP connection: PyAV/FFmpeg with
  `rtsp_transport=tcp`, OpenCV with `OPENCV_FFMPEG_CAPTURE_OPTIONS=rtsp_transport;tcp` (what the
  tests give the app server). RTP over UDP: FFmpeg's default, which OpenCV keeps when that variable
  is unset; FFmpeg falls back to TCP by itself when a server refuses UDP (461).
  Pipelines: `rtph264pay config-interval=1` (SPS/PPS every second); with `config-interval=-1`
  (before every IDR) FFmpeg mis-splits the first access unit and every frame after it decodes
  corrupted. An RTSP clip ends (RTCP BYE, EOF for the client); a client that then seeks back to the
  start (OpenCV's `CAP_PROP_POS_FRAMES=0`, as `VideoFileSource` loops) gets the clip again, but
  FFmpeg does not see its second end: the read blocks until its timeout (OpenCV: 30 s, twice).
  So RTSP clips for tests are longer than any test reads them (`RTSP_SECONDS`).

Use as context managers, or through the fixtures at the end (import them into a test module).
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest

from streams.generation import draw_counter

CLIP_COUNTER_BASE = 0x5A00  # frame i of a test clip shows CLIP_COUNTER_BASE + i
CLIP_COLOUR = (150, 60, 20)  # BGR: a dark blue background, unlike the test pattern's colour bars
SYSTEM_PYTHON = "/usr/bin/python3"

# codec -> (PyAV encoder candidates, container suffix)
_CODECS: dict[str, tuple[tuple[str, ...], str]] = {
    "h264": (("libx264", "libopenh264"), ".mp4"),
    "mpeg4": (("mpeg4",), ".mp4"),
    "vp8": (("libvpx",), ".webm"),
}


def _encoder(codec: str) -> str | None:
    for name in _CODECS[codec][0]:
        if name in av.codecs_available:
            try:
                av.Codec(name, "w")
            except Exception:  # listed but not an encoder in this build
                continue
            return name
    return None


def pick_codec() -> str:
    """The first of h264, mpeg4, vp8 that the installed PyAV can encode."""
    for codec in _CODECS:
        if _encoder(codec) is not None:
            return codec
    raise RuntimeError("this PyAV build has no H.264, MPEG-4 or VP8 encoder")


@functools.lru_cache(maxsize=4)
def _background(size: tuple[int, int]) -> np.ndarray:
    w, h = size
    return np.full((h, w, 3), CLIP_COLOUR, np.uint8)


def clip_frame(index: int, frames: int, size: tuple[int, int]) -> np.ndarray:
    """Frame `index` of a test clip (BGR): counter bands, a moving square and its number as text."""
    w, h = size
    img = _background(size).copy()
    draw_counter(img, (CLIP_COUNTER_BASE + index) & 0xFFFF)
    side = max(8, h // 6)
    x = int((w - side) * (index % frames) / max(1, frames - 1))
    y = h // 2 - side // 2
    img[y : y + side, x : x + side] = (0, 220, 255)
    scale = max(0.4, w / 800)
    cv2.putText(img, f"clip frame {index + 1}/{frames}", (12, h // 2 - side), cv2.FONT_HERSHEY_SIMPLEX,
                scale, (255, 255, 255), max(1, int(2 * scale)), cv2.LINE_AA)  # fmt: skip
    return img


def render_test_clip(
    path: Path,
    seconds: float = 4.0,
    fps: int = 24,
    size: tuple[int, int] = (640, 360),
    codec: str | None = None,
) -> Path:
    """Render a clip of `seconds` at `fps` into `path` (its suffix is set by the codec: .mp4 for
    h264/mpeg4, .webm for vp8) and return the path written. `codec`: h264, mpeg4 or vp8; None: the
    first this PyAV can encode. One key frame a second, no B-frames; the .mp4 index (moov) is written
    at the end, as most encoders do: a reader over HTTP seeks to it (see `pad_mp4`)."""
    codec = codec or pick_codec()
    encoder = _encoder(codec)
    if encoder is None:
        raise RuntimeError(f"this PyAV build cannot encode {codec}")
    path = Path(path).with_suffix(_CODECS[codec][1])
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = max(1, round(seconds * fps))
    # one thread: as fast as several for a small clip, and kinder to a test run's other workers
    options = {"preset": "ultrafast", "tune": "zerolatency", "threads": "1"} if encoder == "libx264" else {}
    if encoder == "libvpx":
        options = {"deadline": "realtime", "cpu-used": "16", "lag-in-frames": "0"}
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=fps, options=options)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.gop_size = fps
        if encoder != "libx264":
            stream.bit_rate = 2_000_000
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(clip_frame(i, frames, size), format="bgr24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def render_hls(clip: Path, folder: Path, segment_seconds: float = 1.0) -> Path:
    """`clip` remuxed (no re-encoding) into an HLS VOD playlist `folder/index.m3u8` and MPEG-TS
    segments beside it; returns the playlist's path. H.264 or MPEG-4 clips only (not VP8)."""
    folder.mkdir(parents=True, exist_ok=True)
    playlist = folder / "index.m3u8"
    options = {"hls_time": str(segment_seconds), "hls_list_size": "0", "hls_playlist_type": "vod"}
    with av.open(str(clip)) as src, av.open(str(playlist), "w", format="hls", options=options) as dst:
        in_stream = src.streams.video[0]
        out_stream = dst.add_stream_from_template(in_stream)
        for packet in src.demux(in_stream):
            if packet.dts is None:
                continue
            packet.stream = out_stream
            dst.mux(packet)
    return playlist


def pad_mp4(clip: Path, out: Path, pad_bytes: int = 2 * 1024 * 1024) -> Path:
    """`clip` (an .mp4 with its index, the moov box, at the end) with a `free` box of `pad_bytes`
    put before the index: a reader over HTTP must skip it with a Range request (FFmpeg reads a
    short gap through, a long one it seeks over). Sample offsets are unchanged (mdat stays put)."""
    data = clip.read_bytes()
    offset = 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset : offset + 4], "big")
        if data[offset + 4 : offset + 8] == b"moov":
            break
        if size < 8:
            raise ValueError(f"{clip}: unsupported box at {offset}")
        offset += size
    else:
        raise ValueError(f"{clip} has no moov box")
    free = (pad_bytes + 8).to_bytes(4, "big") + b"free" + bytes(pad_bytes)
    out.write_bytes(data[:offset] + free + data[offset:])
    return out


# --- HTTP -------------------------------------------------------------------------------------------

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeRequestHandler(SimpleHTTPRequestHandler):
    """`SimpleHTTPRequestHandler` plus single byte ranges (206 / 416) on files, HTTP/1.1 keep-alive."""

    protocol_version = "HTTP/1.1"
    extensions_map = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".m3u8": "application/vnd.apple.mpegurl",
        ".ts": "video/mp2t",
        ".mp4": "video/mp4",
        ".webm": "video/webm",
    }
    _remaining: int | None = None
    _said_connection = False

    def send_response(self, code: int, message: str | None = None) -> None:
        self._remaining = None
        self._said_connection = False
        super().send_response(code, message)

    def send_header(self, keyword: str, value: str) -> None:
        self._said_connection |= keyword.lower() == "connection"
        super().send_header(keyword, value)

    def end_headers(self) -> None:
        # A client that sent "Connection: close" (FFmpeg does) gets it back: without it an HTTP/1.1
        # answer reads as keep-alive, FFmpeg reuses the closed connection for its next Range request,
        # fails, and skips ahead to the next key frame (the first second of an .mp4 was lost).
        if self.close_connection and not self._said_connection:
            self.send_header("Connection", "close")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def send_head(self) -> Any:
        log = getattr(self.server, "requests", None)
        if log is not None:
            log.append((self.command, self.path, self.headers.get("Range")))
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            return super().send_head()  # directories, 404s
        f = open(path, "rb")  # noqa: SIM115 - closed by do_GET / do_HEAD
        try:
            size = os.fstat(f.fileno()).st_size
            start, end = 0, size - 1
            status = 200
            match = _RANGE.match(self.headers.get("Range", "").strip())
            if match and (match[1] or match[2]):
                if match[1]:
                    start = int(match[1])
                    end = min(int(match[2]), size - 1) if match[2] else size - 1
                else:  # suffix: the last N bytes
                    start = max(0, size - int(match[2]))
                if start >= size or start > end:
                    f.close()
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                status = 206
            self.send_response(status)
            self.send_header("Content-Type", self.guess_type(path))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(end - start + 1))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            mtime = os.fstat(f.fileno()).st_mtime
            self.send_header("Last-Modified", email.utils.formatdate(mtime, usegmt=True))
            self.end_headers()
            f.seek(start)
            self._remaining = end - start + 1
            return f
        except Exception:
            f.close()
            raise

    def copyfile(self, source: Any, outputfile: Any) -> None:
        remaining = self._remaining
        if remaining is None:
            shutil.copyfileobj(source, outputfile)
            return
        while remaining > 0:
            chunk = source.read(min(64 * 1024, remaining))
            if not chunk:
                break
            outputfile.write(chunk)
            remaining -= len(chunk)


class HttpMediaServer:
    """`folder` served at http://127.0.0.1:PORT/ (ephemeral port) from a daemon thread.
    `requests`: (method, path, Range header or None) of each file request, in order."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.httpd: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        self.requests: list[tuple[str, str, str | None]] = []

    @property
    def port(self) -> int:
        assert self.httpd is not None, "not started"
        return self.httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def start(self) -> HttpMediaServer:
        handler = functools.partial(RangeRequestHandler, directory=str(self.folder))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.requests = self.requests  # type: ignore[attr-defined]  # read by the handler
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="http-media", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def __enter__(self) -> HttpMediaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- RTSP -------------------------------------------------------------------------------------------

# Run by the system Python: argv = launch line, mount path. Prints the bound port, serves until
# SIGTERM/SIGINT or until its stdin closes (the test process is gone).
_RTSP_SCRIPT = r"""
import signal, sys
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer

Gst.init(None)
launch, mount, transports = sys.argv[1], sys.argv[2], sys.argv[3]
server = GstRtspServer.RTSPServer.new()
server.set_address("127.0.0.1")
server.set_service("0")
factory = GstRtspServer.RTSPMediaFactory.new()
factory.set_launch(launch)
factory.set_shared(False)
lower = GstRtsp.RTSPLowerTrans
protocols = {"tcp": lower.TCP, "udp": lower.UDP, "any": lower.TCP | lower.UDP | lower.UDP_MCAST}
factory.set_protocols(protocols[transports])
server.get_mount_points().add_factory(mount, factory)
if server.attach(None) == 0:
    sys.exit("cannot attach the RTSP server")
loop = GLib.MainLoop()
for sig in (signal.SIGTERM, signal.SIGINT):
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
GLib.io_add_watch(sys.stdin.fileno(), GLib.IO_IN | GLib.IO_HUP | GLib.IO_ERR, lambda *a: loop.quit())
print(server.get_bound_port(), flush=True)
loop.run()
"""

_RTSP_PIPELINES = {  # demuxer and RTP payloader per container/codec; plugins-good only
    "h264": "filesrc location={path} ! qtdemux ! queue ! rtph264pay name=pay0 pt=96 config-interval=1",
    "mpeg4": "filesrc location={path} ! qtdemux ! queue ! rtpmp4vpay name=pay0 pt=96 config-interval=1",
    "vp8": "filesrc location={path} ! matroskademux ! queue ! rtpvp8pay name=pay0 pt=96",
}


def rtsp_unavailable() -> str | None:
    """Why the RTSP server cannot run here, or None."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"no {SYSTEM_PYTHON}"
    probe = "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"
    result = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        return (
            "GStreamer's RTSP server is not installed (apt-get install gir1.2-gst-rtsp-server-1.0 "
            "gstreamer1.0-plugins-base gstreamer1.0-plugins-good python3-gi): "
            + result.stderr.strip().splitlines()[-1]
        )
    return None


def clip_codec(clip: Path) -> str:
    with av.open(str(clip)) as container:
        name = container.streams.video[0].codec_context.name
    return {"h264": "h264", "mpeg4": "mpeg4", "vp8": "vp8", "libvpx": "vp8"}[name]


def rtsp_options(url: str, timeout: float = 2.0) -> str:
    """The status line of the answer to an RTSP OPTIONS request for `url`."""
    host, port = re.match(r"rtsp://([^:/]+):(\d+)", url).groups()  # type: ignore[union-attr]
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(f"OPTIONS {url} RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: tests\r\n\r\n".encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.split(b"\r\n", 1)[0].decode(errors="replace")


class RtspMediaServer:
    """`clip` (from `render_test_clip`) served at rtsp://127.0.0.1:PORT/`mount` by gst-rtsp-server.

    Each client gets its own pipeline from the clip's start (not shared); the stream ends at the
    clip's end (RTCP BYE), and a PLAY with a Range seeks in it (but see the module's docstring on
    seeking back after the end). `launch`: a gst-launch line of
    your own instead (its payloader must be named pay0). `transports`: what RTP may go over, "tcp"
    (interleaved in the RTSP connection), "udp" or "any"."""

    def __init__(
        self,
        clip: Path | None = None,
        mount: str = "/clip",
        launch: str | None = None,
        transports: str = "any",
    ) -> None:
        if launch is None:
            assert clip is not None, "a clip or a launch line"
            launch = _RTSP_PIPELINES[clip_codec(clip)].format(path=str(Path(clip).resolve()))
        self.clip = clip
        assert transports in ("tcp", "udp", "any")
        self.launch = launch
        self.transports = transports
        self.mount = mount if mount.startswith("/") else f"/{mount}"
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{self.mount}"

    def start(self, timeout: float = 20.0) -> RtspMediaServer:
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, "-c", _RTSP_SCRIPT, self.launch, self.mount, self.transports],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "GST_DEBUG": "0"},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()  # the bound port, or EOF if it failed
        if not line.isdigit():
            why = self._stderr()
            self.stop()
            raise RuntimeError(f"the RTSP server did not start: {why}")
        self.port = int(line)
        deadline = time.monotonic() + timeout
        while True:
            try:
                status = rtsp_options(self.url)
                if " 200 " in status:
                    return self
            except OSError as e:
                status = repr(e)
            if self.proc.poll() is not None or time.monotonic() > deadline:
                why = self._stderr()
                self.stop()
                raise RuntimeError(f"the RTSP server did not answer OPTIONS ({status}): {why}")
            time.sleep(0.05)

    def _stderr(self) -> str:
        """What the server wrote to stderr, once it has exited (kills it first if it has not)."""
        if self.proc is None or self.proc.stderr is None:
            return ""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        return self.proc.stderr.read()[-2000:]

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def __enter__(self) -> RtspMediaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- fixtures: import the ones a test module uses, and those they name, under `noqa: F401`:
# http_media needs media_folder; media_clip needs media_folder; rtsp_media stands alone.

CLIP_SECONDS, CLIP_FPS, CLIP_SIZE = 2.0, 24, (640, 360)  # media_folder's clip
# rtsp_media's clip: longer than a test reads it (a client that reaches the end of an RTSP clip and
# seeks back to its start stalls: see RtspMediaServer), small and at a low rate to render fast
RTSP_SECONDS, RTSP_FPS, RTSP_SIZE = 12.0, 24, (320, 240)


@pytest.fixture(scope="module", name="media_folder")
def media_folder_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with `clip.mp4` (or .webm; see `render_test_clip`) and, for H.264/MPEG-4, `hls/index.m3u8`
    and `padded.mp4` (see `pad_mp4`)."""
    folder = tmp_path_factory.mktemp("media")
    clip = render_test_clip(folder / "clip", CLIP_SECONDS, CLIP_FPS, CLIP_SIZE)
    if clip.suffix == ".mp4":
        render_hls(clip, folder / "hls")
        pad_mp4(clip, folder / "padded.mp4")
    return folder


@pytest.fixture(scope="module", name="media_clip")
def media_clip_fixture(media_folder: Path) -> Path:
    """The clip of `media_folder`."""
    return next(media_folder.glob("clip.*"))


@pytest.fixture(scope="module", name="http_media")
def http_media_fixture(media_folder: Path) -> Iterator[HttpMediaServer]:
    """`media_folder` over HTTP: `http_media.url(media_clip.name)`, `http_media.url("hls/index.m3u8")`."""
    with HttpMediaServer(media_folder) as server:
        yield server


@pytest.fixture(scope="module", name="rtsp_media")
def rtsp_media_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RtspMediaServer]:
    """A clip of RTSP_SECONDS over RTSP (`rtsp_media.url`, `rtsp_media.clip`); skipped where
    GStreamer's RTSP server is missing."""
    why = rtsp_unavailable()
    if why:
        pytest.skip(why)
    clip = render_test_clip(tmp_path_factory.mktemp("rtsp") / "clip", RTSP_SECONDS, RTSP_FPS, RTSP_SIZE)
    with RtspMediaServer(clip) as server:
        yield server
