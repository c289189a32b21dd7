"""Every setting as `--help` text, generated from `Settings.model_fields` so the help cannot drift."""

from __future__ import annotations

import inspect
import re
import textwrap
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from server.config import Settings

_SECTION = re.compile(r"^\s*# --- (.+?) ---\s*$")
_FIELD = re.compile(r"^    (\w+)\s*:")
_CONSTRAINTS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "min length"),
                ("max_length", "max length"), ("pattern", "pattern"))  # fmt: skip


def env_name(name: str, settings: type[Settings] = Settings) -> str:
    """The environment variable pydantic-settings reads for field `name`."""
    return f"{settings.model_config.get('env_prefix', '')}{name}".upper()


def describe_settings(settings: type[Settings] = Settings, width: int = 96) -> str:
    """One entry per field, grouped under the `# --- section ---` comments of the class source."""
    sections = _sections(settings)
    groups: dict[str, list[str]] = {}
    for name, field in settings.model_fields.items():
        groups.setdefault(sections.get(name, "server"), []).append(_entry(settings, name, field, width))
    lines = [
        "settings: environment variables (case-insensitive); --host, --port and --log-level override",
        "the first three. Generated from server/config.py, so this list is complete:",
    ]
    for section, entries in groups.items():
        lines += ["", f"  {section}", *entries]
    return "\n".join(lines)


def _sections(settings: type[Settings]) -> dict[str, str]:
    """Field name -> the section comment above it in its class (base classes first); fields above
    a class's first comment, or without source to read, get none."""
    found: dict[str, str] = {}
    for cls in reversed(settings.__mro__):
        if cls.__module__.startswith(("pydantic", "builtins")):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(cls))
        except (OSError, TypeError):  # no source (a frozen app): those fields go ungrouped
            continue
        section = None
        for line in source.splitlines():
            if match := _SECTION.match(line):
                section = match.group(1)
            elif (match := _FIELD.match(line)) and section and match.group(1) in settings.model_fields:
                found[match.group(1)] = section
    return found


def _entry(settings: type[Settings], name: str, field: FieldInfo, width: int) -> str:
    kind = ", ".join([type_name(field.annotation), *_constraints(field)])
    head = f"    {env_name(name, settings)} ({kind})  default: {default_text(field)}"
    if not field.description:
        return head
    body = textwrap.fill(field.description, width, initial_indent=" " * 8, subsequent_indent=" " * 8)
    return f"{head}\n{body}"


def default_text(field: FieldInfo) -> str:
    """The default as you would write it in the environment; a factory is called to see what it
    means (a different value on each call means a random one, made at each start)."""
    if field.default_factory is not None:
        factory: Any = field.default_factory
        first, second = factory(), factory()
        if first != second:
            return "random, new at each start"
        return _value_text(first)
    if field.default is PydanticUndefined:
        return "(required)"
    return _value_text(field.default)


def _value_text(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple | set | dict) and not value:
        return "(empty)"
    return str(value)


def type_name(annotation: Any) -> str:
    """`float | None` -> `float or none`, `Literal['a', 'b']` -> `a|b`, `list[IceServer]` as written."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        kinds = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(kinds) + (" or none" if type(None) in args else "")
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in args)}]"
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def _constraints(field: FieldInfo) -> list[str]:
    found = []
    for meta in field.metadata:
        for attr, word in _CONSTRAINTS:
            value = getattr(meta, attr, None)
            if value is not None:
                found.append(f"{word} {value}")
    return found
