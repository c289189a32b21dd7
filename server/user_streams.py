"""`--streams MODULE:ATTR`: import someone's fastrtc-style streams to serve beside the built-ins."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from streams.stream import Stream, UnsupportedHandler

BUILT_IN_NAMES = ("video", "generate", "chat")
RESERVED_NAMES = ("api", "healthz", "readyz", "metrics", "docs", "redoc", "openapi.json", "static")


class StartupError(Exception):
    """Why the server cannot start, in one line for the operator."""


def load_streams(spec: str) -> list[Stream]:
    """`module:attr` (attr a `Stream` or a list of them), imported from the working directory."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise StartupError(f"--streams {spec!r}: expected MODULE:ATTR, e.g. my_app:stream")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except (UnsupportedHandler, ValueError, TypeError) as exc:
        raise StartupError(f"--streams {spec}: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        where = _user_frame(exc)
        raise StartupError(
            f"--streams {spec}: cannot import {module_name}: {type(exc).__name__}: {exc}{where}"
        ) from exc
    value: Any = module
    for part in attr.split("."):
        if not hasattr(value, part):
            raise StartupError(f"--streams {spec}: {module_name} has no attribute {attr!r}")
        value = getattr(value, part)
    found = list(value) if isinstance(value, list | tuple) else [value]
    for item in found:
        if not isinstance(item, Stream):
            hint = (
                " (build it with `from streams import Stream`, not fastrtc's)"
                if type(item).__name__ == "Stream"
                else ""
            )
            raise StartupError(f"--streams {spec}: {type(item).__name__} is not a streams.Stream{hint}")
    base = module_name.rsplit(".", 1)[-1].lower()
    for i, stream in enumerate(found):
        if stream.name is None:  # unnamed: the module's name is the URL prefix
            stream.name = base if len(found) == 1 else f"{base}-{i + 1}"
    return found


def check_names(streams: Iterable[Any]) -> None:
    """Every stream needs its own URL prefix, none of the server's own."""
    seen: set[str] = set()
    for stream in streams:
        name = stream.name
        if name is None:
            raise StartupError("a served stream needs a name (its URL prefix): Stream(..., name='mystream')")
        if name in RESERVED_NAMES:
            raise StartupError(f"stream name {name!r} is one of the server's own routes; choose another")
        if name in seen:
            clash = " (a built-in stream)" if name in BUILT_IN_NAMES else ""
            raise StartupError(
                f"two streams are named {name!r}{clash}: give each its own Stream(..., name=...)"
            )
        seen.add(name)


def _user_frame(exc: BaseException) -> str:
    """` (file.py:12)` for the innermost frame of the user's module, if any."""
    tb = exc.__traceback__
    where = ""
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if "site-packages" not in filename and "importlib" not in filename:
            where = f" ({Path(filename).name}:{tb.tb_lineno})"
        tb = tb.tb_next
    return where
