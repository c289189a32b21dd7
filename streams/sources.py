"""Server-side video sources for a send-receive video stream: an uploaded file, a URL, or a file in a
media folder, decoded off the event loop and fed to the same newest-frame slot as the camera.

`SourcePolicy` says what a stream allows (URL patterns, the media folder, uploads); `probe` checks
that a file is a video FFmpeg can decode; `SourceFeed` decodes one source in its own thread, paced at
the source's rate (or the live `fps` input), looping and seeking on request, and hands over only the
newest frame, so a slow handler drops frames instead of queueing them.
"""

from __future__ import annotations

import atexit
import fnmatch
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import av
from pydantic import Field

logger = logging.getLogger(__name__)

URL_SCHEMES = ("http", "https", "rtsp", "rtsps", "rtmp", "rtmps")
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mpg", ".mpeg", ".flv", ".ogv",
                  ".m3u8", ".gif")  # fmt: skip
MAX_LISTED_FILES = 1000
OPEN_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 10.0
MAX_PROBE_PACKETS = 500
VIDEO_CLOCK = 90_000
VIDEO_TIME_BASE = Fraction(1, VIDEO_CLOCK)


class SourceRefused(ValueError):
    """A source this stream does not allow, or a file that is not a decodable video; says why."""


def without_credentials(url: str) -> str:
    """The URL for matching and logging: scheme and host lower-cased, any user:password@ removed."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit((parts.scheme.lower(), netloc, parts.path, parts.query, ""))


@dataclass(frozen=True)
class SourcePolicy:
    """What server-side sources a stream's sessions may use.

    `url_allow`: shell patterns (fnmatch, case-sensitive) matched against the whole URL without
    credentials; empty allows no URL, so a client cannot make the server fetch internal addresses.
    `media_dir`: a folder whose video files may be played by name (no path leaves it).
    """

    url_allow: tuple[str, ...] = ()
    media_dir: Path | None = None
    uploads: bool = True
    upload_max_bytes: int = 200 * 1024 * 1024

    def check_url(self, url: str) -> str:
        """`url` as written when a pattern allows it; `SourceRefused` saying why otherwise."""
        if any(ord(c) < 33 for c in url):
            raise SourceRefused("url: spaces and control characters are not allowed")
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018  (raises on a malformed port)
        except ValueError as exc:
            raise SourceRefused(f"url: not a URL ({exc})") from exc
        if parts.scheme.lower() not in URL_SCHEMES or not parts.hostname:
            raise SourceRefused(f"url: use one of {', '.join(s + '://' for s in URL_SCHEMES)} with a host")
        plain = without_credentials(url)
        if not any(fnmatch.fnmatchcase(plain, pattern) for pattern in self.url_allow):
            if not self.url_allow:
                raise SourceRefused("url: this server allows no URL sources (MEDIA_URL_ALLOW is empty)")
            raise SourceRefused(f"url: {plain} matches no pattern of MEDIA_URL_ALLOW")
        return url

    def media_files(self) -> list[dict[str, Any]]:
        """The playable files under `media_dir` (names relative to it, sorted), at most 1000."""
        if self.media_dir is None or not self.media_dir.is_dir():
            return []
        root = self.media_dir.resolve()
        files = []
        for path in sorted(root.rglob("*")):
            if len(files) >= MAX_LISTED_FILES:
                break
            if path.suffix.lower() not in VIDEO_SUFFIXES or not path.is_file():
                continue
            if not path.resolve().is_relative_to(root):  # a link out of the folder
                continue
            files.append({"name": path.relative_to(root).as_posix(), "bytes": path.stat().st_size})
        return files

    def resolve_file(self, name: str) -> Path:
        """The media file `name` (as listed), or `SourceRefused`: nothing outside `media_dir`."""
        if self.media_dir is None:
            raise SourceRefused("file: this server has no media folder (MEDIA_DIR is not set)")
        relative = PurePosixPath(name)
        if (not name or "\\" in name or "\0" in name or relative.is_absolute()
                or any(part in ("..", "") for part in name.split("/"))):  # fmt: skip
            raise SourceRefused("file: give a name from GET /{stream}/media (no absolute path, no '..')")
        root = self.media_dir.resolve()
        path = (root / relative).resolve()
        if not path.is_relative_to(root):
            raise SourceRefused("file: that name leaves the media folder")
        if not path.is_file() or path.suffix.lower() not in VIDEO_SUFFIXES:
            raise SourceRefused(f"file: no video named {name!r} in the media folder")
        return path


@dataclass(frozen=True)
class SourceInfo:
    """What `probe` found: enough for the client to show, and to pace the source."""

    container: str
    codec: str
    width: int
    height: int
    fps: float | None
    duration_s: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"container": self.container, "codec": self.codec, "width": self.width,
                "height": self.height, "fps": self.fps, "duration_s": self.duration_s}  # fmt: skip


def _rate(stream: Any) -> float | None:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    value = float(rate) if rate else 0.0
    return round(value, 3) if 1 <= value <= 240 else None


def probe(path: Path | str) -> SourceInfo:
    """Open `path` and decode its first video frame; `SourceRefused` when that fails (not a video,
    no video stream, a codec this FFmpeg cannot decode). Blocking: call it off the event loop."""
    try:
        with av.open(str(path), timeout=(OPEN_TIMEOUT_S, READ_TIMEOUT_S)) as container:
            if not container.streams.video:
                raise SourceRefused(f"the {container.format.name} file has no video stream")
            stream = container.streams.video[0]
            frame = None
            for packets, packet in enumerate(container.demux(stream)):
                decoded = packet.decode()
                if decoded:
                    frame = decoded[0]
                    break
                if packets > MAX_PROBE_PACKETS:
                    break
            if frame is None:
                raise SourceRefused(f"no decodable video frame ({stream.codec_context.name})")
            duration = float(container.duration / av.time_base) if container.duration else None
            return SourceInfo(
                container=container.format.name,
                codec=stream.codec_context.name,
                width=frame.width,
                height=frame.height,
                fps=_rate(stream),
                duration_s=round(duration, 3) if duration else None,
            )
    except SourceRefused:
        raise
    except (av.FFmpegError, ValueError, OSError) as exc:  # its text names the server's path: not shown
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise SourceRefused(f"not a video FFmpeg can decode ({reason})") from exc


# What FFmpeg may open for each kind of URL: an HLS playlist at an allowed address must not make it
# read local files (`file:`, `concat:`, `subfile:`...) through its segment list.
PROTOCOLS = {
    "http": "http,https,tcp,tls,crypto", "https": "http,https,tcp,tls,crypto",
    "rtsp": "rtsp,rtsps,rtp,srtp,udp,tcp,tls", "rtsps": "rtsp,rtsps,rtp,srtp,udp,tcp,tls",
    "rtmp": "rtmp,rtmps,rtmpt,rtmpts,tcp,tls", "rtmps": "rtmp,rtmps,rtmpt,rtmpts,tcp,tls",
}  # fmt: skip


def ffmpeg_options(target: str) -> dict[str, str]:
    """FFmpeg options for opening `target`: URLs keep to their own protocols, RTSP goes over TCP
    (no UDP ports to open through a firewall, no loss)."""
    scheme = urlsplit(target).scheme.lower() if "://" in target else ""
    options: dict[str, str] = {}
    if scheme in PROTOCOLS:
        options["protocol_whitelist"] = PROTOCOLS[scheme]
    if scheme in ("rtsp", "rtsps"):
        options["rtsp_transport"] = "tcp"
    return options


class SourceFeed:
    """Decodes one source in a thread and hands the newest frame to `deliver` (called on the event
    loop through `schedule`, at most one hand-over pending, so nothing queues).

    Files are paced at `fps()` (None: the file's own rate), drift-free, restarting the schedule when
    decoding falls behind; live sources (no duration: RTSP, a live HLS, an endless HTTP stream) are
    delivered as they arrive. At the end a file loops (`looping()`) or the feed stops and says so.
    Frames are stamped with the wall clock (90 kHz) so a switch between sources keeps time moving.
    """

    def __init__(
        self,
        target: str,
        *,
        name: str,
        deliver: Callable[[av.VideoFrame], None],
        schedule: Callable[[Callable[[], None]], None],
        report: Callable[[dict[str, Any]], None],
        fps: Callable[[], float | None],
        looping: Callable[[], bool],
        session_id: str = "unbound",
    ) -> None:
        self.target = target
        self.name = name  # what reports and logs say (never a URL's credentials)
        self.deliver = deliver
        self.schedule = schedule
        self.report = report
        self.fps = fps
        self.looping = looping
        self.session_id = session_id
        self.frames = 0
        self.info: SourceInfo | None = None
        self.ended = False  # played to its end without looping (or failed): a new request restarts it
        self._stop = threading.Event()
        self._seek_to: float | None = None
        self._lock = threading.Lock()
        self._latest: av.VideoFrame | None = None
        self._handover_pending = False
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"source-{session_id[:12]}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def seek(self, seconds: float) -> None:
        """Jump to `seconds` (files only) before the next frame."""
        with self._lock:
            self._seek_to = seconds

    def close(self) -> None:
        """Idempotent; the thread exits at its next frame or read timeout (it never blocks the loop)."""
        self._stop.set()

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    # ---- the decoding thread ----
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._play_once():
                    break
        except Exception as exc:  # reported, never raised into a thread's void
            self.ended = True
            message = str(exc)[:200] or type(exc).__name__
            logger.warning("session %s: source %s failed: %s", self.session_id, self.name, message)
            self.report({"type": "source", "state": "error", "source": self.name, "message": message})

    def _play_once(self) -> bool:
        """Play the source to its end; True to play it again (looping)."""
        with av.open(self.target, options=ffmpeg_options(self.target),
                     timeout=(OPEN_TIMEOUT_S, READ_TIMEOUT_S)) as container:  # fmt: skip
            if not container.streams.video:
                raise SourceRefused("the source has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            live = not container.duration
            if self.info is None:
                self.info = SourceInfo(container.format.name, stream.codec_context.name,
                                       stream.codec_context.width, stream.codec_context.height, _rate(stream),
                                       None if live else round(container.duration / av.time_base, 3))  # fmt: skip
                self.report(
                    {"type": "source", "state": "playing", "source": self.name, **self.info.as_dict()}
                )
            deadline: float | None = None  # the first frame goes at once
            for frame in container.decode(stream):
                if self._stop.is_set():
                    return False
                with self._lock:
                    seek_to, self._seek_to = self._seek_to, None
                if seek_to is not None and not live:
                    container.seek(int(seek_to * av.time_base), any_frame=False, backward=True)
                    deadline = None
                    continue
                if not live:
                    interval = 1.0 / max(1.0, self.fps() or (self.info.fps or 25.0))
                    now = time.monotonic()
                    deadline = now if deadline is None else deadline + interval
                    if deadline > now:
                        if self._stop.wait(deadline - now):
                            return False
                    elif now - deadline > interval:  # fell behind: restart the schedule, no burst
                        deadline = now
                self._hand_over(frame)
        if live or not self.looping():
            self.ended = True
            self.report({"type": "source", "state": "ended", "source": self.name, "frames": self.frames})
            return False
        return True

    def _hand_over(self, frame: av.VideoFrame) -> None:
        frame.pts = int((time.monotonic() - self._t0) * VIDEO_CLOCK)
        frame.time_base = VIDEO_TIME_BASE
        self.frames += 1
        with self._lock:
            self._latest = frame
            if self._handover_pending:
                return  # the loop has not taken the previous one yet: it is replaced, not queued
            self._handover_pending = True
        try:
            self.schedule(self._on_loop)
        except RuntimeError:  # the event loop is closed: the server is gone
            self._stop.set()

    def _on_loop(self) -> None:
        with self._lock:
            frame, self._latest = self._latest, None
            self._handover_pending = False
        if frame is not None and not self._stop.is_set():
            self.deliver(frame)


def source_inputs() -> dict[str, tuple[Any, Any]]:
    """The live inputs a stream with sources adds to its handler's, owned by the runtime:
    which source, its address, and how to play it (`fps` None: the source's own rate)."""
    return {
        "source": (Literal["camera", "upload", "url", "file"], Field("camera")),
        "url": (str | None, Field(None, max_length=2048)),
        "file": (str | None, Field(None, max_length=1024)),
        "fps": (float | None, Field(None, ge=1, le=60)),
        "loop": (bool, Field(True)),
        "seek": (float | None, Field(None, ge=0, le=7 * 86_400)),
    }


_upload_dir: Path | None = None


def private_upload_dir() -> Path:
    """This process's folder for uploads (mode 0700, removed at exit): no other local user can
    read a session's video or swap the file the server will decode."""
    global _upload_dir
    if _upload_dir is None or not _upload_dir.is_dir():
        _upload_dir = Path(tempfile.mkdtemp(prefix="rtserver-uploads-"))
        atexit.register(shutil.rmtree, _upload_dir, ignore_errors=True)
    return _upload_dir
