"""Raises while being imported, as a module with a bug would."""

raise RuntimeError("this module has a bug on line 3")
