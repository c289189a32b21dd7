"""SIGTERM: every client is told the server is going away, every session closes, the process exits
promptly (stock uvicorn + fastrtc waits forever on open event streams and cuts clients off silently)."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx

from tests.rtc_client import VideoClient
from tests.server_process import ServerProcess
from tests.ws_client import AudioSocketClient


async def test_sigterm_tells_every_client_and_exits_within_the_grace_period():
    server = ServerProcess(
        env={"ASSISTANT_ENABLED": "false", "SHUTDOWN_GRACE_S": "5"}, log_name="shutdown-server"
    ).start()
    video = VideoClient(server.base_url, width=320, height=240)
    outputs: list[str] = []

    async def read_outputs() -> None:
        url = f"{server.base_url}/video/outputs?webrtc_id={video.webrtc_id}"
        async with httpx.AsyncClient(timeout=30) as http, http.stream("GET", url) as resp:
            async for line in resp.aiter_lines():
                outputs.append(line)

    try:
        await video.connect()
        await video.wait_frames(5)
        reader = asyncio.create_task(read_outputs())
        async with AudioSocketClient(server.base_url.replace("http", "ws") + "/chat/websocket/offer") as chat:
            await chat.start()
            await chat.speak(None, seconds_of_silence=0.3)
            assert server.proc is not None
            sent = time.monotonic()
            server.signal(signal.SIGTERM)
            code = await asyncio.to_thread(server.proc.wait, 15)
            took = time.monotonic() - sent
            print(f"\nserver exited {took:.2f} s after SIGTERM with code {code}")
            assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
            assert took < 10
            assert await chat.closed() == 1012  # "service restart"
            errors = [m for _, m in chat.events if m.get("event") == "error"]
            assert errors and errors[-1]["meta"]["error"] == "server_shutdown", chat.events
        await asyncio.wait_for(reader, 5)
        ends = [m for m in video.messages if m.get("type") == "end_stream"]
        assert ends and ends[0]["reason"] == "server_shutdown", video.messages
        assert any('"server_shutdown"' in line for line in outputs), outputs
        assert "event: end" in outputs
        log = server.log()
        assert "shutting down" in log and "Traceback" not in log
    finally:
        await video.close()
        server.stop()
