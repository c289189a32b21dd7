"""fastrtc made production-grade: serve your own handler, or the built-in streams.

A fastrtc app changes only its import line::

    from streams import Stream, ReplyOnPause, AdditionalOutputs, ...

and is served by ``python -m server --streams module:attr`` with every guarantee of the built-ins
(limits, tokens, metrics, TURN, drain). See docs/handlers.md.
"""

from streams.fastrtc_adapter import (
    AdditionalOutputs,
    AlgoOptions,
    AsyncAudioVideoStreamHandler,
    AsyncStreamHandler,
    AudioVideoStreamHandler,
    CloseStream,
    SileroVadOptions,
    StreamHandler,
    get_current_context,
)
from streams.handlers import ReplyOnPause, TurnTakingHandler, VideoStreamHandler
from streams.runtime import OfferRejected, SessionBudget, StreamObserver
from streams.session import Session, current_session
from streams.stream import Stream, UnsupportedHandler
from streams.turns import TurnSettings

__all__ = [
    "AdditionalOutputs",
    "AlgoOptions",
    "AsyncAudioVideoStreamHandler",
    "AsyncStreamHandler",
    "AudioVideoStreamHandler",
    "CloseStream",
    "OfferRejected",
    "ReplyOnPause",
    "Session",
    "SessionBudget",
    "SileroVadOptions",
    "Stream",
    "StreamHandler",
    "StreamObserver",
    "TurnSettings",
    "TurnTakingHandler",
    "UnsupportedHandler",
    "VideoStreamHandler",
    "current_session",
    "get_current_context",
]
