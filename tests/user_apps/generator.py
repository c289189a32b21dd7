"""fastrtc's "server-generated video" shape: a generator, paced at a chosen fps, with an input.
Each frame carries its counter as 16 black/white blocks in the top band (read by the test client)."""

import gradio as gr
import numpy as np

from streams import Stream, VideoStreamHandler  # was: from fastrtc import Stream, VideoStreamHandler

COLOURS = {"red": (0, 0, 255), "green": (0, 255, 0), "blue": (255, 0, 0)}


def frames(colour="red"):
    counter = 0
    while True:
        image = np.zeros((240, 320, 3), np.uint8)
        image[64:] = COLOURS[colour]
        block = 320 // 16
        for bit in range(16):
            image[:32, bit * block : (bit + 1) * block] = 255 if (counter >> bit) & 1 else 0
        counter += 1
        yield image


stream = Stream(
    handler=VideoStreamHandler(frames, fps=15),
    modality="video",
    mode="receive",
    additional_inputs=[gr.Dropdown(choices=list(COLOURS), value="red", label="colour")],
)
