"""Live inputs by name: a handler's own parameters, validated like the components that describe them.

fastrtc passes inputs positionally through `set_input(id, *values)` and checks nothing. Here a
stream's inputs are named after the handler's parameters that follow the frame (or, for handler
classes, after the components' labels), and each value is checked against its `additional_inputs`
component (a Slider's range, a Dropdown's choices, a Checkbox's bool, a Number's bounds) or else
the parameter's annotation and default. Components are read by duck typing: gradio is not needed.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator


class InvalidInput(ValueError):
    """A value an input does not allow; the message names what is allowed."""


@dataclass(frozen=True)
class InputSpec:
    """The named inputs of one stream: their order (the handler's positional arguments) and model."""

    names: tuple[str, ...]
    defaults: dict[str, Any]
    model: type[BaseModel] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # inputs the runtime itself owns (fps)

    def validate(self, current: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
        """`current` with `changes` applied, or `InvalidInput` naming the problem and what is allowed."""
        merged = {**current, **changes}
        if self.model is None:
            if changes:
                raise InvalidInput(
                    f"unknown input {', '.join(map(repr, changes))}: this stream takes no inputs"
                )
            return merged
        try:
            return self.model.model_validate(merged).model_dump()
        except ValidationError as exc:
            raise InvalidInput(describe(exc.errors())) from exc

    def args(self, values: dict[str, Any]) -> list[Any]:
        """The handler's positional arguments after the frame."""
        return [values[n] for n in self.names]


def describe(errors: Sequence[Any]) -> str:
    """Pydantic errors as one line for people: `name: problem; name: problem`."""
    parts = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = "not an input of this stream"
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts) or "invalid input"


def _slug(label: str) -> str:
    return re.sub(r"\W+", "_", label.strip().lower()).strip("_")


def _choices(component: Any) -> list[Any]:
    values = []
    for choice in getattr(component, "choices", None) or []:
        values.append(choice[1] if isinstance(choice, tuple | list) and len(choice) == 2 else choice)
    return values


def _field_for(component: Any, default: Any, annotation: Any) -> tuple[Any, Any]:
    """(annotation, FieldInfo) for one input from its component (or its Python default)."""
    kind = type(component).__name__ if component is not None else ""
    value = getattr(component, "value", None) if component is not None else None
    if callable(value):
        value = None
    if value is None:
        value = default
    if kind == "Slider":
        lo, hi = getattr(component, "minimum", None), getattr(component, "maximum", None)
        step = getattr(component, "step", None)
        is_int = isinstance(step, int) and isinstance(lo, int) and float(step).is_integer() and step >= 1
        return (int if is_int else float), Field(value, ge=lo, le=hi)
    if kind == "Number":
        lo, hi = getattr(component, "minimum", None), getattr(component, "maximum", None)
        precision = getattr(component, "precision", None)
        return (int if precision == 0 else float), Field(value, ge=lo, le=hi)
    if kind == "Checkbox":
        return bool, Field(bool(value) if value is not None else False)
    if kind in ("Textbox", "Text", "TextArea", "Code", "Markdown"):
        return str, Field("" if value is None else value, max_length=10_000)
    if kind in ("Dropdown", "Radio"):
        return Any, Field(value)
    if annotation is not inspect.Parameter.empty:
        return (annotation if value is not None else annotation | None), Field(value)
    if value is not None:
        return type(value), Field(value)
    return Any, Field(value)


def build_inputs(
    names: Sequence[str],
    components: Sequence[Any],
    defaults: dict[str, Any],
    annotations: dict[str, Any],
    extra: dict[str, tuple[Any, Any]] | None = None,
) -> InputSpec:
    """An `InputSpec` for inputs `names`, described by `components` in order (missing ones by
    `defaults` and `annotations`); `extra` adds inputs the runtime owns, as (annotation, Field)."""
    fields: dict[str, Any] = {}
    validators: dict[str, Any] = {}
    for i, name in enumerate(names):
        component = components[i] if i < len(components) else None
        fields[name] = _field_for(
            component, defaults.get(name), annotations.get(name, inspect.Parameter.empty)
        )
        allowed = _choices(component) if component is not None else []
        if allowed:
            validators[f"_check_{name}"] = _choice_validator(name, allowed)
            annotation, info = fields[name]  # and the model's JSON schema (OpenAPI) lists them
            fields[name] = (Annotated[annotation, Field(json_schema_extra={"enum": allowed})], info)
    for name, spec in (extra or {}).items():
        fields[name] = spec
    if not fields:
        return InputSpec(names=tuple(names), defaults={})
    model = create_model(  # type: ignore[call-overload]
        "Inputs", __config__=ConfigDict(extra="forbid"), __validators__=validators, **fields
    )
    try:
        initial = model().model_dump()
    except ValidationError as exc:
        raise ValueError(f"the handler's default inputs are invalid: {describe(exc.errors())}") from exc
    return InputSpec(names=tuple(names), defaults=initial, model=model, extra=dict(extra or {}))


def _choice_validator(name: str, allowed: list[Any]) -> Any:
    def check(cls: Any, value: Any) -> Any:
        if value not in allowed:
            raise ValueError(f"unknown {name} {value!r}; choose one of: {', '.join(map(str, allowed))}")
        return value

    return field_validator(name)(classmethod(check))  # type: ignore[arg-type]


def parameters_after_first(
    fn: Callable[..., Any], skip: int = 1
) -> tuple[list[str], dict[str, Any], dict[str, Any]]:
    """A function's parameter names after the first `skip` (the frame), their defaults and annotations."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return [], {}, {}
    params = [
        p for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ][skip:]  # fmt: skip
    names = [p.name for p in params]
    defaults = {p.name: p.default for p in params if p.default is not p.empty}
    hints: dict[str, Any] = {}
    try:
        import typing

        target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else type(fn).__call__
        resolved = typing.get_type_hints(target, include_extras=True)
    except Exception:
        resolved = {}
    for p in params:
        if p.name in resolved:
            hints[p.name] = resolved[p.name]
        elif p.annotation is not p.empty and not isinstance(p.annotation, str):
            hints[p.name] = p.annotation
    return names, defaults, hints


def names_from_components(components: Sequence[Any]) -> list[str]:
    """Input names for handler classes: each component's label, as an identifier (or `input_N`)."""
    names = []
    for i, component in enumerate(components):
        label = getattr(component, "label", None)
        name = _slug(label) if isinstance(label, str) and label.strip() else ""
        names.append(name if name and name.isidentifier() and name not in names else f"input_{i + 1}")
    return names
