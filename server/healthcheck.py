"""`python -m server.healthcheck [URL]`: exit 0 if the server answers /healthz, else 1.

For container HEALTHCHECKs: slim images have no curl, and this needs nothing but the standard library.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    url = args[0] if args else f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            ok = resp.status == 200 and json.load(resp).get("status") == "ok"
    except (OSError, ValueError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
