"""A video jitter buffer that releases a frame as soon as its last packet arrives.

aiortc's `JitterBuffer` releases a video frame only when a packet of the *next* frame arrives, so
every received frame waits one whole frame interval (33 ms at 30 fps, 200 ms at 5 fps) before it
is even decoded. The RTP marker bit flags the last packet of a video frame (VP8: RFC 7741 §4.1,
H.264: RFC 6184 §5.1); a contiguous run of packets ending in it is a complete frame.
"""

from __future__ import annotations

import logging

from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer, JitterFrame

logger = logging.getLogger(__name__)

_PRIVATE_ATTR = "_RTCRtpReceiver__jitter_buffer"


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


def use_marker_jitter_buffers(pc: RTCPeerConnection) -> int:
    """Swap the buffer of every video receiver of `pc` (call before media flows). Returns how many."""
    swapped = 0
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        if transceiver.kind != "video" or not hasattr(receiver, _PRIVATE_ATTR):
            continue
        old = getattr(receiver, _PRIVATE_ATTR)
        if type(old) is JitterBuffer:
            setattr(receiver, _PRIVATE_ATTR, MarkerJitterBuffer(capacity=old.capacity, is_video=True))
            swapped += 1
    if not swapped and any(t.kind == "video" for t in pc.getTransceivers()):
        logger.warning("aiortc's receiver layout changed: low-latency jitter buffer not installed")
    return swapped
