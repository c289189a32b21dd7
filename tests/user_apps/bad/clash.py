"""Takes the built-in /video's name: the server must refuse to start."""

from streams import Stream

stream = Stream(lambda frame: frame, modality="video", name="video")
