"""Opus DTX on /chat: the answer asks browsers for it, the silence a DTX sender skips is made up
(bounded against made-up timestamps), and digital silence costs no VAD inference."""

from __future__ import annotations

import asyncio
import shutil

import numpy as np
import pytest

from streams.media import DtxGaps
from streams.sdp import ask_for_opus_dtx
from streams.vad import WINDOW, SileroVAD
from tests.audio_client import ChatClient, DtxTrack, speech
from tests.server_process import ServerProcess
from tests.test_chat_rtc import wait_until

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

# aiortc's answer to a browser-like offer (trimmed): Opus without an fmtp line, then a data channel.
AIORTC_ANSWER = "\r\n".join(
    [
        "v=0",
        "o=- 4005080511 4005080511 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "m=audio 41259 UDP/TLS/RTP/SAVPF 96 9 0 8",
        "c=IN IP4 127.0.0.1",
        "a=sendrecv",
        "a=mid:0",
        "a=rtpmap:96 opus/48000/2",
        "a=rtpmap:9 G722/8000",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=setup:active",
        "m=application 41259 UDP/DTLS/SCTP webrtc-datachannel",
        "a=mid:1",
        "a=sctp-port:5000",
        "",
    ]
)


def fmtp(sdp: str, pt: str) -> list[str]:
    return [line for line in sdp.splitlines() if line.startswith(f"a=fmtp:{pt} ")]


def opus_payload_types(sdp: str) -> list[str]:
    return [
        line.split()[0].split(":")[1] for line in sdp.splitlines() if line.lower().endswith(" opus/48000/2")
    ]


# ---- the SDP edit ----


def test_opus_without_fmtp_gets_a_usedtx_line_after_its_rtpmap() -> None:
    out = ask_for_opus_dtx(AIORTC_ANSWER)
    lines = out.split("\r\n")
    assert lines[lines.index("a=rtpmap:96 opus/48000/2") + 1] == "a=fmtp:96 usedtx=1"
    assert out.replace("a=fmtp:96 usedtx=1\r\n", "") == AIORTC_ANSWER, "nothing else changes"


def test_existing_opus_parameters_are_kept_and_usedtx_is_never_repeated() -> None:
    sdp = AIORTC_ANSWER.replace(
        "a=rtpmap:96 opus/48000/2", "a=rtpmap:96 opus/48000/2\r\na=fmtp:96 minptime=10;useinbandfec=1"
    )
    out = ask_for_opus_dtx(sdp)
    assert fmtp(out, "96") == ["a=fmtp:96 minptime=10;useinbandfec=1;usedtx=1"]
    assert ask_for_opus_dtx(out) == out
    off = sdp.replace("useinbandfec=1", "usedtx=0; useinbandfec=1")
    assert fmtp(ask_for_opus_dtx(off), "96") == ["a=fmtp:96 minptime=10;usedtx=1;useinbandfec=1"]


def test_every_opus_payload_type_of_every_audio_section_and_nothing_else() -> None:
    sdp = "\n".join(
        [
            "v=0",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 0",
            "a=rtpmap:111 opus/48000/2",
            "a=rtpmap:63 OPUS/48000/2",
            "a=fmtp:63 useinbandfec=1",
            "a=rtpmap:0 PCMU/8000",
            "m=audio 9 UDP/TLS/RTP/SAVPF 0",
            "a=rtpmap:0 PCMU/8000",
            "m=video 9 UDP/TLS/RTP/SAVPF 96",
            "a=rtpmap:96 VP8/90000",
            "a=fmtp:96 max-fr=30",
            "",
        ]
    )
    out = ask_for_opus_dtx(sdp)
    assert "\r" not in out, "the line endings are kept"
    assert fmtp(out, "111") == ["a=fmtp:111 usedtx=1"]
    assert fmtp(out, "63") == ["a=fmtp:63 useinbandfec=1;usedtx=1"]
    assert fmtp(out, "0") == [] and fmtp(out, "96") == ["a=fmtp:96 max-fr=30"]
    assert out.count("usedtx") == 2


def test_an_sdp_without_audio_is_returned_as_it_is() -> None:
    video = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n"
    assert ask_for_opus_dtx(video) == video


# ---- the gap filler ----


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def feed(gaps: DtxGaps, clock: Clock, pts_s: float, wall_step_s: float, duration_s: float = 0.02) -> float:
    clock.now += wall_step_s
    return gaps.silence_before(pts_s, duration_s)


def test_dtx_gaps_are_filled_with_the_silence_the_sender_skipped() -> None:
    clock = Clock()
    gaps = DtxGaps(clock=clock)
    fills = [feed(gaps, clock, i * 0.02, 0.02) for i in range(50)]  # one second of ordinary frames
    assert fills == [0.0] * 50
    pts = 0.98  # the last ordinary frame
    for _ in range(10):  # DTX: 20 ms every 400 ms
        pts += 0.4
        assert feed(gaps, clock, pts, 0.4) == pytest.approx(0.38)
    assert gaps.filled_s == pytest.approx(3.8)
    assert feed(gaps, clock, pts + 0.02 + 0.025, 0.02) == 0.0, "25 ms late is jitter, not a gap"


def test_a_gap_is_filled_with_no_more_than_the_wall_clock_since_the_previous_frame() -> None:
    clock = Clock()
    gaps = DtxGaps(clock=clock)
    feed(gaps, clock, 0.0, 0.0)
    assert feed(gaps, clock, 0.02, 10.0) == 0.0, "10 s without packets, timestamps unbroken"
    assert feed(gaps, clock, 5.0, 0.05) == pytest.approx(0.15), "50 ms of wall clock + 100 ms of slack"


def test_a_gap_is_filled_with_at_most_two_seconds() -> None:
    clock = Clock()
    gaps = DtxGaps(clock=clock)
    feed(gaps, clock, 0.0, 0.0)
    assert feed(gaps, clock, 10.0, 10.0) == 2.0
    assert feed(gaps, clock, 24 * 3600.0, 30.0) == 2.0, "aiortc reads a step back as a wrap-around"


def test_a_step_backwards_fills_nothing_and_resyncs() -> None:
    clock = Clock()
    gaps = DtxGaps(clock=clock)
    for i in range(5):
        feed(gaps, clock, 10.0 + i * 0.02, 0.02)
    assert feed(gaps, clock, 3.0, 0.02) == 0.0
    assert feed(gaps, clock, 3.02, 0.02) == 0.0, "the stream goes on from the new position"
    assert feed(gaps, clock, 3.42, 0.4) == pytest.approx(0.38)
    assert gaps.silence_before(None, 0.02) == 0.0, "no timestamp: nothing to fill"


def test_made_up_timestamps_get_no_more_silence_than_real_time() -> None:
    """2.5 ms frames, each claiming a 100 ms gap, as fast as `admit` lets them through."""
    clock = Clock()
    gaps = DtxGaps(clock=clock)
    for i in range(4000):  # 10 s of wall clock
        feed(gaps, clock, i * 0.1025, 0.0025, duration_s=0.0025)
    assert gaps.filled_s < 0.01 * 10 + 0.1 + 1e-9, f"{gaps.filled_s:.2f} s of silence in 10 s"


def test_a_sender_whose_clock_runs_fast_still_gets_its_gaps_filled() -> None:
    """1% fast (real clocks: 0.01%): an hour of its audio is 36 s more than an hour of ours."""
    clock = Clock()
    gaps = DtxGaps(clock=clock)
    for i in range(10_000):
        feed(gaps, clock, i * 0.0202, 0.02, duration_s=0.0202)
    assert feed(gaps, clock, 10_000 * 0.0202 + 0.38, 0.4) == pytest.approx(0.38)


def talk(gaps: DtxGaps, clock: Clock, start_s: float = 0.0, frames: int = 25) -> float:
    """`frames` audible, in-sequence 20 ms frames in real time from `start_s`; where the next starts."""
    for i in range(frames):
        clock.now += 0.02
        assert gaps.silence_before(start_s + i * 0.02, 0.02, audible=True) == 0.0
    return start_s + frames * 0.02


def prefill_until(gaps: DtxGaps, clock: Clock, until: float) -> list[float]:
    """What the pump would pre-fill while no frame comes until wall clock `until`."""
    fills = []
    # a pre-fill due just as the frame is (float rounding) is left out: the frame comes first
    while (wait := gaps.prefill_in()) is not None and clock.now + wait < until - 1e-6:
        clock.now += wait
        fills.append(gaps.prefill())
    clock.now = until
    return fills


def test_a_pause_is_pre_filled_on_the_wall_clock_and_the_gap_gets_only_the_rest() -> None:
    clock = Clock()
    gaps = DtxGaps(clock=clock)
    pts = talk(gaps, clock)
    last_at = clock.now
    assert gaps.prefill_in() == pytest.approx(0.06), "three frames late: a pause, not jitter"
    fills = prefill_until(gaps, clock, last_at + 0.4)  # the DTX packet comes 400 ms on
    assert fills[0] == pytest.approx(0.04), "60 ms since the frame came: 40 ms since it ended"
    assert fills[1:] == pytest.approx([0.02] * (len(fills) - 1)), "then 20 ms every 20 ms"
    assert sum(fills) == pytest.approx(0.36)
    rest = gaps.silence_before(pts + 0.38, 0.02)  # its timestamp: 380 ms of silence were skipped
    assert rest == pytest.approx(0.02)
    assert sum(fills) + rest == pytest.approx(0.38), "the silence once, not twice"
    assert gaps.filled_s == pytest.approx(0.38)


def test_a_long_pause_is_pre_filled_packet_after_packet_and_adds_up_to_the_gaps() -> None:
    clock = Clock()
    gaps = DtxGaps(clock=clock)
    pts = talk(gaps, clock) - 0.02
    for _ in range(5):  # DTX: 20 ms every 400 ms, for 2 s
        pts += 0.4
        prefill_until(gaps, clock, clock.now + 0.4)
        gaps.silence_before(pts, 0.02)
    assert gaps.filled_s == pytest.approx(5 * 0.38)


def test_a_gap_smaller_than_the_pre_fill_adds_nothing_more() -> None:
    """The packet came 100 ms late (network): what was pre-filled stays, the gap adds nothing."""
    clock = Clock()
    gaps = DtxGaps(clock=clock)
    pts = talk(gaps, clock)
    fills = prefill_until(gaps, clock, clock.now + 0.5)
    assert sum(fills) == pytest.approx(0.46)
    assert gaps.silence_before(pts + 0.38, 0.02) == 0.0, "never negative"
    assert gaps.filled_s == pytest.approx(0.46), "80 ms extra: at most the lateness"


def test_a_continuous_sender_that_stalls_gets_at_most_the_stall_extra() -> None:
    """200 ms without packets mid-speech, then the late ones at once: the zeros were extra."""
    clock = Clock()
    gaps = DtxGaps(clock=clock)
    pts = talk(gaps, clock)
    fills = prefill_until(gaps, clock, clock.now + 0.2)
    for i in range(10):  # the late frames, no gap in their timestamps
        assert gaps.silence_before(pts + i * 0.02, 0.02, audible=True) == 0.0
    assert sum(fills) == pytest.approx(0.16), "to the last tick (180 ms), less the frame"
    assert gaps.prefill_in() == pytest.approx(0.06), "armed again from the newest frame"


def test_ordinary_jitter_pre_fills_nothing() -> None:
    clock = Clock()
    gaps = DtxGaps(clock=clock)
    pts = talk(gaps, clock)
    for i in range(51):  # 20 ms frames arriving up to 50 ms apart (a burst after each late one)
        clock.now += 0.05 if i % 3 == 0 else 0.005
        assert gaps.prefill_in() > 0.0
        assert gaps.silence_before(pts + i * 0.02, 0.02, audible=True) == 0.0
    assert gaps.filled_s == 0.0


def test_pre_fill_waits_for_sound_and_stops_soon_after_it() -> None:
    clock = Clock()
    gaps = DtxGaps(clock=clock, max_gap_s=10.0)
    for i in range(10):  # digital silence in sequence, then DTX packets of comfort noise
        feed(gaps, clock, i * 0.02, 0.02)
    for i in range(5):
        clock.now += 0.4
        gaps.silence_before(0.58 + i * 0.4, 0.02, audible=True)
    assert gaps.prefill_in() is None, "no sound yet: an idle DTX session does not wake up"
    talk(gaps, clock, start_s=2.2, frames=1)  # sound, in sequence
    spoke_at, before = clock.now, gaps.filled_s
    fills = prefill_until(gaps, clock, spoke_at + 5.0)
    assert gaps.prefill_in() is None
    assert len(fills) == pytest.approx((2.5 - 0.06) / 0.02 + 1, abs=1), "every 20 ms for 2.5 s"
    assert gaps.filled_s - before == pytest.approx(2.5 - 0.02)


def test_a_pause_is_pre_filled_with_at_most_two_seconds() -> None:
    clock = Clock()
    gaps = DtxGaps(clock=clock)
    talk(gaps, clock)
    fills = prefill_until(gaps, clock, clock.now + 5.0)
    assert sum(fills) == pytest.approx(2.0)
    assert gaps.prefill_in() is None, "and then it stops waking"


def test_pre_fill_keeps_within_the_wall_clock_and_the_lead() -> None:
    """Pre-fill calls at the same instant, or after a flood that is ahead of the wall clock: nothing."""
    clock = Clock()
    gaps = DtxGaps(clock=clock)
    pts = talk(gaps, clock)
    clock.now += 0.06
    assert gaps.prefill() == pytest.approx(0.04)
    assert gaps.prefill() == 0.0, "no time has passed"
    for i in range(20):  # 400 ms of audio in 40 ms: 300 ms ahead of the wall clock
        clock.now += 0.002
        gaps.silence_before(pts + i * 0.02, 0.02, audible=True)
    clock.now += 0.1
    assert gaps.prefill() == 0.0, "ahead of the wall clock already"


# ---- digital silence and the VAD ----


@pytest.fixture(scope="module")
def counted_vad() -> tuple[SileroVAD, list[int]]:
    vad = SileroVAD()
    calls = [0]
    run = vad.session.run

    def counting_run(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        return run(*args, **kwargs)

    vad.session.run = counting_run  # type: ignore[method-assign]
    return vad, calls


def test_digital_silence_is_no_speech_without_running_the_model(counted_vad) -> None:
    vad, calls = counted_vad
    stream = vad.stream()
    before = calls[0]
    assert stream.probability(np.zeros(WINDOW, np.float32)) == 0.0
    near_zero = np.full(WINDOW, 3 / 32768, np.float32)  # int16 +-3: dither, comfort noise at its lowest
    near_zero[::2] *= -1
    assert stream.probability(near_zero) == 0.0
    assert calls[0] == before, "no inference on digital silence"
    assert np.array_equal(stream.context[0], near_zero[-64:]), "the context moves on"
    stream.probability(np.linspace(-0.01, 0.01, WINDOW, dtype=np.float32))
    assert calls[0] == before + 1, "quiet but not silent: the model decides"


def test_warmup_still_runs_the_model(counted_vad) -> None:
    vad, calls = counted_vad
    before = calls[0]
    vad.warmup()
    assert calls[0] == before + 4


# ---- over the real protocol ----


async def test_the_answer_sdp_asks_the_browser_for_opus_dtx(server: ServerProcess) -> None:
    client = ChatClient(server.base_url)
    await client.connect()
    try:
        sdp = client.answer["sdp"]
        opus = opus_payload_types(sdp)
        assert opus, "the answer has no Opus"
        for pt in opus:
            assert fmtp(sdp, pt) == [f"a=fmtp:{pt} usedtx=1"], sdp
    finally:
        await client.close()


async def echo_delay_ms(server: ServerProcess, clip: np.ndarray, dtx: bool) -> float:
    """End of speech -> first echo, for a mic that sends continuously or as a DTX browser does."""
    client = ChatClient(server.base_url, dtx=dtx)
    await client.connect()
    try:
        _, ended = await client.mic.say(clip)
        sent_at_end = client.mic.sent if isinstance(client.mic, DtxTrack) else 0
        assert await wait_until(lambda: client.reply_audio(ended), 4), "no echo within 4 s"
        if isinstance(client.mic, DtxTrack):
            assert client.mic.sent - sent_at_end < 20, "the mic was not in DTX after the speech"
        assert len(client.logs("started_talking")) == 1
        return (client.reply_audio(ended)[0] - ended) * 1000
    finally:
        await client.close()


@pytest.mark.serial
@needs_espeak
async def test_a_dtx_senders_pause_ends_the_turn_on_time(server: ServerProcess) -> None:
    """Unfilled, the 400 ms pause would arrive as 20 ms of audio per 400 ms: ~8 s to end the turn;
    filled only as packets come, ~200 ms late (libopus sends the next one 600 ms after the speech).
    Pre-filled on the wall clock, it ends as a continuous sender's does (+~40 ms: the pause is
    noticed 60 ms after the last frame)."""
    clip = speech("Please remind me to call my sister tonight.")
    continuous = await echo_delay_ms(server, clip, dtx=False)
    dtx = await echo_delay_ms(server, clip, dtx=True)
    print(f"\nend of speech -> first echo: continuous {continuous:.0f} ms, DTX {dtx:.0f} ms")
    assert dtx - continuous < 100, f"DTX {dtx:.0f} ms against {continuous:.0f} ms continuous"


async def test_a_dtx_sender_silent_for_5_s_makes_no_turns_and_no_errors(server: ServerProcess) -> None:
    client = ChatClient(server.base_url, dtx=True)
    await client.connect()
    try:
        assert await wait_until(lambda: client.mic.in_dtx, 2), "200 ms after the start the mic is in DTX"
        sent = client.mic.sent
        await asyncio.sleep(5)
        assert client.mic.sent - sent <= 5 / 0.4 + 1, "one packet per 400 ms"
        assert client.pc.connectionState == "connected"
        assert client.logs("started_talking") == [] and client.logs("pause_detected") == []
        errors = [m for _, m in client.messages if m.get("type") == "error" or m.get("level") == "error"]
        assert errors == []
        assert client.reply_audio(0.0) == [], "nothing to echo"
    finally:
        await client.close()
