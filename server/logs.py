"""Logging setup for `python -m server`: uvicorn's own format, with tokens kept out of the access log.

Browsers must put credentials in the query string where they cannot set headers (EventSource,
WebSockets: `?token=`), and uvicorn's access log prints each request's full path.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

from uvicorn.config import LOGGING_CONFIG

_TOKEN_IN_QUERY = re.compile(r"([?&](?:token|access_token)=)[^&\s]*", re.IGNORECASE)


def redact(path: str) -> str:
    """`/x?webrtc_id=a&token=secret` -> `/x?webrtc_id=a&token=***`."""
    return _TOKEN_IN_QUERY.sub(r"\1***", path)


class RedactTokens(logging.Filter):
    """uvicorn's access records carry (client, method, path, http version, status) as args."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact(args[2]), *args[3:])
        return True


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's default logging config, its access handler filtered by `RedactTokens`."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_tokens"] = {"()": RedactTokens}
    config["handlers"]["access"]["filters"] = ["redact_tokens"]
    return config
