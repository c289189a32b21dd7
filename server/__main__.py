"""`python -m server --host 127.0.0.1 --port 8000`"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import sys

import uvicorn

from server.config import Settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m server", description="Real-time media server")
    parser.add_argument("--host", help="bind address (env HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (env PORT, default 8000)")
    parser.add_argument("--log-level", help="debug, info, warning, error (env LOG_LEVEL)")
    parser.add_argument(
        "--phone",
        action="store_true",
        help="serve /chat on a temporary phone number with fastrtc's fastphone (needs internet and HF_TOKEN)",
    )
    args = parser.parse_args(argv)
    if args.phone:
        token = phone_preflight()
    overrides = {k: v for k, v in vars(args).items() if v is not None and k != "phone"}
    settings = Settings(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from server.app import create_app

    app = create_app(settings)
    if args.phone:
        # fastrtc's own service: a Gradio share tunnel registered with api.fastrtc.org
        app.state.streams["chat"].fastphone(token=token, host=settings.host, port=settings.port)
        return
    print(f"Serving on http://{settings.host}:{settings.port}", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower())


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
    try:
        socket.getaddrinfo("api.fastrtc.org", 443)
    except OSError:
        sys.exit(
            "--phone needs the internet (api.fastrtc.org and Gradio's share servers), and this machine cannot "
            "reach it. For your own number, point a Twilio Voice webhook at POST /chat/telephone/incoming."
        )
    return token


if __name__ == "__main__":
    main()
