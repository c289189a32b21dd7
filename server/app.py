"""The application factory: one FastAPI app with every stream mounted at its own path."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from server.access import Access, BrowserGuard, credential_of
from server.config import REPO_ROOT, Settings
from server.env import apply_offline_defaults
from server.errors import Refusal, install_error_handlers
from server.ice import IceConfig, pin_host_addresses, set_dead_peer_timeout
from server.limits import BodySizeLimit, RateLimiter
from server.metrics import Metrics
from server.openapi import install_api_docs
from server.routes import SessionGuard, client_key, mount_route_hints, mount_stream, refuse
from server.shutdown import Drain
from server.user_streams import StartupError, check_names
from streams.candidates import PeerPolicy
from streams.recording import RecordingPolicy, prepare_dir
from streams.runtime import SessionBudget
from streams.stream import Stream

logger = logging.getLogger(__name__)

STATIC_DIR = REPO_ROOT / "static"


class _Named:
    """A built-in stream's name, for the clash check before the built-ins are built."""

    def __init__(self, name: str) -> None:
        self.name = name


def create_app(
    settings: Settings | None = None,
    *,
    streams: Sequence[Stream] = (),
    video_filters: Mapping[str, Any] | None = None,
) -> FastAPI:
    """Build the server: the built-in streams and `streams` (anyone's `streams.Stream`s), each at
    `/{name}/...` with every limit and check. `video_filters` replaces the filter table (tests add
    deliberately slow ones). A name clash raises `StartupError`."""
    apply_offline_defaults()
    settings = settings or Settings()
    pin_host_addresses(settings.ice_host_addresses)
    ice = IceConfig(settings)
    set_dead_peer_timeout(settings.ice_dead_peer_timeout_s)

    enabled = settings.builtin_streams
    check_names([_Named(n) for n in enabled] + list(streams))  # before any model loads
    built: list[Stream] = []
    health_parts: dict[str, Callable[[], Any]] = {}
    model_parts: list[Callable[[], dict[str, str]]] = []  # model -> loading | ready | failed
    stops: list[Callable[[], None]] = []
    detector = None
    # Each built-in's modules and models load only when it is enabled (BUILTIN_STREAMS).
    if "video" in enabled:
        video, detector, detect_executor = _build_video(settings, ice, video_filters)
        built.append(video)
        health_parts["detector"] = lambda: {
            "model": detector.model_path.name, "format": detector.format,
            "providers": detector.session.get_providers(),  # in use: CUDA may have fallen back
            "providers_requested": detector.providers_requested,
        }  # fmt: skip
        stops.append(lambda: detect_executor.shutdown(wait=False, cancel_futures=True))
        model_parts.append(lambda: {"detector": "ready"})  # loaded above, in under a second
    if "generate" in enabled:
        built.append(_build_generate(settings, ice))
    if "chat" in enabled:
        chat, responders = _build_chat(settings, ice)
        built.append(chat)
        health_parts["assistant"] = lambda: getattr(responders.get("assistant"), "state", "disabled")
        model_parts.append(
            lambda: {"vad": "ready", **{n: r.state for n, r in responders.items() if hasattr(r, "state")}}
        )

    def health() -> dict[str, Any]:
        return {name: part() for name, part in health_parts.items()}

    def models() -> dict[str, str]:
        return {name: state for part in model_parts for name, state in part().items()}

    def on_stop() -> None:
        for stop in stops:
            stop()

    app = FastAPI(title="rtserver", version="0.1.0")
    app.state.detector = detector
    serve_streams(app, settings, [*built, *streams], ice=ice, health=health, models=models, on_stop=on_stop)
    mount_route_hints(app)  # not in serve_streams: a fastrtc app's own /outputs may come after mount()
    if Path(STATIC_DIR).is_dir():
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="static")
    return app


def _build_video(
    settings: Settings, ice: IceConfig, video_filters: Mapping[str, Any] | None
) -> tuple[Stream, Any, ThreadPoolExecutor]:
    """/video: the webcam through the filters and the detector (loaded here)."""
    from streams.detection import Detector
    from streams.filters import FILTERS
    from streams.sources import SourcePolicy
    from streams.video import create_video_stream

    detector = Detector(
        settings.detector_model_path,
        threads=settings.detector_threads,
        use_gpu=settings.detector_use_gpu,
        iou_threshold=settings.detector_iou_threshold,
    )
    detect_executor = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="detect")
    video = create_video_stream(
        default_filter=settings.video_default_filter,
        default_detect=settings.video_default_detect,
        default_conf_threshold=settings.video_default_conf_threshold,
        detector=detector,
        detect_executor=detect_executor,
        concurrency_limit=settings.video_concurrency_limit,
        time_limit=settings.video_time_limit_s,
        server_rtc_configuration=ice.server_configuration,
        filters=dict(video_filters) if video_filters is not None else dict(FILTERS),
        report_hz=settings.video_report_hz,
        tracking=settings.video_tracking,
        sources=SourcePolicy(
            url_allow=tuple(settings.media_url_allow),
            media_dir=settings.media_dir,
            uploads=settings.uploads,
            upload_max_bytes=settings.upload_max_bytes,
        ),
    )
    return video, detector, detect_executor


def _build_generate(settings: Settings, ice: IceConfig) -> Stream:
    """/generate: server-made video at a live fps."""
    from streams.generation import create_generate_stream, private_sample_clip

    return create_generate_stream(
        default_fps=settings.generate_default_fps,
        default_source=settings.generate_default_source,
        video_path=settings.generate_video_path or private_sample_clip(),
        pattern_fps=settings.generate_pattern_fps,
        concurrency_limit=settings.generate_concurrency_limit,
        time_limit=settings.generate_time_limit_s,
        server_rtc_configuration=ice.server_configuration,
    )


def _build_chat(settings: Settings, ice: IceConfig) -> tuple[Stream, dict[str, Any]]:
    """/chat: the VAD now; speech-to-text and text-to-speech in the background (ASSISTANT_ENABLED)."""
    from streams.assistant import BackgroundLoaded, greeting_voice, load_assistant
    from streams.chat import EchoResponder, Greeting, Responder, create_chat_stream
    from streams.turns import TurnSettings
    from streams.vad import SileroVAD

    vad = SileroVAD()
    vad.warmup()
    if settings.chat_turn_detector == "smart":  # loaded and warmed now, so the first turn is not slow
        from streams.smart_turn import default_smart_turn

        default_smart_turn()
    responders: dict[str, Responder] = {"echo": EchoResponder()}
    unavailable = {}
    if settings.assistant_enabled:
        responders["assistant"] = BackgroundLoaded(
            lambda: load_assistant(
                llm_base_url=settings.llm_base_url,
                llm_model=settings.llm_model,
                llm_api_key=settings.llm_api_key,
                system_prompt=settings.llm_system_prompt,
                stt_threads=settings.stt_threads,
            )
        )
    else:
        unavailable["assistant"] = "disabled by ASSISTANT_ENABLED=false"
    if settings.chat_default_mode in unavailable:
        raise ValueError(
            f"CHAT_DEFAULT_MODE={settings.chat_default_mode} but {unavailable[settings.chat_default_mode]}"
        )
    chat = create_chat_stream(
        vad=vad,
        responders=responders,
        turn_settings=TurnSettings(
            silence_ms=settings.chat_silence_ms,
            min_speech_ms=settings.chat_min_speech_ms,
            interrupt_ms=settings.chat_interrupt_ms,
            threshold=settings.chat_vad_threshold,
            max_utterance_s=settings.chat_max_utterance_s,
            detector=settings.chat_turn_detector,
            smart_pause_ms=settings.chat_smart_pause_ms,
            max_silence_ms=settings.chat_max_silence_ms,
        ),
        default_mode=settings.chat_default_mode,  # type: ignore[arg-type]
        unavailable=unavailable,
        greeting=Greeting(settings.chat_greeting, greeting_voice(responders.get("assistant")))
        if settings.chat_greeting
        else None,
        concurrency_limit=settings.chat_concurrency_limit,
        time_limit=settings.chat_time_limit_s,
        server_rtc_configuration=ice.server_configuration,
    )
    return chat, responders


def _recording_policy(settings: Settings) -> RecordingPolicy | None:
    """RECORD's policy, its folder created (0750) and proven writable now: a bad RECORD_DIR stops
    the server at start, not at the first session."""
    if not settings.record:
        return None
    try:
        directory = prepare_dir(settings.record_dir.resolve())
    except OSError as exc:
        raise StartupError(
            f"RECORD_DIR={settings.record_dir} is not a writable folder ({exc.strerror or exc}): "
            "create it for this user, point RECORD_DIR elsewhere, or set RECORD=false"
        ) from exc
    logger.info("recording every session to %s (at most %d bytes, %.0f s each)", directory,
                settings.record_max_bytes, settings.record_max_s)  # fmt: skip
    return RecordingPolicy(directory, settings.record_max_bytes, settings.record_max_s)


def serve_streams(
    app: FastAPI,
    settings: Settings,
    served: Sequence[Stream],
    *,
    ice: IceConfig | None = None,
    health: Callable[[], dict[str, Any]] = dict,
    models: Callable[[], dict[str, str]] = dict,
    on_stop: Callable[[], None] | None = None,
) -> None:
    """Everything a stream gets from this server, on `app`: one session budget, the drain, access
    and rate checks, metrics, the error renderer, each stream's routes, and the ops routes.
    Used by `create_app` and by `streams.Stream.mount` (a fastrtc app's own FastAPI app)."""
    check_names(served)
    recording = _recording_policy(settings)
    if ice is None:
        pin_host_addresses(settings.ice_host_addresses)
        set_dead_peer_timeout(settings.ice_dead_peer_timeout_s)
        ice = IceConfig(settings)
    budget = SessionBudget(
        max_sessions=settings.max_sessions,
        max_pending=settings.max_pending_offers,
        max_pending_per_client=settings.max_pending_offers_per_client,
    )
    for stream in served:
        stream.join(budget, pending_timeout_s=settings.pending_offer_timeout_s)
        if stream.rtc_configuration_source is None:  # TURN/ICE settings apply to user streams too
            stream.rtc_configuration_source = ice.server_configuration
        if stream.max_frame_pixels is None:
            stream.max_frame_pixels = settings.video_max_pixels
        if stream.recording is None:  # RECORD: each session's media, to files
            stream.recording = recording
        if settings.ice_denied_peers is not None:
            stream.peer_policy = PeerPolicy(settings.ice_denied_peers)

    async def close_all_sessions() -> None:
        await asyncio.gather(*(s.close_all("server_shutdown") for s in budget.streams))

    def start_draining() -> None:
        budget.draining = True

    drain = Drain(start_draining, close_all_sessions, settings.shutdown_grace_s)
    access = Access(settings.instance_id, settings.auth_token, settings.session_token_ttl_s)
    outer_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        drain.install()
        ice_refresher = asyncio.create_task(ice.keep_fresh(), name="turn-provider-refresh")
        logger.info(
            "server ready: instance %s, streams %s, access token %s",
            settings.instance_id, ", ".join(app.state.streams), "required" if access.required else "off",
        )  # fmt: skip
        try:
            async with outer_lifespan(app) as state:
                yield state
        finally:
            ice_refresher.cancel()
            await drain.finish()
            if on_stop is not None:
                on_stop()
            logger.info("server stopped")

    app.router.lifespan_context = lifespan
    app.state.settings = settings
    app.state.streams = {}
    app.state.budget = budget
    app.state.metrics = Metrics(lambda: app.state.streams)
    app.state.access = access
    guard = SessionGuard(
        access,
        RateLimiter(settings.offer_rate_per_minute, settings.offer_rate_burst),
        app.state.metrics.count_refusal,
    )
    app.state.guard = guard
    app.add_middleware(  # uploads are streamed to disk by their route, against UPLOAD_MAX_BYTES
        BodySizeLimit, max_bytes=settings.max_body_bytes, streamed=lambda path: path.endswith("/upload")
    )
    if settings.allowed_origins:  # pages on these origins may call the API (preflight included)
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],  # tokens travel as a header, never cookies
            allow_credentials=False,
            expose_headers=["Retry-After"],
            max_age=600,
        )
    app.add_middleware(
        BrowserGuard, allowed_origins=settings.allowed_origins, allowed_hosts=settings.allowed_hosts
    )  # outermost: refuses the rest

    install_error_handlers(app)
    for stream in served:
        mount_stream(app, stream, guard)
    install_api_docs(app)  # the schema is completed when asked for, so later routes count too

    def master(request: Request) -> None:
        """Dependency: the master access token (when AUTH_TOKEN is set)."""
        denied = access.check_master(credential_of(request.headers, request.query_params))
        if denied is not None:
            raise refuse(denied)

    def any_credential(request: Request) -> None:
        """Dependency: the master token or a session token for `?webrtc_id=`."""
        credential = credential_of(request.headers, request.query_params)
        denied = access.check_any(credential, request.query_params.get("webrtc_id"))
        if denied is not None:
            raise refuse(denied)

    issue_limiter = RateLimiter(settings.offer_rate_per_minute, settings.offer_rate_burst)

    def issue_rate(request: Request) -> None:
        """Dependency: session ids per client address, at the new-session rate (each can get TURN
        credentials)."""
        denied = issue_limiter.denial(client_key(request), "new sessions")
        if denied is not None:
            raise refuse(denied)

    @app.post("/api/session", tags=["access"], dependencies=[Depends(master), Depends(issue_rate)])
    async def new_session() -> Any:
        """A server-issued session id (naming this process) and, with AUTH_TOKEN set, its token."""
        return access.issue()

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "instance": settings.instance_id,
            "streams": {n: s.active_sessions for n, s in app.state.streams.items()},
            **health(),
        }

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> Any:
        """Ready for traffic: not draining, and no model still loading (a load balancer waits).
        Says each enabled model's state; a model that failed is not waited for (its mode says why)."""
        states = models()
        still_loading = [name for name, state in states.items() if state == "loading"]
        if budget.draining:
            raise Refusal(503, "shutting_down", "the server is shutting down")
        if still_loading:
            raise Refusal(503, "loading", f"still loading models: {', '.join(still_loading)}", models=states)
        return {"status": "ready", "models": states}

    @app.get("/metrics", tags=["ops"], dependencies=[Depends(master)])
    async def metrics() -> Response:
        return Response(app.state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/api/rtc-config", tags=["ice"], dependencies=[Depends(any_credential)])
    async def rtc_config(request: Request) -> Any:
        """The browser's RTCConfiguration. TURN credentials only for a session this server issued
        (`POST /api/session`), so a stranger cannot mint relays without the rate-limited route."""
        if ice.hands_out_credentials and not access.was_issued(request.query_params.get("webrtc_id")):
            raise Refusal(403, "session_required", "TURN credentials are for sessions this server issued: "
                          "POST /api/session, then GET /api/rtc-config?webrtc_id=<its id>")  # fmt: skip
        return ice.client_configuration()
