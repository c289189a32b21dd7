"""One typed settings object, read from environment variables (see README, "Settings")."""

from __future__ import annotations

import ipaddress
import secrets
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO_ROOT / "models" / "nanodet-g-416.onnx"


class IceServer(BaseModel):
    """One entry of an RTCConfiguration's `iceServers`."""

    urls: str | list[str]
    username: str | None = None
    credential: str | None = None


class Settings(BaseSettings):
    """Every knob of the server. Environment variables use the upper-case field name."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: str = "info"

    # --- ICE / networking ---
    ice_servers: list[IceServer] = Field(
        default_factory=list,
        description="JSON list of RTCIceServer dicts used by the server and handed to browsers.",
    )
    ice_host_addresses: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated host addresses aiortc gathers (e.g. 127.0.0.1 in tests). Empty: all.",
    )

    # --- TURN (see server/ice.py) ---
    turn_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated turn:/turns: URLs of your TURN server"
    )
    turn_username: str | None = Field(None, description="static TURN user (coturn lt-cred-mech)")
    turn_credential: str | None = None
    turn_shared_secret: str | None = Field(
        None, description="coturn static-auth-secret: mint time-limited REST credentials instead"
    )
    turn_user: str = Field("rtserver", description="the user part of REST usernames")
    turn_credential_ttl_s: float = Field(3600.0, ge=60, le=7 * 86_400)
    turn_provider: Literal["none", "cloudflare", "twilio"] = "none"
    cloudflare_turn_key_id: str | None = None
    cloudflare_turn_api_token: str | None = None
    twilio_account_sid: str | None = None
    ice_transport_policy: Literal["all", "relay"] = Field(
        "all", description="relay: browsers and the server use TURN only"
    )

    ice_denied_peers: str | None = Field(
        None,
        description="comma-separated CIDR ranges whose remote candidates get no connectivity checks; "
        "unset: link-local, multicast, reserved (streams.candidates.DEFAULT_DENIED_PEERS); "
        "loopback candidates are checked only for clients on loopback",
    )
    ice_dead_peer_timeout_s: float = Field(
        30.0, ge=3, le=300, description="a peer that stops answering ICE consent checks is dropped after this"
    )

    # --- built-in streams ---
    builtin_streams: Annotated[list[Literal["video", "generate", "chat"]], NoDecode] = Field(
        default_factory=lambda: ["video", "generate", "chat"],
        description="comma-separated built-ins to serve (and load models for); empty: only --streams",
    )

    # --- limits ---
    video_concurrency_limit: int = Field(8, ge=1)
    video_time_limit_s: float | None = Field(None, gt=0)
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    max_sessions: int | None = Field(None, ge=1, description="all streams and transports together")
    max_pending_offers: int = Field(32, ge=1, description="answered offers whose peer has not connected")
    max_pending_offers_per_client: int = Field(
        4, ge=1, description="of those, from one client address (one address cannot squat every slot)"
    )
    pending_offer_timeout_s: float = Field(20.0, ge=2, le=300, description="then the offer is dropped")
    offer_rate_per_minute: float = Field(30.0, gt=0, description="new sessions per client address")
    offer_rate_burst: int = Field(10, ge=1)
    forwarded_allow_ips: str | None = Field(
        None,
        description="comma-separated proxy addresses whose X-Forwarded-For is believed (rate limits per "
        "real client); unset: none, so no client can pick its own rate-limit key",
    )
    shutdown_grace_s: float = Field(5.0, ge=0, le=120, description="SIGTERM: time to tell clients and close")

    # --- access ---
    instance_id: str = Field(
        default_factory=lambda: secrets.token_hex(3),
        pattern=r"^[a-z0-9-]{1,32}$",
        description="names this process in the session ids it issues (a proxy routes by it)",
    )
    auth_token: str | None = Field(
        None,
        min_length=24,
        description="when set, every session route needs it; 24 characters at least, e.g. "
        "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`",
    )
    session_token_ttl_s: float = Field(3600.0, ge=30, le=86_400)
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated browser origins; empty: any"
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated names browsers may use for this server (DNS-rebinding guard); "
        "empty: the hosts of ALLOWED_ORIGINS, IP addresses and localhost; * for any",
    )

    # --- video stream ---
    video_default_filter: str = "none"
    video_default_detect: bool = False
    video_default_conf_threshold: float = Field(0.35, ge=0.0, le=1.0)
    video_max_pixels: int = Field(
        1920 * 1080,
        ge=64 * 64,
        description="incoming frames above this many pixels are downscaled before any handler",
    )
    video_report_hz: float = Field(5.0, gt=0, le=30)
    video_min_bitrate_kbps: int = Field(
        500, ge=30, le=20_000, description="Chrome's sending floor (answer SDP)"
    )
    video_max_bitrate_kbps: int = Field(2500, ge=30, le=50_000)

    # --- generate stream ---
    generate_concurrency_limit: int = Field(8, ge=1)
    generate_time_limit_s: float | None = Field(None, gt=0)
    generate_default_fps: float | None = Field(None, ge=1, le=60, description="None: the source's own rate")
    generate_default_source: str = "pattern"
    generate_pattern_fps: float = Field(30.0, ge=1, le=60)
    generate_video_path: str | None = Field(
        None,
        max_length=2048,
        description="video behind source=file: a path, or a URL (http, https, rtsp, rtmp, HLS) kept as "
        "written; None: a rendered clip",
    )

    # --- server-side video sources for /video (upload, URL, media folder) ---
    media_url_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated shell patterns a session's source URL must match, e.g. "
        "rtsp://cams.example.com/*; empty: no URL sources (the server cannot be pointed anywhere)",
    )
    media_dir: Path | None = Field(
        None, description="folder whose video files sessions may play (listed at GET /video/media)"
    )
    upload_max_bytes: int = Field(
        200 * 1024 * 1024, ge=1024, description="largest video a session may upload (POST /video/upload)"
    )
    uploads: bool = Field(True, description="allow POST /video/upload (a session's own video file)")

    # --- tracking and recording ---
    video_tracking: bool = Field(
        True, description="carry detection boxes forward to the current frame between detector runs"
    )
    record: bool = Field(False, description="record every session (what the client sent, what it got)")
    record_dir: Path = Field(Path("recordings"), description="where recordings are written")
    record_max_bytes: int = Field(
        1024 * 1024 * 1024, ge=1024 * 1024, description="a session's recording stops at this size"
    )
    record_max_s: float = Field(3600.0, gt=0, description="a session's recording stops after this long")

    # --- chat stream ---
    chat_concurrency_limit: int = Field(8, ge=1)
    chat_time_limit_s: float | None = Field(None, gt=0)
    chat_default_mode: str = "echo"
    chat_silence_ms: float = Field(
        400, ge=96, le=5000, description="pause that ends a turn with CHAT_TURN_DETECTOR=vad"
    )
    chat_turn_detector: Literal["vad", "smart"] = Field(
        "vad",
        description="smart: Smart Turn judges each pause; vad: CHAT_SILENCE_MS of silence ends a turn",
    )
    chat_smart_pause_ms: float = Field(
        256, ge=32, le=5000, description="smart: silence after which the end-of-turn model is asked"
    )
    chat_max_silence_ms: float = Field(
        1600, ge=96, le=10_000, description="smart: silence that ends a turn whatever the model says"
    )
    chat_min_speech_ms: float = Field(250, ge=0, le=5000, description="shorter utterances are ignored")
    chat_interrupt_ms: float = Field(
        224, ge=32, le=5000, description="speech this long stops a reply (shorter: a cough, a click)"
    )
    chat_greeting: str = Field(
        "", max_length=500, description="spoken to every session on connect; empty: none"
    )
    chat_vad_threshold: float = Field(0.5, gt=0.15, lt=1.0)
    chat_max_utterance_s: float = Field(30, ge=1, le=300)

    llm_base_url: str | None = Field(
        None, description="OpenAI-compatible API, e.g. http://localhost:11434/v1"
    )
    llm_model: str = "gpt-4o-mini"
    llm_api_key: str | None = None
    llm_system_prompt: str = (
        "You are a voice assistant. Answer in one to three short spoken sentences, without markdown."
    )
    assistant_enabled: bool = Field(True, description="load speech-to-text and text-to-speech at start")
    stt_threads: int = Field(2, ge=1, le=16)
    twilio_auth_token: str | None = Field(
        None, description="when set, phone webhooks must carry a valid signature"
    )

    # --- detection ---
    detector_model_path: Path = DEFAULT_MODEL
    detector_threads: int = Field(0, ge=0, description="onnxruntime intra-op threads; 0 = auto")
    detector_use_gpu: bool = True
    detector_iou_threshold: float = Field(0.5, gt=0.0, le=1.0)

    @field_validator(
        "ice_host_addresses",
        "allowed_origins",
        "allowed_hosts",
        "turn_urls",
        "builtin_streams",
        "media_url_allow",
        mode="before",
    )
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("ice_denied_peers")
    @classmethod
    def _cidr_list(cls, value: str | None) -> str | None:
        for part in (value or "").split(","):
            if part.strip():
                ipaddress.ip_network(part.strip(), strict=False)  # ValueError names the bad range
        return value

    @model_validator(mode="after")  # a half-configured TURN fails at start, not at the first call
    def _turn_is_complete(self) -> Settings:
        problems = []
        if self.turn_provider == "cloudflare" and not (
            self.cloudflare_turn_key_id and self.cloudflare_turn_api_token
        ):
            problems.append(
                "TURN_PROVIDER=cloudflare needs CLOUDFLARE_TURN_KEY_ID and CLOUDFLARE_TURN_API_TOKEN"
            )
        if self.turn_provider == "twilio" and not (self.twilio_account_sid and self.twilio_auth_token):
            problems.append("TURN_PROVIDER=twilio needs TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN")
        if (self.turn_username or self.turn_shared_secret) and not self.turn_urls:
            problems.append("TURN credentials are set but TURN_URLS is empty")
        if self.turn_username and self.turn_credential is None:
            problems.append("TURN_USERNAME needs TURN_CREDENTIAL")
        if problems:
            raise ValueError("; ".join(problems))
        return self
