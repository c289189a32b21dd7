"""A phone call as Twilio makes it: the Voice webhook, then a Media Stream to `/chat`.

    python examples/twilio_simulator.py --server http://127.0.0.1:8000 --barge-in [speech.wav]

Needs `pip install httpx websockets numpy` (and Python ≤ 3.12 for the standard library's `audioop`).
POSTs `/chat/telephone/incoming` as Twilio does, connects to the `<Stream url>` of the TwiML it gets
(passing its `<Parameter>`s back in `start`), says the WAV (without one, a synthetic voice) as 8 kHz
μ-law, plays the reply in real time and echoes each `mark` once the audio before it has played, as
Twilio does. `--barge-in` talks over the reply and expects a `clear`. Exits 1 if the server sends
anything Twilio would reject (only `media`, `mark` and `clear`, each with this call's `streamSid`),
if no reply came, or if a barge-in got no `clear`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import time
import uuid
import warnings
import wave
import xml.etree.ElementTree as ET
from typing import Any

import httpx
import numpy as np
import websockets

with warnings.catch_warnings():  # deprecated in 3.11, still the shortest μ-law codec there is
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

RATE = 8000
FRAME = 2 * RATE // 50  # 20 ms of int16 samples, in bytes


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


class Call:
    """Twilio's end of one Media Stream: a microphone sending in real time, a speaker playing what
    the server sends, marks echoed when played, and a record of every message Twilio would reject."""

    def __init__(self, ws: websockets.ClientConnection, stream_sid: str) -> None:
        self.ws, self.sid = ws, stream_sid
        self.mic = bytearray()  # what the caller is about to say; silence when empty
        self.sent = 0
        self.playing_until = 0.0  # when the speaker will have played everything it was sent
        self.pending: dict[str, asyncio.TimerHandle] = {}  # marks waiting for their audio to play
        self.media_s, self.marks, self.clears = 0.0, 0, 0
        self.last_media = 0.0
        self.violations: list[str] = []

    async def send(self, event: str, **fields: Any) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):  # the server hung up: its close says why
            await self.ws.send(json.dumps({"event": event, "streamSid": self.sid, **fields}))

    async def talk(self) -> None:
        start = time.monotonic()
        while self.ws.close_code is None:
            chunk = bytes(self.mic[:FRAME]).ljust(FRAME, b"\0")
            del self.mic[:FRAME]
            payload = base64.b64encode(audioop.lin2ulaw(chunk, 2)).decode()
            media = {"track": "inbound", "chunk": str(self.sent + 1), "timestamp": str(self.sent * 20)}
            await self.send("media", sequenceNumber=str(self.sent + 2), media={**media, "payload": payload})
            self.sent += 1
            await asyncio.sleep(max(0.0, start + self.sent * 0.02 - time.monotonic()))

    async def listen(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            await self._listen()

    def twilio_accepts(self, message: dict[str, Any]) -> bool:
        """Twilio takes `media` (a payload), `mark` (a name) and `clear`, each with the call's streamSid."""
        if message.get("streamSid") != self.sid:
            return False
        if message.get("event") == "media":
            return isinstance((message.get("media") or {}).get("payload"), str)
        if message.get("event") == "mark":
            return isinstance((message.get("mark") or {}).get("name"), str)
        return message.get("event") == "clear"

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        async for raw in self.ws:
            message = json.loads(raw)
            event, now = message.get("event"), loop.time()
            if not self.twilio_accepts(message):
                self.violations.append(str(raw)[:200])
            elif event == "media":
                seconds = len(base64.b64decode(message["media"]["payload"])) / RATE
                self.playing_until = max(now, self.playing_until) + seconds
                self.media_s += seconds
                self.last_media = now
            elif event == "mark":  # echoed once the audio sent before it has played
                self.marks += 1
                name = message["mark"]["name"]
                self.pending[name] = loop.call_at(self.playing_until, self.played, name)
            elif event == "clear":  # the caller talked over the reply: drop it, return pending marks
                self.clears += 1
                print(f"clear received: {max(0.0, self.playing_until - now):.2f} s of buffered reply dropped")
                self.playing_until = now
                for name in list(self.pending):
                    self.pending.pop(name).cancel()
                    self.played(name)

    def played(self, name: str) -> None:
        self.pending.pop(name, None)
        asyncio.ensure_future(self.send("mark", mark={"name": name}))

    async def say(self, speech: bytes, reply_timeout: float = 10.0) -> bool:
        """Say `speech` in real time; True once reply audio arrives after it (False: none in time)."""
        loop = asyncio.get_running_loop()
        self.mic += speech
        while self.mic and self.ws.close_code is None:
            await asyncio.sleep(0.02)
        said, deadline = loop.time(), loop.time() + reply_timeout
        while self.last_media <= said and loop.time() < deadline and self.ws.close_code is None:
            await asyncio.sleep(0.02)
        return self.last_media > said

    async def quiet(self, timeout: float) -> None:
        """Wait until the reply has been played and nothing new came for a second."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline and self.ws.close_code is None:
            if not self.pending and loop.time() - max(self.last_media, self.playing_until) > 1:
                return
            await asyncio.sleep(0.05)


def twilio_signature(auth_token: str, url: str, form: dict[str, str]) -> str:
    """X-Twilio-Signature: HMAC-SHA1 of the URL followed by the form's keys and values, sorted by key."""
    signed = url + "".join(k + form[k] for k in sorted(form))
    return base64.b64encode(hmac.new(auth_token.encode(), signed.encode(), hashlib.sha1).digest()).decode()


async def main(server: str, wav: str | None, barge_in: bool, twilio_auth_token: str | None) -> int:
    call_sid = f"CA{uuid.uuid4().hex}"
    url, form = f"{server}/chat/telephone/incoming", {"CallSid": call_sid, "From": "+15550100"}
    headers = (
        {"X-Twilio-Signature": twilio_signature(twilio_auth_token, url, form)} if twilio_auth_token else {}
    )
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.post(url, data=form, headers=headers)
    if resp.status_code != 200:
        print(f"webhook refused: {resp.status_code} {resp.text}")
        return 1
    stream = ET.fromstring(resp.text).find("./Connect/Stream")
    assert stream is not None, f"no <Stream> in the TwiML: {resp.text}"
    parameters = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    print(f"TwiML: stream {stream.get('url')}, parameters {sorted(parameters)}")
    speech = read_wav(wav, RATE) if wav else synthetic_voice(1.6, RATE)

    stream_sid = f"MZ{uuid.uuid4().hex}"
    async with websockets.connect(stream.get("url", "")) as ws:
        call = Call(ws, stream_sid)
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        media_format = {"encoding": "audio/x-mulaw", "sampleRate": RATE, "channels": 1}
        start = {"streamSid": stream_sid, "callSid": call_sid, "tracks": ["inbound"],
                 "customParameters": parameters, "mediaFormat": media_format}  # fmt: skip
        await call.send("start", sequenceNumber="1", start=start)
        tasks = [asyncio.create_task(call.talk()), asyncio.create_task(call.listen())]
        replied = await call.say(bytes(FRAME * 15) + speech)  # 0.3 s of silence, then the speech
        print(f"reply: {'started' if replied else 'none within 10 s of the end of speech'}")
        if replied and barge_in:
            await asyncio.sleep(0.6)
            print("barging in: talking over the reply")
            answered = await call.say(speech)
            print(f"reply to the barge-in: {'started' if answered else 'none'}")
        await call.quiet(timeout=20)
        await call.send("stop", sequenceNumber=str(call.sent + 2), stop={"callSid": call_sid})
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(tasks[1], 5)  # until the server closes
        tasks[0].cancel()

    print(f"call over: {call.media_s:.2f} s of reply audio, {call.marks} marks echoed, {call.clears} clears, "
          f"closed {ws.close_code} {ws.close_reason}")  # fmt: skip
    print("violations: none" if not call.violations else "\n  ".join(["violations:", *call.violations]))
    problems = [] if replied else ["no reply audio"]
    problems += ["barge-in got no clear"] if barge_in and replied and not call.clears else []
    problems += [] if ws.close_code == 1000 else [f"the call ended with close code {ws.close_code}"]
    if problems:
        print("problems:", *problems, sep="\n  ")
    return 1 if problems or call.violations else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("wav", nargs="?", help="a WAV file to say (default: a synthetic voice)")
    parser.add_argument("--server", default="http://127.0.0.1:8000", help="the server's base URL")
    parser.add_argument("--barge-in", action="store_true", help="talk over the reply, expect a clear")
    parser.add_argument(
        "--twilio-auth-token", help="the server's TWILIO_AUTH_TOKEN: sign the webhook with it"
    )
    args = parser.parse_args()
    raise SystemExit(
        asyncio.run(main(args.server.rstrip("/"), args.wav, args.barge_in, args.twilio_auth_token))
    )
