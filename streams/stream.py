"""`Stream`: fastrtc's `Stream` constructor, served by the hardened runtime.

A fastrtc app changes only its import line (`from streams import Stream, ReplyOnPause, ...`) and is
served by `python -m server --streams module:attr` (or `server.create_app(streams=[...])`) with the
server's limits, tokens, metrics, TURN settings and drain. The built-in `/video`, `/generate` and
`/chat` streams are defined the same way.

A `Stream` knows no HTTP: the server's routes call `offer`, `add_candidate`, `set_inputs`,
`open_session` and `close_all`; refusals are `OfferRejected`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)
from pydantic import Field

from streams import fastrtc_adapter as adapter
from streams import incidents
from streams.candidates import MAX_PER_SESSION, EarlyCandidates, PeerPolicy, parse_candidate
from streams.handlers import ReplyOnPause, VideoStreamHandler
from streams.inputs import (
    InputSpec,
    InvalidInput,
    build_inputs,
    names_from_components,
    parameters_after_first,
)
from streams.media import AudioHandlerMedia, AudioVideoMedia, VideoGenerateMedia, VideoProcessMedia
from streams.recording import RecordingPolicy
from streams.runtime import OfferRejected, SessionBudget, StreamObserver
from streams.sdp import ask_for_opus_dtx
from streams.session import Media, Session
from streams.sources import SourcePolicy, source_inputs

logger = logging.getLogger(__name__)

Modality = Literal["video", "audio", "audio-video"]
Mode = Literal["send-receive", "receive", "send"]
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,39}$"
# An RTCConfiguration dict, or a function returning the current one (credentials that expire).
RtcConfigSource = dict[str, Any] | Callable[[], dict[str, Any]]


class UnsupportedHandler(ValueError):
    """A handler shape this server cannot serve; the message says what would work."""


def to_aiortc_configuration(source: RtcConfigSource) -> RTCConfiguration:
    config = source() if callable(source) else source
    return RTCConfiguration(
        iceServers=[
            RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
            for s in config.get("iceServers", [])
        ],
        iceTransportPolicy=RTCIceTransportPolicy(config.get("iceTransportPolicy", "all")),
    )


class _NoUI:
    """fastrtc builds a Gradio UI per `Stream`; this server serves its own page instead."""

    def launch(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(
            "this Stream has no Gradio UI: serve it with `python -m server --streams module:attr`"
        )


class Stream:
    """fastrtc's `Stream(handler, modality=, mode=, ...)`, hardened; `name` is its URL prefix.

    fastrtc's UI arguments (`ui_args`, `additional_outputs`, `additional_outputs_handler`,
    `track_constraints`, `rtc_configuration`, `verbose`, ...) are accepted and not used: the
    page and its ICE configuration come from the server. `concurrency_limit=None` means no
    per-stream limit (the server's MAX_SESSIONS still applies); stock fastrtc treats it as 1.
    """

    def __init__(
        self,
        handler: Any,
        *,
        additional_outputs_handler: Callable[..., Any] | None = None,
        mode: Mode = "send-receive",
        modality: Modality = "video",
        concurrency_limit: int | None | Literal["default"] = "default",
        time_limit: float | None = None,
        allow_extra_tracks: bool = False,
        rtp_params: dict[str, Any] | None = None,
        rtc_configuration: Any = None,
        server_rtc_configuration: RtcConfigSource | None = None,
        track_constraints: dict[str, Any] | None = None,
        additional_inputs: Sequence[Any] | None = None,
        additional_outputs: Sequence[Any] | None = None,
        ui_args: dict[str, Any] | None = None,
        verbose: bool = True,
        name: str | None = None,
        sources: SourcePolicy | None = None,
        **ignored: Any,
    ) -> None:
        if modality not in ("video", "audio", "audio-video"):
            raise UnsupportedHandler(f"modality {modality!r}: use 'video', 'audio' or 'audio-video'")
        if mode not in ("send-receive", "receive", "send"):
            raise UnsupportedHandler(f"mode {mode!r}: use 'send-receive', 'receive' or 'send'")
        if name is not None and not re.fullmatch(NAME_PATTERN, name):
            raise ValueError(f"stream name {name!r} must match {NAME_PATTERN} (it is the URL prefix)")
        if concurrency_limit == "default":
            concurrency_limit = 1
        if concurrency_limit is not None and (
            not isinstance(concurrency_limit, int) or concurrency_limit < 1
        ):
            raise ValueError(f"concurrency_limit must be a positive int or None, not {concurrency_limit!r}")
        self.name = name
        self.modality: Modality = modality
        self.mode: Mode = mode
        self.concurrency_limit = concurrency_limit
        self.time_limit = time_limit
        self.rtc_configuration = rtc_configuration
        self.rtc_configuration_source: RtcConfigSource | None = server_rtc_configuration
        self.max_frame_pixels: int | None = None  # larger incoming video is downscaled first (server sets it)
        self.recording: RecordingPolicy | None = None  # RECORD: sessions' media to files (server sets it)
        self.additional_inputs = list(additional_inputs or [])
        self.additional_outputs = list(additional_outputs or [])
        self.additional_outputs_handler = additional_outputs_handler
        self.track_constraints = track_constraints
        self.ui = _NoUI()
        self.budget = SessionBudget()
        self.budget.streams.append(self)
        self.pending_timeout_s = 20.0
        self.observer = StreamObserver()
        self.sessions: dict[str, Session] = {}
        self.early_candidates = EarlyCandidates()  # trickled before their offer
        self.peer_policy = PeerPolicy()  # remote candidate addresses checked at all (server sets it)
        self.handler = handler
        if sources is not None and (modality != "video" or mode != "send-receive"):
            raise UnsupportedHandler("server-side sources are for send-receive video streams")
        self.sources = sources  # uploads, URLs, media files besides the camera (streams.sources)
        self._media_factory, self.inputs = self._plan(handler)

    def __repr__(self) -> str:
        return f"<Stream {self.name or '(unnamed)'} {self.modality} {self.mode}>"

    # ---- the handler's shape ----
    def _plan(self, handler: Any) -> tuple[Callable[[Session], Media], InputSpec]:
        """Which runner serves `handler`, and its named inputs; `UnsupportedHandler` otherwise."""
        components = self.additional_inputs
        if type(handler).__module__.startswith("fastrtc") and type(handler).__name__ in (
            "ReplyOnPause", "ReplyOnStopWords"
        ):  # fmt: skip
            raise UnsupportedHandler(
                f"fastrtc.{type(handler).__name__} downloads its VAD model and spins when idle: "
                "import ReplyOnPause from `streams` instead (same arguments)"
            )
        if isinstance(handler, adapter.VideoStreamHandler):  # fastrtc's own dataclass
            handler = VideoStreamHandler(handler.callable, fps=handler.fps, skip_frames=handler.skip_frames)
        if self.modality == "video":
            if isinstance(handler, adapter.StreamHandlerBase):
                raise UnsupportedHandler(
                    "a video stream takes a function or VideoStreamHandler, not an audio handler"
                )
            if not isinstance(handler, VideoStreamHandler):
                if not callable(handler):
                    raise UnsupportedHandler(f"the handler must be callable, not {type(handler).__name__}")
                # a plain function: the newest frame only (stock queues every frame without bound)
                handler = VideoStreamHandler(handler, skip_frames=True)
            self.handler = handler
            if self.mode == "receive":
                if not callable(handler.callable):
                    raise UnsupportedHandler("a receive video stream needs a generator function")
                names, defaults, hints = parameters_after_first(handler.callable, skip=0)
                fps_field = (float | None, Field(handler.fps, ge=1, le=60))
                spec = build_inputs(names, components, defaults, hints, extra={"fps": fps_field})
                return (lambda s: VideoGenerateMedia(s, handler)), spec
            names, defaults, hints = parameters_after_first(handler.callable, skip=1)
            extra = source_inputs() if self.sources is not None else None
            taken = sorted(set(names) & set(extra or {}))
            if taken:
                raise UnsupportedHandler(f"with sources, the inputs {', '.join(taken)} belong to the server: "
                                         "rename the handler's parameters")  # fmt: skip
            spec = build_inputs(names, components, defaults, hints, extra=extra)
            return (lambda s: VideoProcessMedia(s, handler)), spec
        if not isinstance(handler, adapter.StreamHandlerBase):
            if self.modality == "audio" and callable(handler):
                raise UnsupportedHandler(
                    "an audio stream takes a handler object: wrap your function as ReplyOnPause(fn) "
                    "(from streams), or subclass StreamHandler / AsyncStreamHandler"
                )
            raise UnsupportedHandler(
                f"an {self.modality} stream takes a StreamHandler, not {type(handler).__name__}"
            )
        if self.modality == "audio-video":
            if not hasattr(handler, "video_emit"):
                raise UnsupportedHandler("an audio-video stream takes an AudioVideoStreamHandler")
            factory: Callable[[Session], Media] = lambda s: AudioVideoMedia(s, handler)  # noqa: E731
        else:
            if self.mode == "receive":
                raise UnsupportedHandler("audio receive-only streams are not supported yet: use send-receive")
            factory = lambda s: AudioHandlerMedia(s, handler)  # noqa: E731
        if isinstance(handler, ReplyOnPause):
            names, defaults, hints = parameters_after_first(handler.fn, skip=1)
        else:
            names, defaults, hints = names_from_components(components), {}, {}
        return factory, build_inputs(names, components, defaults, hints)

    # ---- serving ----
    def mount(self, app: Any, path: str = "") -> None:
        """fastrtc's `stream.mount(app, path)`: serve this stream on your own FastAPI app, with the
        server's limits, tokens, metrics and drain (settings from the environment, see README).

        The routes are fastrtc's: `{path}/webrtc/offer`, plus `{path}/input` and `{path}/outputs`.
        This is the one place `streams` reaches into the HTTP layer, so that a fastrtc app file
        works with only its import line changed.
        """
        from server.app import serve_streams  # the HTTP layer, imported only when asked to serve
        from server.config import Settings

        self.name = path.strip("/") if path.strip("/") else (self.name or "")
        if getattr(app.state, "streams", None) is not None:
            raise RuntimeError("this app already serves streams: give every stream to one mount (create_app)")
        serve_streams(app, Settings(), [self])

    # ---- capacity ----
    def join(self, budget: SessionBudget, *, pending_timeout_s: float) -> None:
        """Share `budget` (server-wide limits) with the server's other streams."""
        self.budget.streams.remove(self)
        self.budget = budget
        budget.streams.append(self)
        self.pending_timeout_s = pending_timeout_s

    @property
    def active_sessions(self) -> int:
        """Every transport counts against the one limit (stock fastrtc counts WebRTC peers only)."""
        return len(self.sessions)

    @property
    def pending_offers(self) -> int:
        return sum(1 for s in self.sessions.values() if s.pending)

    @property
    def peer_connections(self) -> int:
        return sum(1 for s in self.sessions.values() if s.pc is not None)

    def sessions_by_transport(self) -> dict[str, int]:
        counts = {"webrtc": 0, "websocket": 0, "phone": 0}
        for session in self.sessions.values():
            counts[session.transport] = counts.get(session.transport, 0) + 1
        return counts

    def _admit(self, session_id: str, transport: str, client: str | None = None) -> Session:
        """Check room and register the session at once (no await in between: a duplicate or a
        concurrent offer can never slip past the limits)."""
        try:
            if session_id in self.sessions:
                raise OfferRejected("connection_already_exists")
            self.budget.check(webrtc=transport == "webrtc", client=client)
            if self.concurrency_limit is not None and self.active_sessions >= self.concurrency_limit:
                raise OfferRejected("concurrency_limit_reached", limit=self.concurrency_limit)
        except OfferRejected as exc:
            self.observer.session_refused(transport, exc.code)
            raise
        session = Session(self, session_id, transport)
        session.client = client
        self.sessions[session_id] = session
        return session

    def _forget(self, session: Session, reason: str) -> None:
        """Called once by `Session.end`: the slot is free."""
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]
            self.observer.session_ended(session.transport, reason)
            logger.info(
                "session %s: %s %s session ended (%s)", session.id, self.name, session.transport, reason
            )

    def _new_media(self, session: Session) -> Media:
        try:
            session.media = self._media_factory(session)
        except Exception as exc:
            message = incidents.report(logger, session.id, "the handler could not start", exc)
            raise OfferRejected("session_failed", message) from exc
        return session.media

    def _start_timers(self, session: Session) -> None:
        if session.transport == "webrtc":
            session.set_timer("pending", self.pending_timeout_s, "never_connected")
        if self.time_limit is not None:
            session.set_timer("time_limit", self.time_limit, "time_limit_reached")

    # ---- WebRTC ----
    async def offer(self, session_id: str, sdp: str, client: str | None = None) -> dict[str, str]:
        """Answer an offer: the session exists from here until `end`, whatever fails. `client`
        (the caller's address) counts its offers that have not connected yet."""
        session = self._admit(session_id, "webrtc", client)
        try:
            config = to_aiortc_configuration(self.rtc_configuration_source or {"iceServers": []})
            media = self._new_media(session)
            pc = session.pc = RTCPeerConnection(config)
            incoming: list[Any] = []
            pc.on("track")(incoming.append)
            pc.on("datachannel")(lambda channel: self._attach_channel(session, channel))

            @pc.on("connectionstatechange")
            async def _on_state() -> None:
                if pc.connectionState == "connected":
                    session.mark_connected()
                elif pc.connectionState == "failed":
                    await session.end("connection_failed")
                elif pc.connectionState == "closed":
                    await session.end("client_left")

            sdp, denied = self.peer_policy.strip_sdp(sdp, client)
            if denied:
                logger.info(
                    "session %s: %d offered candidates to denied addresses dropped", session_id, denied
                )
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
                for track in media.outgoing_tracks(incoming):
                    before = len(pc.getTransceivers())
                    pc.addTrack(track)
                    if len(pc.getTransceivers()) > before:  # no section of the offer can carry it:
                        raise OfferRejected(  # aiortc would fail later, in a task of its own
                            "invalid_sdp", f"the offer has no {track.kind} section this stream can send on"
                        )
                if any(t.receiver.transport is None for t in pc.getTransceivers()) or (
                    pc.sctp is not None and pc.sctp.transport is None
                ):  # aiortc would fail in a background task of its own, after the answer
                    raise OfferRejected(
                        "invalid_sdp", "a section of the offer has no transport (BUNDLE, mid)"
                    )
                adapter.use_low_latency_jitter_buffers(pc)
                await pc.setLocalDescription(await pc.createAnswer())
            except OfferRejected:
                raise
            except Exception as exc:
                logger.warning("session %s: offer failed: %s", session_id, exc)
                raise OfferRejected("invalid_offer", f"the offer could not be applied: {exc}") from exc
            await media.start()
            self._start_timers(session)
            await self._apply_early_candidates(session)
        except BaseException as exc:
            await session.end("offer_failed")
            if isinstance(exc, OfferRejected | asyncio.CancelledError):
                raise
            message = incidents.report(logger, session_id, "the session could not start", exc)
            raise OfferRejected("session_failed", message) from exc
        logger.info("session %s: %s offer accepted (%d active)", session_id, self.name, self.active_sessions)
        answer = pc.localDescription.sdp
        if self.modality != "video":  # browsers then send one packet per ~400 ms of silence
            answer = ask_for_opus_dtx(answer)
        return {"sdp": answer, "type": pc.localDescription.type}

    def _attach_channel(self, session: Session, channel: Any) -> None:
        session.channel = channel
        set_channel = getattr(session.media, "set_channel", None)
        if callable(set_channel):
            set_channel(channel)

    async def add_candidate(
        self, session_id: str, candidate: dict[str, Any], client: str | None = None
    ) -> dict[str, str]:
        """A trickled ICE candidate: fastrtc's `{"status": "success"}` once applied, or held (bounded,
        `streams.candidates`) when it came before its offer or while the offer is being answered;
        `{"status": "ignored"}` for an address the peer policy denies (`client`: the poster's address)."""
        parsed = parse_candidate(candidate)
        if parsed is not None and not self.peer_policy.allows(parsed.ip, client):
            logger.info("session %s: a trickled candidate to a denied address was ignored", session_id)
            return {"status": "ignored", "message": "this server does not check candidates at that address"}
        session = self.sessions.get(session_id)
        if session is None:
            if parsed is not None:
                self.early_candidates.hold(session_id, parsed)
            return {"status": "success"}
        if session.transport != "webrtc":
            raise OfferRejected("unknown_connection")
        if parsed is None:
            return {"status": "success"}
        if session.pc is None or session.pc.remoteDescription is None:
            if len(session.early_candidates) >= MAX_PER_SESSION:
                raise OfferRejected(
                    "too_many_candidates", f"more than {MAX_PER_SESSION} candidates before the answer"
                )
            session.early_candidates.append(parsed)
            return {"status": "success"}
        try:
            await session.pc.addIceCandidate(parsed)
        except Exception as exc:
            raise OfferRejected(
                "invalid_candidate_format", f"the ICE candidate was not accepted: {exc}"
            ) from exc
        return {"status": "success"}

    async def _apply_early_candidates(self, session: Session) -> None:
        """Candidates that came before the answer; a bad one is logged, not fatal to the session."""
        held = [*self.early_candidates.take(session.id), *session.early_candidates]
        session.early_candidates.clear()
        for candidate in held:
            try:
                await session.pc.addIceCandidate(candidate)
            except Exception as exc:
                logger.info("session %s: an early ICE candidate was not accepted: %s", session.id, exc)

    # ---- WebSocket and phone ----
    async def open_session(self, session_id: str, transport: str, hangup: Any, channel: Any = None,
                           websocket: Any = None) -> Session:  # fmt: skip
        """A WebSocket or phone session; `hangup(reason, message)` makes its transport close."""
        if self.modality != "audio":
            raise OfferRejected(
                "unsupported_transport", f"{transport} carries audio; this stream is {self.modality}"
            )
        session = self._admit(session_id, transport)
        try:
            session.hangup = hangup
            session.channel = channel
            session.websocket = websocket
            if websocket is not None:
                session.context.run(adapter.enter_session_context, session_id, websocket)
            media = self._new_media(session)
            if channel is not None:
                self._attach_channel(session, channel)
            await media.start()
            self._start_timers(session)
        except BaseException:
            await session.end("session_failed")
            raise
        logger.info(
            "session %s: %s %s connected (%d active)", session_id, self.name, transport, self.active_sessions
        )
        return session

    # ---- inputs ----
    def set_inputs(self, session_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Validate and apply named inputs; they take effect on the next frame. `InvalidInput`
        names what is allowed; `OfferRejected("unknown_connection")` for a session we do not have."""
        session = self.sessions.get(session_id)
        if session is None or session.ended:
            raise OfferRejected("unknown_connection")
        values = self.inputs.validate(session.inputs, changes)
        handler = getattr(session.media, "handler", None)
        check = getattr(handler, "check_inputs", None)  # extension: a handler's own rules (e.g. availability)
        check_media = getattr(session.media, "check_inputs", None)  # the runtime's (e.g. a source's URL)
        try:
            if callable(check):
                check(values)
            if callable(check_media):
                check_media(values, changes)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from exc
        session.inputs = values
        if session.media is not None:
            session.media.inputs_changed(values)
        logger.info("session %s: %s inputs %s", session_id, self.name, {k: values[k] for k in changes})
        return values

    def set_input(self, webrtc_id: str, *args: Any) -> None:
        """fastrtc's positional `set_input(webrtc_id, *values)`, for code that calls it directly."""
        names = list(self.inputs.names)
        self.set_inputs(webrtc_id, dict(zip(names, args, strict=False)))

    # ---- the end ----
    async def close_all(self, reason: str = "server_shutdown") -> None:
        sessions = list(self.sessions.values())
        await asyncio.gather(*(s.end(reason) for s in sessions), return_exceptions=True)
