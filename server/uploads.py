"""`POST /{stream}/upload` (a session's own video, multipart) and `GET /{stream}/media` (the files of
MEDIA_DIR), for streams with server-side sources (`Stream(sources=...)`).

An upload is streamed to a private temporary file while it is counted (never held in memory, never
past UPLOAD_MAX_BYTES), then opened with FFmpeg: a file that is not a decodable video is refused and
deleted. The session owns the file from then on and deletes it when it ends, however it ends.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from python_multipart.multipart import MultipartParser, parse_options_header

from server.errors import Refusal
from streams.sources import SourceRefused, private_upload_dir, probe
from streams.stream import Stream

logger = logging.getLogger(__name__)

UPLOAD_FIELD = "file"


class _UploadWriter:
    """multipart/form-data parsed as it arrives: the `file` field's bytes go to `fd`, counted."""

    def __init__(self, boundary: bytes, fd: int, max_bytes: int) -> None:
        self.fd = fd
        self.max_bytes = max_bytes
        self.written = 0
        self.filename: str | None = None
        self.found = False
        self.too_big = False
        self._header_field = b""
        self._header_value = b""
        self._in_file = False
        self._headers: dict[bytes, bytes] = {}
        self.parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": lambda d, s, e: self._add("_header_field", d[s:e]),
                "on_header_value": lambda d, s, e: self._add("_header_value", d[s:e]),
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_done,
                "on_part_data": self._data,
                "on_part_end": self._part_end,
            },
        )

    def _add(self, attr: str, data: bytes) -> None:
        setattr(self, attr, getattr(self, attr) + data)

    def _part_begin(self) -> None:
        self._headers = {}

    def _header_end(self) -> None:
        self._headers[self._header_field.strip().lower()] = self._header_value.strip()
        self._header_field = self._header_value = b""

    def _headers_done(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._in_file = params.get(b"name") == UPLOAD_FIELD.encode() and not self.found
        if self._in_file:
            self.found = True
            raw = params.get(b"filename")
            self.filename = raw.decode("utf-8", "replace")[-200:] if raw else None

    def _data(self, data: bytes, start: int, end: int) -> None:
        if not self._in_file or self.too_big:
            return
        self.written += end - start
        if self.written > self.max_bytes:
            self.too_big = True
            return
        os.write(self.fd, data[start:end])

    def _part_end(self) -> None:
        self._in_file = False

    def feed(self, chunk: bytes) -> None:
        self.parser.write(chunk)


def too_large(max_bytes: int) -> Refusal:
    return Refusal(413, "too_large", f"the upload is larger than this server's {max_bytes} bytes "
                   "(UPLOAD_MAX_BYTES)", max_bytes=max_bytes)  # fmt: skip


async def receive_upload(request: Request, session_id: str, max_bytes: int) -> tuple[Path, int, str | None]:
    """The request's `file` field in a new private file; nothing is left on disk if it fails."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + 64 * 1024:
        raise too_large(max_bytes)
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise Refusal(415, "unsupported_media_type",
                      f"send the video as multipart/form-data with a field named {UPLOAD_FIELD!r}")  # fmt: skip
    fd, name = tempfile.mkstemp(dir=private_upload_dir(), prefix=f"upload-{session_id[:16]}-")
    path = Path(name)
    try:
        writer = _UploadWriter(boundary, fd, max_bytes)
        try:
            async for chunk in request.stream():
                writer.feed(chunk)
                if writer.too_big:
                    raise too_large(max_bytes)
        except Exception as exc:
            if isinstance(exc, Refusal):
                raise
            if type(exc).__name__ == "ClientDisconnect":
                raise Refusal(400, "upload_incomplete", "the client left before the upload finished") from exc
            raise Refusal(400, "invalid_upload", f"the multipart body could not be read: {exc}") from exc
        if not writer.found or writer.written == 0:
            raise Refusal(400, "invalid_upload", f"no file in a field named {UPLOAD_FIELD!r}")
        return path, writer.written, writer.filename
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def mount_source_routes(router: APIRouter, stream: Stream, name: str, settings: Any, guard: Any) -> None:
    """The routes of a stream with server-side sources."""
    policy = stream.sources
    assert policy is not None
    checked_query = Depends(guard.for_query(name))
    busy: set[str] = set()  # sessions with an upload in progress: one at a time each

    @router.post("/upload", name=f"{name}_upload", openapi_extra={"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": [UPLOAD_FIELD], "properties": {
            UPLOAD_FIELD: {"type": "string", "format": "binary", "description": "the video"}}}}}}})  # fmt: skip
    async def upload(request: Request, webrtc_id: str = checked_query) -> Any:
        """Upload a video (multipart field `file`) for this session, then play it (`source=upload`)."""
        if not policy.uploads:
            raise Refusal(403, "uploads_disabled", "this server takes no uploads (UPLOADS=false)")
        session = stream.sessions.get(webrtc_id)
        if session is None or session.ended:
            raise Refusal(404, "unknown_connection", f"no active {name} session with webrtc_id {webrtc_id!r}")
        if webrtc_id in busy:
            raise Refusal(409, "upload_in_progress", "this session is already uploading a video")
        busy.add(webrtc_id)
        try:
            t0 = time.perf_counter()
            path, size, filename = await receive_upload(request, webrtc_id, policy.upload_max_bytes)
            try:
                info = await asyncio.to_thread(probe, path)
            except SourceRefused as exc:
                path.unlink(missing_ok=True)
                logger.info("session %s: upload refused: %s", webrtc_id, exc)
                raise Refusal(415, "not_a_video", str(exc)) from exc
            media = session.media
            if session.ended or media is None or not hasattr(media, "set_upload"):
                path.unlink(missing_ok=True)
                raise Refusal(404, "unknown_connection", f"the {name} session {webrtc_id!r} ended")
            old = media.set_upload(path, info)
            if old is not None:
                old.unlink(missing_ok=True)
            params = stream.set_inputs(webrtc_id, {"source": "upload"})
            logger.info("session %s: uploaded %d bytes (%s %s %dx%d) in %.1f s", webrtc_id, size,
                        info.container, info.codec, info.width, info.height, time.perf_counter() - t0)  # fmt: skip
            return {"status": "ok", "upload": {"name": filename, "bytes": size, **info.as_dict()},
                    "params": params}  # fmt: skip
        finally:
            busy.discard(webrtc_id)

    @router.get("/media", name=f"{name}_media")
    async def media_files(webrtc_id: str = checked_query) -> Any:
        """The files of MEDIA_DIR a session may play (`source=file`, `file=<name>`)."""
        files = await asyncio.to_thread(policy.media_files)
        return {"files": files, "urls": bool(policy.url_allow), "uploads": policy.uploads,
                "upload_max_bytes": policy.upload_max_bytes}  # fmt: skip
