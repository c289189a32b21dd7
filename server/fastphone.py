"""`python -m server --phone`: fastrtc's fastphone (a temporary phone number) reaching the hardened /chat.

Stock `Stream.fastphone()` serves its own stock routes (no limits, tokens, time limit or outputs).
Here the server is this app, as `make run` serves it; fastphone's two network steps are done as
fastrtc does them: a Gradio share tunnel to the local port, then registering the tunnel's host with
the fastphone service, which gives a number and a code. The service reaches the stream at the
root paths stock fastrtc mounts (`/telephone/incoming`, `/telephone/handler`), so those are added
as aliases of `/chat`'s hardened phone routes.

Both network steps are `PhoneBoundary` methods, so a test replaces exactly them.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from server.routes import mount_root_phone_routes

REGISTRY_URLS = ("https://api.fastrtc.org", "https://fastrtc-fastphone.hf.space")


OFFLINE_MESSAGE = (
    "--phone needs the internet (api.fastrtc.org and Gradio's share servers), and this machine cannot "
    "reach it. For your own number, point a Twilio Voice webhook at POST /chat/telephone/incoming."
)


class PhoneUnavailable(Exception):
    """fastphone cannot run here; the message says what is missing."""


class PhoneBoundary:
    """The only places `--phone` touches the internet."""

    def reachable(self) -> bool:
        try:
            socket.getaddrinfo("api.fastrtc.org", 443)
        except OSError:
            return False
        return True

    def open_tunnel(self, host: str, port: int) -> str:
        """A public https URL forwarding to host:port (Gradio's share servers)."""
        import inspect

        from gradio.networking import setup_tunnel

        kwargs: dict[str, Any] = {"local_host": host, "local_port": port,
                                  "share_token": secrets.token_urlsafe(32), "share_server_address": None}  # fmt: skip
        if "share_server_tls_certificate" in inspect.signature(setup_tunnel).parameters:
            kwargs["share_server_tls_certificate"] = None
        return setup_tunnel(**kwargs)

    def register(self, public_host: str, token: str) -> httpx.Response:
        last: Exception | None = None
        for base in REGISTRY_URLS:
            try:
                response = httpx.post(f"{base}/register", json={"url": public_host},
                                      headers={"Authorization": token}, timeout=30)  # fmt: skip
                response.raise_for_status()
                return response
            except Exception as exc:
                last = exc
        raise PhoneUnavailable(f"the fastphone service refused or could not be reached ({last})")


boundary = PhoneBoundary()


@dataclass
class PhoneNumber:
    phone: str
    code: str
    minutes_left: float
    public_url: str


def serve_with_phone(app: FastAPI, token: str, host: str, port: int, **uvicorn_kwargs: Any) -> None:
    """Serve `app` (in this thread, so SIGTERM drains as usual); once it is up, tunnel to it and
    register the tunnel, then print the number to call. Any failure stops the server and raises."""
    mount_root_phone_routes(app)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, **uvicorn_kwargs))
    failure: list[str] = []

    def connect_phone() -> None:
        deadline = time.monotonic() + 120
        while not server.started:
            if server.should_exit or time.monotonic() > deadline:
                return
            time.sleep(0.05)
        try:
            number = register_number(host, port, token)
        except Exception as exc:
            failure.append(str(exc) if isinstance(exc, PhoneUnavailable) else f"{type(exc).__name__}: {exc}")
            server.should_exit = True
            return
        print(f"Call {number.phone} and enter code {number.code} to talk to /chat "
              f"({number.minutes_left:.0f} minutes left this month; tunnel {number.public_url})", flush=True)  # fmt: skip

    threading.Thread(target=connect_phone, name="fastphone", daemon=True).start()
    server.run()
    if failure:
        raise PhoneUnavailable(failure[0])


def register_number(host: str, port: int, token: str) -> PhoneNumber:
    url = boundary.open_tunnel(host, port)
    public_host = urllib.parse.urlparse(url).netloc
    response = boundary.register(public_host, token)
    if response.status_code == 202:
        raise PhoneUnavailable("your fastphone quota for this month is used up")
    data = response.json()
    return PhoneNumber(str(data["phone"]), str(data["code"]), float(data.get("time_remaining", 0)) / 60, url)
