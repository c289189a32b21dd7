"""Process environment defaults that keep the server offline (see `streams.offline`)."""

from streams.offline import OFFLINE_DEFAULTS, apply_offline_defaults

__all__ = ["OFFLINE_DEFAULTS", "apply_offline_defaults"]
