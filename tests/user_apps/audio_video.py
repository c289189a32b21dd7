"""An `AudioVideoStreamHandler` (fastrtc's audio-video modality): echoes the microphone and sends the
newest camera frame back upside down, at 15 fps."""

import numpy as np

from streams import AudioVideoStreamHandler, Stream  # was: from fastrtc import ...


class Mirror(AudioVideoStreamHandler):
    def __init__(self) -> None:
        super().__init__(input_sample_rate=24000, output_sample_rate=24000, fps=15)
        self.audio: list[np.ndarray] = []
        self.frame: np.ndarray | None = None

    def copy(self) -> "Mirror":
        return Mirror()

    def receive(self, frame: tuple[int, np.ndarray]) -> None:
        self.audio.append(frame[1])
        del self.audio[:-10]

    def emit(self):
        if not self.audio:
            return None
        return 24000, self.audio.pop(0)

    def video_receive(self, frame: np.ndarray) -> None:
        self.frame = frame

    def video_emit(self):
        return None if self.frame is None else self.frame[::-1]


stream = Stream(Mirror(), modality="audio-video", mode="send-receive", name="mirror")
