"""A client in its own process, so a test can kill it without goodbye: `python -m tests.client_proc URL KIND`."""

from __future__ import annotations

import asyncio
import sys

from tests.rtc_client import ReceiveClient, VideoClient


async def main(url: str, kind: str) -> None:
    if kind == "generate":
        client = ReceiveClient(url)
        await client.connect()
        while len(client.frames) < 10:
            await asyncio.sleep(0.05)
    else:
        client = VideoClient(url)
        await client.connect()
        await client.wait_frames(10)
    print("ready", flush=True)
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
