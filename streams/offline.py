"""Process environment defaults that keep the media stack offline; set before fastrtc/gradio load."""

from __future__ import annotations

import os

OFFLINE_DEFAULTS = {
    "GRADIO_ANALYTICS_ENABLED": "False",  # stops Gradio's version check and telemetry threads
    "HF_HUB_OFFLINE": "1",  # nothing may download model weights at run time
    # onnxruntime >= 1.29 sends 1DS telemetry on Linux too (DNS lookups of mobile.events.data.microsoft.com
    # every few seconds); this is its full opt-out, read once before its environment is created.
    "ORT_DISABLE_TELEMETRY": "1",
}


def apply_offline_defaults() -> None:
    """Set the defaults unless the operator set them explicitly."""
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)
