"""The HTTP side: app factory, settings, ICE, CLI. Knows nothing of pixels or samples."""

from server.env import apply_offline_defaults

apply_offline_defaults()  # before anything imports gradio (via fastrtc)
