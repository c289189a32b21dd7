"""fastrtc's WebSocket audio protocol against `/chat`: speak, then hear the reply at your own rate.

    python examples/websocket_client.py --server http://127.0.0.1:8000 --rate 48000 [speech.wav]

Needs `pip install websockets numpy` (and Python ≤ 3.12 for the standard library's `audioop`).
Sends a WAV file (any rate, mono or stereo; without one, a buzzing synthetic voice) as 20 ms
μ-law messages in real time, then silence while the reply comes back. The server resamples both
ways to the rates stated in `start`. Prints the handler's messages and how much audio came back at
what rate, then stops; exits 1 unless audio came back and the socket closed normally (1000).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import time
import uuid
import warnings
import wave
from dataclasses import dataclass, field

import numpy as np
import websockets

with warnings.catch_warnings():  # deprecated in 3.11, still the shortest μ-law codec there is
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop


def synthetic_voice(seconds: float, rate: int) -> bytes:
    """A buzzing voice saying "ah-ee-ah-ee" (enough like speech for the voice detector), int16 PCM."""
    t = np.arange(int(seconds * rate)) / rate
    pitch = 120 + 25 * np.sin(2 * np.pi * 1.5 * t)
    ee = np.floor(t * 4) % 2 == 1  # four syllables a second
    f1, f2 = np.where(ee, 300, 750), np.where(ee, 2300, 1200)  # the two vowels' formants
    out = np.zeros_like(t)
    for k in range(1, 40):
        gain = 1 / (1 + ((k * pitch - f1) / 90) ** 2) + 0.6 / (1 + ((k * pitch - f2) / 120) ** 2)
        out += gain * np.sin(2 * np.pi * k * np.cumsum(pitch) / rate) / k**0.5
    out *= 0.5 - 0.5 * np.cos(2 * np.pi * 4 * t)
    return (0.3 * 32767 * out / np.abs(out).max()).astype(np.int16).tobytes()


def read_wav(path: str, rate: int) -> bytes:
    """A WAV file as mono int16 PCM at `rate`."""
    with wave.open(path, "rb") as w:
        pcm, width = w.readframes(w.getnframes()), w.getsampwidth()
        if width == 1:
            pcm = audioop.bias(pcm, 1, -128)  # 8-bit WAV is unsigned
        if w.getnchannels() == 2:
            pcm = audioop.tomono(pcm, width, 0.5, 0.5)
        pcm = audioop.lin2lin(pcm, width, 2)
        return audioop.ratecv(pcm, 2, 1, w.getframerate(), rate, None)[0]


@dataclass
class Reply:
    sizes: list[int] = field(default_factory=list)  # samples in each media message (1 byte each)
    last: float = 0.0  # when the last one arrived


async def read_replies(ws: websockets.ClientConnection, reply: Reply) -> None:
    """Media messages are counted; everything else is printed as it comes."""
    try:
        async for raw in ws:
            message = json.loads(raw)
            if message.get("event") == "media":
                reply.sizes.append(len(base64.b64decode(message["media"]["payload"])))
                reply.last = time.monotonic()
            else:
                print(f"server: {json.dumps(message)}")
    except websockets.ConnectionClosed:
        pass


async def main(server: str, token: str | None, rate: int, wav: str | None) -> int:
    url = server.replace("http", "ws", 1) + "/chat/websocket/offer"
    speech = read_wav(wav, rate) if wav else synthetic_voice(1.6, rate)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    print(f"saying {len(speech) / 2 / rate:.2f} s of {wav or 'synthetic voice'} at {rate} Hz")
    reply = Reply()
    async with websockets.connect(url, additional_headers=headers) as ws:
        session = f"ws-example-{uuid.uuid4().hex[:12]}"
        await ws.send(json.dumps({"event": "start", "websocket_id": session,
                                  "input_sample_rate": rate, "output_sample_rate": rate}))  # fmt: skip
        reader = asyncio.create_task(read_replies(ws, reply))
        step = 2 * rate // 50  # 20 ms of int16 samples, in bytes
        audio = bytes(15 * step) + speech  # 0.3 s of silence, then the speech
        start, n = time.monotonic(), 0
        try:  # in real time: the audio, then silence until the reply has been quiet for 1 s (15 s at most)
            while n * step < len(audio) or (
                n < 15 * 50 and (not reply.sizes or time.monotonic() - reply.last < 1)
            ):
                chunk = audio[n * step : (n + 1) * step].ljust(step, b"\0")
                payload = base64.b64encode(audioop.lin2ulaw(chunk, 2)).decode()
                await ws.send(json.dumps({"event": "media", "media": {"payload": payload}}))
                n += 1
                await asyncio.sleep(max(0.0, start + n * 0.02 - time.monotonic()))
            await ws.send(json.dumps({"event": "stop"}))
        except websockets.ConnectionClosed:
            pass  # the server ended the session; its error event (printed) says why
        await reader  # until the server closes
    if reply.sizes:
        per_message = statistics.median(reply.sizes)
        print(f"audio back: {sum(reply.sizes) / per_message / 50:.2f} s in {len(reply.sizes)} media messages of "
              f"{per_message:.0f} samples = {per_message * 50:.0f} Hz (asked for {rate} Hz)")  # fmt: skip
    else:
        hint = " (the voice detector wants speech: try a WAV)" if ws.close_code == 1000 else ""
        print(f"audio back: none{hint}")
    print(f"closed: {ws.close_code} {ws.close_reason}")
    return 0 if reply.sizes and ws.close_code == 1000 else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("wav", nargs="?", help="a WAV file to say (default: a synthetic voice)")
    parser.add_argument("--server", default="http://127.0.0.1:8000", help="the server's base URL")
    parser.add_argument("--token", help="the server's AUTH_TOKEN, if it has one")
    parser.add_argument("--rate", type=int, default=48_000, help="sample rate both ways, 8000-48000 Hz")
    args = parser.parse_args()
    raise SystemExit(asyncio.run(main(args.server.rstrip("/"), args.token, args.rate, args.wav)))
