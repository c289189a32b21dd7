"""`python -m server --host 127.0.0.1 --port 8000 [--streams my_app:stream]`"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import Any

import uvicorn
from pydantic import ValidationError

from server.config import Settings
from server.errors import describe_errors
from server.logs import uvicorn_log_config
from server.settings_help import describe_settings

# The largest WebSocket message accepted: a 20 ms media message is under 2 KB; start, about 1 KB.
WS_MAX_BYTES = 256 * 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="Real-time media server",
        epilog=describe_settings(),  # every setting, from the settings model itself
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", help="bind address (env HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (env PORT, default 8000)")
    parser.add_argument("--log-level", help="debug, info, warning, error (env LOG_LEVEL)")
    parser.add_argument(
        "--phone",
        action="store_true",
        help="serve /chat on a temporary phone number with fastrtc's fastphone (needs internet and HF_TOKEN)",
    )
    parser.add_argument(
        "--streams",
        action="append",
        default=[],
        metavar="MODULE:ATTR",
        help="also serve these streams.Stream objects (ATTR: a Stream or a list), imported from the "
        "working directory; each at /NAME/... (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.phone:
        token = phone_preflight()
    overrides = {k: v for k, v in vars(args).items() if v is not None and k not in ("phone", "streams")}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:  # one line per bad setting, no traceback
        sys.exit("error: bad settings: " + describe_errors(list(exc.errors())))
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from server.app import create_app
    from server.user_streams import StartupError, load_streams

    try:
        user_streams = [stream for spec in args.streams for stream in load_streams(spec)]
        app = create_app(settings, streams=user_streams)
    except StartupError as exc:
        sys.exit(f"error: {exc}")
    for stream in user_streams:
        print(
            f"Serving your stream {stream.name!r} ({stream.modality}, {stream.mode}) at /{stream.name}/",
            flush=True,
        )
    if args.phone:
        serve_on_phone(app, token, settings)
        return
    print(f"Serving on http://{settings.host}:{settings.port}", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, **uvicorn_options(settings))


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """What `python -m server` (and `--phone`) give uvicorn beyond host and port."""
    return {
        "log_level": settings.log_level.lower(),
        "log_config": uvicorn_log_config(),  # no tokens in the access log
        "ws_max_size": WS_MAX_BYTES,  # uvicorn's default is 16 MiB per message
        "ws_per_message_deflate": False,  # a small compressed frame must not inflate to megabytes
        # uvicorn alone would believe X-Forwarded-For from 127.0.0.1: any local client could then
        # pick its own rate-limit key
        "proxy_headers": settings.forwarded_allow_ips is not None,
        "forwarded_allow_ips": settings.forwarded_allow_ips or "",
    }


def serve_on_phone(app: Any, token: str, settings: Settings) -> None:
    """A temporary number (fastrtc's fastphone) that reaches the hardened /chat."""
    from server.fastphone import PhoneUnavailable, serve_with_phone

    try:
        serve_with_phone(app, token, settings.host, settings.port, **uvicorn_options(settings))
    except PhoneUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        os._exit(1)  # model-loading threads may still be inside native code: skip interpreter teardown


def phone_preflight() -> str:
    """fastphone needs a Hugging Face token and the internet; say so plainly instead of a traceback."""
    token = os.environ.get("HF_TOKEN")
    if not token:
        with contextlib.suppress(Exception):
            from huggingface_hub import get_token

            token = get_token()
    if not token:
        sys.exit(
            "--phone needs a Hugging Face token: set HF_TOKEN (fastphone gives 10 free minutes a month)."
        )
    from server.fastphone import OFFLINE_MESSAGE, boundary

    if not boundary.reachable():
        sys.exit(f"error: {OFFLINE_MESSAGE}")
    return token


if __name__ == "__main__":
    main()
