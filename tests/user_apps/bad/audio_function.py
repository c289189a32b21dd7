"""An audio stream given a bare function (fastrtc needs ReplyOnPause around it): refused at start."""

from streams import Stream


def reply(audio):
    yield audio


stream = Stream(reply, modality="audio", mode="send-receive")
