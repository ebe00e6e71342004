"""Name -> factory registries for methods, models and datasets.

Tests loop over these registries, so a method, model or dataset is tested the moment it is
registered. Registration happens on import of the defining module; `_load()` imports the
built-in packages once, lazily, so `compress --help` stays fast, and then every installed
plugin: the modules named by the entry points `compress.methods`, `compress.models` and
`compress.datasets` of installed distributions. Modules named by the `plugins:` config key or
`--plugin` are imported by compress.plugins. Every entry remembers where it came from
(`origin`: built-in, the distribution of an entry point, or a plugin module).
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from compress.errors import UserError

_BUILTIN_MODULES = {
    "method": "compress.methods",
    "model": "compress.models",
    "dataset": "compress.data",
}


@dataclass(frozen=True)
class Entry:
    name: str
    obj: Any
    params: type | None  # pydantic model of the entry's options (extra keys forbidden)
    summary: str
    defaults: dict = field(default_factory=dict)  # config overlay this entry runs best with
    origin: str = "built-in"


_origin: list[str] = []  # set while a plugin's module is imported


@contextlib.contextmanager
def origin(label: str):
    """Entries registered inside the block come from `label` (e.g. 'plugin mypkg')."""
    _origin.append(label)
    try:
        yield
    finally:
        _origin.pop()


def _origin_of(obj: Any) -> str:
    if _origin:
        return _origin[-1]
    module = getattr(obj, "__module__", "") or ""
    return "built-in" if module.split(".")[0] == "compress" else f"module {module}"


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._prefixes: dict[str, Callable[[str], Entry]] = {}
        self._prefix_info: dict[str, Entry] = {}  # how `compress models` shows 'prefix:NAME'
        self._loaded = False

    def register(self, name: str, *, params: type | None = None, summary: str = "",
                 defaults: dict | None = None) -> Callable:
        """Decorator registering `obj` (a model builder or dataset loader) under `name`."""
        def deco(obj):
            if name in self._entries and self._entries[name].obj is not obj:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            doc = summary or (obj.__doc__ or "").strip().splitlines()[0:1]
            text = doc if isinstance(doc, str) else (doc[0] if doc else "")
            self._entries[name] = Entry(name, obj, params, text, defaults or {}, _origin_of(obj))
            return obj

        return deco

    def add_class(self, cls: type) -> type:
        """Register a class that describes itself (`name`, `summary`, `Params`, `defaults`),
        e.g. a `Method` subclass; the entry holds one instance of it."""
        for attr in ("name", "summary", "Params"):
            if not hasattr(cls, attr):
                raise TypeError(f"{cls.__name__} must define `{attr}` to be registered")
        if cls.name in self._entries and type(self._entries[cls.name].obj) is not cls:
            raise ValueError(f"{self.kind} {cls.name!r} registered twice")
        self._entries[cls.name] = Entry(cls.name, cls(), cls.Params, cls.summary,
                                        dict(getattr(cls, "defaults", {}) or {}), _origin_of(cls))
        return cls

    def register_prefix(self, prefix: str, resolver: Callable[[str], Entry], *,
                        summary: str = "", params: type | None = None) -> None:
        """Names like 'prefix:rest' resolve through resolver(rest) (e.g. torchvision:resnet18).

        The resolver raises UserError for a rest it does not know. `summary` and `params`
        describe the family in listings (`compress models`).
        """
        self._prefixes[prefix] = resolver
        self._prefix_info[prefix] = Entry(f"{prefix}:NAME", resolver, params, summary)

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            importlib.import_module(_BUILTIN_MODULES[self.kind])
            from compress.plugins import load_entry_points
            load_entry_points(f"compress.{self.kind}s")

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def get(self, name: str) -> Entry:
        self._load()
        prefix, sep, rest = name.partition(":")
        if sep and prefix in self._prefixes and name not in self._entries:
            return self._prefixes[prefix](rest)
        if name not in self._entries:
            valid = ", ".join(self.names() + [f"{p}:NAME" for p in sorted(self._prefixes)])
            raise UserError(f"unknown {self.kind} {name!r}; valid {self.kind}s: {valid}")
        return self._entries[name]

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def prefix_entries(self) -> list[Entry]:
        """One entry per registered prefix, named 'prefix:NAME' (obj: its resolver)."""
        self._load()
        return [self._prefix_info[p] for p in sorted(self._prefix_info)]


METHODS = Registry("method")
MODELS = Registry("model")
DATASETS = Registry("dataset")

register_method = METHODS.add_class
register_model = MODELS.register
register_dataset = DATASETS.register
