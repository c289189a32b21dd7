"""Jitter buffers that release media as soon as it is complete, not one frame later.

aiortc's `JitterBuffer` releases a video frame only when a packet of the *next* frame arrives, so
every received frame waits one whole frame interval (33 ms at 30 fps, 200 ms at 5 fps) before it
is even decoded. The RTP marker bit flags the last packet of a video frame (VP8: RFC 7741 §4.1,
H.264: RFC 6184 §5.1); a contiguous run of packets ending in it is a complete frame.

For audio aiortc prefetches 4 packets (80 ms of Opus) before releasing the first; on the networks
a server sees (and on loopback) that is 60 ms of turn-taking latency for nothing. Each Opus packet
is a whole frame: release it as soon as it is the next one in sequence.
"""

from __future__ import annotations

import logging

from aiortc.jitterbuffer import JitterBuffer, JitterFrame

logger = logging.getLogger(__name__)


class MarkerJitterBuffer(JitterBuffer):
    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        assert self._origin is not None
        timestamp = None
        for count in range(self.capacity):
            packet = self._packets[(self._origin + count) % self.capacity]
            if packet is None or (timestamp is not None and packet.timestamp != timestamp):
                break
            timestamp = packet.timestamp
            if packet.marker:
                packets = [self._packets[(self._origin + i) % self.capacity] for i in range(count + 1)]
                self.remove(count + 1)
                return JitterFrame(data=b"".join(p._data for p in packets), timestamp=timestamp)  # type: ignore[attr-defined]
        return super()._remove_frame(sequence_number)  # no marker yet: aiortc's own rule


class InOrderAudioJitterBuffer(JitterBuffer):
    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        assert self._origin is not None
        for skip in range(self.capacity):  # a late packet is useless to live audio: skip gaps
            packet = self._packets[(self._origin + skip) % self.capacity]
            if packet is not None:
                self.remove(skip + 1)
                return JitterFrame(data=packet._data, timestamp=packet.timestamp)  # type: ignore[attr-defined]
        return None


def __getattr__(name: str) -> object:
    """`use_low_latency_jitter_buffers` swaps aiortc's private buffer, so it lives in the adapter."""
    if name == "use_low_latency_jitter_buffers":
        from streams.fastrtc_adapter import use_low_latency_jitter_buffers

        return use_low_latency_jitter_buffers
    raise AttributeError(name)
