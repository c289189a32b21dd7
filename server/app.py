"""The application factory: one FastAPI app with every stream mounted at its own path."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from server.config import REPO_ROOT, SAMPLE_CLIP, Settings
from server.env import apply_offline_defaults
from server.ice import pin_host_addresses, set_dead_peer_timeout
from server.limits import BodySizeLimit
from server.metrics import Metrics
from server.offers import refusal
from server.routes import describe_errors, mount_stream

logger = logging.getLogger(__name__)

STATIC_DIR = REPO_ROOT / "static"


def create_app(
    settings: Settings | None = None, *, video_filters: Mapping[str, Any] | None = None
) -> FastAPI:
    """Build the server. `video_filters` replaces the filter table (tests add deliberately slow ones)."""
    apply_offline_defaults()
    settings = settings or Settings()
    pin_host_addresses(settings.ice_host_addresses)
    set_dead_peer_timeout(settings.ice_dead_peer_timeout_s)

    # Imported here so the offline defaults above are in place before gradio loads.
    from streams.assistant import BackgroundLoaded, load_assistant
    from streams.chat import ChatParams, EchoResponder, Responder, create_chat_stream
    from streams.detection import Detector
    from streams.filters import FILTERS
    from streams.generation import GenerateParams, create_generate_stream, ensure_sample_clip
    from streams.turns import TurnSettings
    from streams.vad import SileroVAD
    from streams.video import VideoParams, create_video_stream

    detector = Detector(
        settings.detector_model_path,
        threads=settings.detector_threads,
        use_gpu=settings.detector_use_gpu,
        iou_threshold=settings.detector_iou_threshold,
    )
    detect_executor = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="detect")
    filters = dict(video_filters) if video_filters is not None else dict(FILTERS)
    video = create_video_stream(
        defaults=VideoParams.model_validate(
            {
                "filter": settings.video_default_filter,
                "detect": settings.video_default_detect,
                "conf_threshold": settings.video_default_conf_threshold,
            },
            context={"filters": filters},
        ),
        detector=detector,
        detect_executor=detect_executor,
        concurrency_limit=settings.video_concurrency_limit,
        time_limit=settings.video_time_limit_s,
        server_rtc_configuration=settings.server_rtc_configuration(),
        filters=filters,
        report_hz=settings.video_report_hz,
    )

    generate = create_generate_stream(
        defaults=GenerateParams.model_validate(
            {"fps": settings.generate_default_fps, "source": settings.generate_default_source}
        ),
        video_path=settings.generate_video_path or ensure_sample_clip(SAMPLE_CLIP),
        pattern_fps=settings.generate_pattern_fps,
        concurrency_limit=settings.generate_concurrency_limit,
        time_limit=settings.generate_time_limit_s,
        server_rtc_configuration=settings.server_rtc_configuration(),
    )

    vad = SileroVAD()
    vad.warmup()
    responders: dict[str, Responder] = {"echo": EchoResponder()}
    unavailable = {}
    if settings.assistant_enabled:
        assistant = BackgroundLoaded(
            lambda: load_assistant(
                llm_base_url=settings.llm_base_url,
                llm_model=settings.llm_model,
                llm_api_key=settings.llm_api_key,
                system_prompt=settings.llm_system_prompt,
                stt_threads=settings.stt_threads,
            )
        )
        responders["assistant"] = assistant
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
            threshold=settings.chat_vad_threshold,
            max_utterance_s=settings.chat_max_utterance_s,
        ),
        default_mode=ChatParams(mode=settings.chat_default_mode).mode,  # type: ignore[arg-type]
        unavailable=unavailable,
        concurrency_limit=settings.chat_concurrency_limit,
        time_limit=settings.chat_time_limit_s,
        server_rtc_configuration=settings.server_rtc_configuration(),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logger.info("server ready: streams %s", ", ".join(app.state.streams))
        yield
        for stream in app.state.streams.values():
            await stream.close_all()
        detect_executor.shutdown(wait=False, cancel_futures=True)
        logger.info("server stopped")

    app = FastAPI(title="rtserver", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.streams = {}
    app.state.detector = detector
    app.state.metrics = Metrics(lambda: {n: s.sessions_by_transport() for n, s in app.state.streams.items()})
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return refusal(422, "invalid_request", describe_errors(list(exc.errors())))

    mount_stream(app, video, "video")
    mount_stream(app, generate, "generate")
    mount_stream(app, chat, "chat")

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "streams": {n: s.active_sessions for n, s in app.state.streams.items()},
            "detector": {"model": detector.model_path.name, "format": detector.format,
                         "providers": detector.providers},
            "assistant": getattr(responders.get("assistant"), "state", "disabled"),
        }  # fmt: skip

    @app.get("/metrics", tags=["ops"])
    async def metrics() -> Response:
        return Response(app.state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/api/rtc-config", tags=["ice"])
    async def rtc_config() -> dict[str, Any]:
        return settings.client_rtc_configuration()

    if Path(STATIC_DIR).is_dir():
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="static")
    return app
