"""`make bench`: every benchmark, each against its baselines in the same run, then SUMMARY.md.
`python -m bench scale video` runs only those."""

from __future__ import annotations

import sys

from bench import detection, generate, memory, recording, scale, slow, summary, tracking, turns, video

ALL = {
    "detection": detection,
    "tracking": tracking,
    "video": video,
    "slow": slow,
    "generate": generate,
    "turns": turns,
    "scale": scale,
    "memory": memory,
    "recording": recording,
}


def main() -> None:
    chosen = sys.argv[1:] or list(ALL)
    unknown = [name for name in chosen if name not in ALL]
    if unknown:
        sys.exit(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(ALL)}")
    for name in chosen:
        print(f"\n=== {name} ===", flush=True)
        sys.argv = [name]
        ALL[name].main()
    summary.main()


if __name__ == "__main__":
    main()
