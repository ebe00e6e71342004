"""What `compress datasets` and `compress models` list: every registered entry (and prefix
family, e.g. torchvision:NAME) with its options, read from its Params model."""

from __future__ import annotations

import types
import typing
from typing import Any

from compress.registry import Entry, Registry


def type_name(annotation: Any) -> str:
    """A short readable type: int, str | None, none | standard, list[int], ..."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if annotation is type(None):
        return "None"
    if origin is not None:
        inner = ", ".join(type_name(a) for a in args if a is not Ellipsis)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return getattr(annotation, "__name__", str(annotation))


def options(params: type | None) -> list[dict]:
    """Name, type, default and description of every option of a Params model."""
    if params is None or not hasattr(params, "model_fields"):
        return []
    fields = params.model_fields
    own = [n for n in params.__dict__.get("__annotations__", {}) if n in fields]
    out = []
    # The entry's own options first, then those it shares (split fractions, loader options).
    for name in own + [n for n in fields if n not in own]:
        field = fields[name]
        if field.is_required() or (field.description or "").startswith("required"):
            default: Any = "required"
        else:
            default = field.get_default(call_default_factory=True)
            default = list(default) if isinstance(default, tuple) else default
        out.append({"name": name, "type": type_name(field.annotation), "default": default,
                    "description": (field.description or "").removeprefix("required: ")})
    return out


def describe(entry: Entry) -> dict:
    return {"summary": entry.summary, "options": options(entry.params)}


def catalog(registry: Registry) -> dict[str, dict]:
    """Every entry by name, then the prefix families ('torchvision:NAME')."""
    out = {e.name: describe(e) for e in registry.entries()}
    out.update({e.name: {**describe(e), "prefix": True} for e in registry.prefix_entries()})
    return out


def render(items: dict[str, dict]) -> str:
    """The text listing: one line per entry, then one indented line per option."""
    lines = []
    for name, item in items.items():
        lines.append(f"{name}  {item['summary']}")
        opts = item["options"]
        width = max((len(o["name"]) for o in opts), default=0)
        types_width = max((len(o["type"]) for o in opts), default=0)
        for o in opts:
            default = "required" if o["default"] == "required" else f"default {o['default']!r}"
            lines.append(f"    {o['name']:<{width}}  {o['type']:<{types_width}}  {default}"
                         + (f"  {o['description']}" if o["description"] else ""))
    return "\n".join(lines)
