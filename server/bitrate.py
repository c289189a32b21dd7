"""Keep a browser's sending quality: a bitrate floor in the SDP answer.

Chrome sending video to aiortc lowers its bitrate to ~30 kbps within ~15 s (320x240 at 9 fps):
aiortc's receive-side bandwidth estimate is poor. Chrome honours `x-google-min-bitrate`,
`x-google-start-bitrate` and `x-google-max-bitrate` (kbps) on a video codec's `a=fmtp` line in the
answer; with them it kept 640x480 at 20+ fps. Other browsers ignore the parameters.
"""

from __future__ import annotations

import re

VIDEO_CODECS = ("VP8", "VP9", "H264", "AV1")


def apply_bitrate_bounds(sdp: str, min_kbps: int, max_kbps: int) -> str:
    """Add the bounds to every video codec's fmtp line in `sdp` (adding the line when missing)."""
    start_kbps = max(min_kbps, min(max_kbps, 2 * min_kbps))
    params = (
        f"x-google-min-bitrate={min_kbps};x-google-start-bitrate={start_kbps};x-google-max-bitrate={max_kbps}"
    )
    lines = sdp.split("\r\n")
    payloads = {
        m.group(1)
        for line in lines
        if (m := re.match(r"a=rtpmap:(\d+) ([A-Za-z0-9]+)/", line)) and m.group(2).upper() in VIDEO_CODECS
    }
    has_fmtp = {m.group(1) for line in lines if (m := re.match(r"a=fmtp:(\d+) ", line))}
    out: list[str] = []
    for line in lines:
        fmtp = re.match(r"a=fmtp:(\d+) (.*)", line)
        if fmtp and fmtp.group(1) in payloads:
            rest = ";".join(p for p in fmtp.group(2).split(";") if not p.strip().startswith("x-google-"))
            line = f"a=fmtp:{fmtp.group(1)} {rest};{params}" if rest else f"a=fmtp:{fmtp.group(1)} {params}"
        out.append(line)
        rtpmap = re.match(r"a=rtpmap:(\d+) ", line)
        if rtpmap and rtpmap.group(1) in payloads and rtpmap.group(1) not in has_fmtp:
            out.append(f"a=fmtp:{rtpmap.group(1)} {params}")
    return "\r\n".join(out)
