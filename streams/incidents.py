"""Internal failures told to clients without their details.

An exception's text can carry what a client must not see (an upstream API's error body, a file path,
a host name). The client gets what failed and a short incident id; the log line with the same id
carries the exception, so an operator can find it.
"""

from __future__ import annotations

import logging
import secrets


def report(logger: logging.Logger, session_id: str, what: str, exc: BaseException) -> str:
    """Log `exc` under a new incident id and return the message for the client."""
    incident = secrets.token_hex(4)
    logger.error(
        "session %s: %s (incident %s): %s: %s",
        session_id,
        what,
        incident,
        type(exc).__name__,
        exc,
        exc_info=exc,
    )
    return f"{what} (incident {incident}; details are in the server log)"
