"""`make bench`: every benchmark, each against its baselines in the same run."""

from __future__ import annotations

import sys

from bench import detection, generate, slow, turns, video


def main() -> None:
    for module in (detection, video, slow, generate, turns):
        print(f"\n=== {module.__name__} ===", flush=True)
        sys.argv = [module.__name__]
        module.main()


if __name__ == "__main__":
    main()
