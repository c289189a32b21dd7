"""A stream built with fastrtc's own Stream (the import line was not changed)."""

from fastrtc import Stream

stream = Stream(lambda frame: frame, modality="video", mode="send-receive")
