"""Plugins: methods, models and datasets from outside this repository.

Two ways in, both just importing a module whose `@register_*` decorators then run:
- an installed distribution declares entry points in the groups `compress.methods`,
  `compress.models` or `compress.datasets` (value: a module); they load with the registry;
- `plugins: [module, ...]` in a config (or `--plugin MODULE` on the command line) names
  importable modules or `.py` files of your own. The resolved config keeps the list, so every
  stage record carries it, and follow-on commands (`--from`), sweep workers and torchrun ranks
  import the same plugins before they read the config.

A plugin that fails to import is one line naming it (exit 2).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

from compress.errors import UserError
from compress.registry import origin

_loaded: set[str] = set()


def load_plugins(names: list[str]) -> None:
    """Import each plugin module (a dotted name or a path to a .py file) once."""
    for name in names:
        if name in _loaded:
            continue
        with origin(f"plugin {name}"):
            _import(name)
        _loaded.add(name)


def _import(name: str) -> None:
    try:
        if name.endswith(".py"):
            path = Path(name).expanduser().resolve()
            if not path.is_file():
                raise UserError(f"plugin file {name} does not exist")
            spec = importlib.util.spec_from_file_location(f"compress_plugin_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.append(str(Path.cwd()))  # a module in the working folder, as python -m
            importlib.import_module(name)
    except UserError:
        raise
    except ImportError as e:
        raise UserError(f"plugin {name!r} cannot be imported ({e}); install it or put it on "
                        "PYTHONPATH") from None
    except Exception as e:  # noqa: BLE001 - a plugin's own code may raise anything
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(f"plugin {name!r} failed while importing: {type(e).__name__}: "
                        f"{first}") from None


def load_entry_points(group: str) -> None:
    """Import the modules installed distributions declare in `group`."""
    for ep in importlib.metadata.entry_points(group=group):
        key = f"{group}:{ep.value}"
        if key in _loaded:
            continue
        dist = getattr(ep.dist, "name", None) or ep.value.split(".")[0]
        with origin(f"plugin {dist} (entry point {ep.name})"):
            try:
                ep.load()
            except Exception as e:  # noqa: BLE001
                first = (str(e).strip().splitlines() or [""])[0][:200]
                raise UserError(f"plugin {dist}: entry point {ep.name} = {ep.value} of group "
                                f"{group} failed to load: {type(e).__name__}: {first}") from None
        _loaded.add(key)
