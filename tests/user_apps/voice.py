"""fastrtc's first example: echo what the user says when they pause, only the import line changed."""

import numpy as np

from streams import ReplyOnPause, Stream  # was: from fastrtc import ReplyOnPause, Stream


def echo(audio: tuple[int, np.ndarray]):
    # The function will be passed the audio until the user pauses
    # Implement any iterator that yields audio
    # See "LLM Voice Chat" for a more complete example
    yield audio


stream = Stream(
    handler=ReplyOnPause(echo),
    modality="audio",
    mode="send-receive",
)
