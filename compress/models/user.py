"""Models from the user's own code: `py:package.module:factory` and `file:path/model.py:factory`.

The factory is called with `model.args` as keyword arguments and must return an `nn.Module`.
If it takes a `num_classes` (or `in_shape`, `in_channels`) parameter that `model.args` does not
set, compress passes the dataset's value. It runs under the stage's seed, so its random init is
reproducible. A `file:` module is loaded under a name derived from the file's sha256 (an edited
file is a new module), with its folder on sys.path so it can import its neighbours.

Every failure is one line: a missing module, file or function, a factory that raises (its
first line), or one that returns something that is not an `nn.Module`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, Field

from compress.vocab import OPTIONS
from torch import nn

from compress.errors import UserError
from compress.registry import MODELS, Entry


class FactoryParams(BaseModel):
    model_config = OPTIONS
    args: dict[str, Any] = Field(default_factory=dict,
                                 description="keyword arguments of the factory")


def _split(kind: str, rest: str) -> tuple[str, str]:
    where, sep, func = rest.rpartition(":")
    example = "py:mypackage.models:build" if kind == "py" else "file:models/net.py:build"
    if not sep or not where or not func.isidentifier():
        raise UserError(f"model.name {kind}:{rest} is not {kind}:WHERE:FUNCTION (e.g. {example})")
    return where, func


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@functools.lru_cache(maxsize=None)
def _load_file(path: str, sha: str):
    """The module in `path` (executed once per content)."""
    name = f"compress_user_{Path(path).stem}_{sha[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"model file {path} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    folder = str(Path(path).parent)
    if folder not in sys.path:
        sys.path.append(folder)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's code may raise anything
        del sys.modules[name]
        raise UserError(f"model file {path} failed to import: {_first_line(e)}") from None
    return module


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def resolve_factory(kind: str, rest: str) -> tuple[Callable[..., Any], dict]:
    """(the factory function, facts identifying its code: file and sha256)."""
    where, func = _split(kind, rest)
    if kind == "file":
        path = Path(os.path.expanduser(where)).resolve()
        if not path.is_file():
            raise UserError(f"model file {where} does not exist (model.name file:PATH:FUNCTION)")
        sha = file_sha256(path)
        module, facts = _load_file(str(path), sha), {"file": str(path), "file_sha256": sha}
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise UserError(f"cannot import module {where!r} for model.name py:{rest} "
                            f"({_first_line(e)}); is its package installed or on PYTHONPATH?") from None
        except Exception as e:  # noqa: BLE001
            raise UserError(f"module {where!r} failed to import: {_first_line(e)}") from None
        source = getattr(module, "__file__", None)
        facts = {"file": source, "file_sha256": file_sha256(Path(source)) if source else None}
    factory = getattr(module, func, None)
    if not callable(factory):
        have = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                      and getattr(v, "__module__", None) == module.__name__)
        raise UserError(f"{where} has no function {func!r}; it defines: "
                        f"{', '.join(have[:8]) or 'nothing callable'}")
    return factory, facts


def call_factory(name: str, factory: Callable[..., Any], args: dict,
                 in_shape: tuple[int, ...], out_features: int) -> nn.Module:
    kwargs = dict(args)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    implied = {"num_classes": out_features, "in_shape": tuple(in_shape),
               "in_channels": in_shape[0] if in_shape else None}
    for key, value in implied.items():
        if key in params and key not in kwargs and value is not None:
            kwargs[key] = value
    try:
        model = factory(**kwargs)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"model factory {name} raised {_first_line(e)} (called with "
                        f"{', '.join(f'{k}={v!r}' for k, v in kwargs.items()) or 'no arguments'})"
                        ) from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model factory {name} returned {type(model).__name__}, not a "
                        "torch.nn.Module")
    return model


def _resolver(kind: str):
    def resolve(rest: str) -> Entry:
        _split(kind, rest)  # a malformed reference fails before anything is imported

        def build(p: FactoryParams, in_shape: tuple[int, ...], out_features: int) -> nn.Module:
            factory, _ = resolve_factory(kind, rest)
            return call_factory(f"{kind}:{rest}", factory, p.args, in_shape, out_features)

        return Entry(f"{kind}:{rest}", obj=build, params=FactoryParams,
                     summary=f"your model: {kind}:{rest} called with model.args",
                     defaults={"user_code": True})
    return resolve


MODELS.register_prefix("py", _resolver("py"))
MODELS.register_prefix("file", _resolver("file"))
