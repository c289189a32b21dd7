"""Sessions in a process of their own, for a test to kill without goodbye:
`python -m tests.soak_client URL VIDEO CHAT SOCKETS` prints `ready` once all of them carry media."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from tests.audio_client import ChatClient
from tests.rtc_client import VideoClient
from tests.ws_client import AudioSocketClient


async def open_video(url: str) -> VideoClient:
    client = VideoClient(url, width=320, height=240, fps=10)
    await client.connect()
    await client.wait_frames(3)
    return client


async def open_chat(url: str) -> ChatClient:
    client = ChatClient(url)
    await client.connect()
    return client


async def open_socket(url: str) -> AudioSocketClient:
    client = AudioSocketClient(url.replace("http", "ws") + "/chat/websocket/offer")
    await client.__aenter__()
    await client.start()
    await client.speak(None, seconds_of_silence=0.2)
    return client


async def main(url: str, videos: int, chats: int, sockets: int) -> None:
    opening: list[Any] = [
        *(open_video(url) for _ in range(videos)),
        *(open_chat(url) for _ in range(chats)),
        *(open_socket(url) for _ in range(sockets)),
    ]
    clients = await asyncio.gather(*opening)
    print("ready", len(clients), flush=True)
    await asyncio.sleep(3600)  # until killed


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], *(int(a) for a in sys.argv[2:5])))
