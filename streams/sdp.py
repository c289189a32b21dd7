"""Small, pure edits of the SDP answer the server sends.

Opus DTX (RFC 7587 §6.1, `usedtx=1`): a receiver's `a=fmtp` says how it prefers to be sent to. A
browser that reads `usedtx=1` in our answer stops sending 50 packets a second while its user is
silent and sends one comfort-noise packet every ~400 ms instead, so an idle voice session costs the
server (decode, resample, VAD) and the network almost nothing. aiortc has no setting for it and
writes no `a=fmtp` line for Opus, so the answer is edited after aiortc made it.
"""

from __future__ import annotations

import re

_RTPMAP = re.compile(r"^a=rtpmap:(\d+) opus/48000(?:/\d+)?$", re.IGNORECASE)
_FMTP = re.compile(r"^a=fmtp:(\d+)(?: (.*))?$")


def ask_for_opus_dtx(sdp: str) -> str:
    """`sdp` with `usedtx=1` in the `a=fmtp` of every Opus payload type of every audio m-section (a
    line added where there is none; an existing `usedtx` set to 1, never repeated). Other sections,
    codecs and lines are kept as they are, line endings included."""
    newline = "\r\n" if "\r\n" in sdp else "\n"
    lines = sdp.split(newline)
    sections: list[list[str]] = [[]]
    for line in lines:
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    out: list[str] = []
    for section in sections:
        out.extend(_with_dtx(section) if section and section[0].startswith("m=audio") else section)
    return newline.join(out)


def _with_dtx(section: list[str]) -> list[str]:
    """One audio m-section with `usedtx=1` for its Opus payload types."""
    opus = [m.group(1) for m in map(_RTPMAP.match, section) if m]
    if not opus:
        return section
    with_fmtp: set[str] = set()
    out: list[str] = []
    for line in section:
        match = _FMTP.match(line)
        if match and match.group(1) in opus:
            pt = match.group(1)
            with_fmtp.add(pt)
            line = f"a=fmtp:{pt} {_set_param(match.group(2) or '', 'usedtx', '1')}"
        out.append(line)
    for pt in opus:
        if pt in with_fmtp:
            continue
        rtpmap = next(i for i, line in enumerate(out) if (m := _RTPMAP.match(line)) and m.group(1) == pt)
        out.insert(rtpmap + 1, f"a=fmtp:{pt} usedtx=1")
    return out


def _set_param(params: str, key: str, value: str) -> str:
    """`key=value` in a `;`-separated fmtp parameter list: replaced where present, else appended."""
    parts: list[str] = []
    found = False
    for part in (p.strip() for p in params.split(";")):
        if part.split("=", 1)[0].strip().lower() == key:
            part, found = ("" if found else f"{key}={value}"), True
        if part:
            parts.append(part)
    if not found:
        parts.append(f"{key}={value}")
    return ";".join(parts)
