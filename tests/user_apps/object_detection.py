"""fastrtc's "object detection" example (a detector with a confidence slider), with only the import
line changed. The detector is this project's NanoDet instead of a model fetched from a hub."""

import gradio as gr

from server.config import DEFAULT_MODEL
from streams import AdditionalOutputs, Stream  # was: from fastrtc import AdditionalOutputs, Stream
from streams.detection import Detector, draw_detections

model = Detector(DEFAULT_MODEL)


def detection(image, conf_threshold=0.3):
    detections = model.detect(image, conf_threshold)
    draw_detections(image, detections)
    return image, AdditionalOutputs(len(detections), conf_threshold)


stream = Stream(
    handler=detection,
    modality="video",
    mode="send-receive",
    additional_inputs=[gr.Slider(minimum=0, maximum=1, step=0.01, value=0.3)],
)
