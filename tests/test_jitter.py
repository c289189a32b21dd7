"""The marker-bit jitter buffer releases a frame on its last packet, not on the next frame's first."""

from __future__ import annotations

from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from streams.jitter import MarkerJitterBuffer


def packet(seq: int, ts: int, marker: bool, data: bytes) -> RtpPacket:
    p = RtpPacket(payload_type=96, sequence_number=seq, timestamp=ts, marker=int(marker), payload=data)
    p._data = data  # what aiortc's depayloader leaves on the packet
    return p


def feed(buffer: JitterBuffer, packets: list[RtpPacket]) -> list[bytes | None]:
    return [(f.data if (f := buffer.add(p)[1]) is not None else None) for p in packets]


def test_frame_is_released_on_its_marker_packet():
    frame1 = [packet(10, 1000, False, b"a"), packet(11, 1000, False, b"b"), packet(12, 1000, True, b"c")]
    frame2 = [packet(13, 4000, False, b"d"), packet(14, 4000, True, b"e")]
    assert feed(MarkerJitterBuffer(512, is_video=True), frame1 + frame2) == [None, None, b"abc", None, b"de"]
    # aiortc's own buffer waits for the next frame to begin: each frame is one interval late
    assert feed(JitterBuffer(512, is_video=True), frame1 + frame2) == [None, None, None, b"abc", None]


def test_a_gap_holds_the_frame_until_it_is_filled():
    buf = MarkerJitterBuffer(512, is_video=True)
    assert feed(buf, [packet(20, 1, False, b"x"), packet(22, 1, True, b"z")]) == [None, None]
    assert feed(buf, [packet(21, 1, False, b"y")]) == [b"xyz"]


def test_frames_without_markers_still_come_out_the_stock_way():
    buf = MarkerJitterBuffer(512, is_video=True)
    assert feed(buf, [packet(1, 1, False, b"p"), packet(2, 2, False, b"q")]) == [None, b"p"]
