"""A model from the MLflow model registry as the thing to compress: `models:/NAME@ALIAS`,
`models:/NAME/VERSION` (logged with `mlflow.pytorch.log_model`, the way training teams register
models). The model is downloaded once into `.compress-cache/models/NAME/VERSION`. An alias is
resolved to its version before anything runs, and the pinned `models:/NAME/VERSION` is what
stages record, so moving the alias later never changes what a finished stage means.

Two serializations, two roles:
- pickle (`serialization_format="pickle"`): the registered nn.Module is the architecture
  (`model.name: models:/NAME/VERSION`). Loading it unpickles it: it RUNS CODE FROM THE
  REGISTRY, so trust the registry as you trust your own code. It builds as that architecture
  with a seeded init (every module's `reset_parameters()`); its registered weights are what
  the first stage loads, like `model.weights`.
- pt2 (MLflow's default, a traced graph): only the weights are used (`model.weights:
  models:/NAME/VERSION`, read without unpickling anything); the architecture comes from
  `model.name` (your code, torchvision, a built-in).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import re
import shutil
from pathlib import Path

import torch
from pydantic import BaseModel

from compress.vocab import OPTIONS
from torch import nn

from compress.errors import UserError
from compress.registry import Entry

CACHE = Path(".compress-cache") / "models"
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_-]+))$")


class RegistryModelParams(BaseModel):
    """No options: the registered module is the architecture."""

    model_config = OPTIONS


def parse(uri: str) -> tuple[str, str | None, str | None]:
    m = _URI.match(uri)
    if not m:
        raise UserError(f"{uri!r} is not a registered model URI: use models:/NAME@ALIAS or "
                        "models:/NAME/VERSION")
    return m["name"], m["version"], m["alias"]


def _client():
    from compress.tracking.mlflow_tracker import _import_mlflow, check_reachable, \
        default_tracking_uri
    try:
        mlflow = _import_mlflow()
    except ImportError:
        raise UserError("models:/ sources need MLflow: pip install 'compress[tracking]'") from None
    uri = default_tracking_uri()
    check_reachable(uri)
    return mlflow, mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _store() -> str:
    from compress.tracking.mlflow_tracker import default_tracking_uri
    return default_tracking_uri()


def pin(uri: str) -> str:
    """`models:/NAME/VERSION` for a registered model URI (an alias resolved); UserError if the
    model, version or alias does not exist in the configured store."""
    return _pin(uri, _store())


@functools.lru_cache(maxsize=32)
def _pin(uri: str, store: str) -> str:
    name, version, alias = parse(uri)
    _, client = _client()
    from mlflow.exceptions import MlflowException
    try:
        if alias is not None:
            version = client.get_model_version_by_alias(name, alias).version
        else:
            client.get_model_version(name, version)
    except MlflowException as e:
        what = f"alias {alias!r}" if alias else f"version {version}"
        raise UserError(f"registered model {name!r} has no {what} in "
                        f"{client.tracking_uri} ({_first(e)}); see `compress registry show "
                        f"{name}`") from None
    return f"models:/{name}/{version}"


def _first(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


def _local(pinned: str) -> Path:
    """The downloaded model folder of `models:/NAME/VERSION` (downloaded once)."""
    name, version, _ = parse(pinned)
    if version is None:
        return _local(pin(pinned))
    store = hashlib.sha256(_store().encode()).hexdigest()[:12]  # one cache per store
    local = CACHE / store / name / version
    if not (local / "MLmodel").is_file():
        mlflow, client = _client()
        from mlflow.exceptions import MlflowException
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{version}.partial")
        try:  # through this client's store, never mlflow's process-wide default
            source = client.get_model_version_download_uri(name, version)
            got = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp),
                                                      tracking_uri=client.tracking_uri)
        except MlflowException as e:
            raise UserError(f"cannot download {pinned}: {_first(e)}") from None
        found = sorted(Path(got).rglob("MLmodel"), key=lambda p: len(p.parts))
        if not found:
            raise UserError(f"{pinned} has no MLmodel file: it is not an MLflow model")
        found[0].parent.replace(local)  # the model folder, whatever the store nested it in
        shutil.rmtree(tmp, ignore_errors=True)
    if "pytorch:" not in (local / "MLmodel").read_text():
        raise UserError(f"{pinned} was not logged with mlflow.pytorch (its MLmodel has no "
                        "pytorch flavor); compress needs a PyTorch model")
    return local


def is_module(uri: str) -> bool:
    """True when the registered model is a pickled nn.Module (serialization_format='pickle');
    False for a traced graph (pt2, MLflow's default), which holds weights but no module."""
    return not list((_local(uri) / "data").glob("*.pt2"))


def load(uri: str) -> nn.Module:
    """The registered module (pickled): unpickling runs the registry's code."""
    return _load(_local(uri).resolve())


@functools.lru_cache(maxsize=8)
def _load(local: Path) -> nn.Module:
    uri = f"models:/{local.parent.name}/{local.name}"
    if not is_module(uri):
        raise UserError(f"{uri} was logged as a traced graph (pt2), which holds the weights but "
                        "not a module compress can restructure: give the architecture with "
                        "--set model.name=py:PKG.MOD:FACTORY (or file:, torchvision:) and the "
                        f"registered weights with --set model.weights={uri}")
    mlflow, _ = _client()
    try:
        model = mlflow.pytorch.load_model(str(local), map_location="cpu")
    except Exception as e:  # noqa: BLE001 - unpickling user code fails in many ways
        raise UserError(f"cannot load {uri} with mlflow.pytorch ({type(e).__name__}: "
                        f"{_first(e)}); is the model's code importable here?") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"{uri} loads as {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


def registered_state(uri: str) -> dict[str, torch.Tensor]:
    """The registered weights: the module's state dict, or a pt2 graph's (read without
    running any pickled code)."""
    if is_module(uri):
        return {k: v.detach().clone() for k, v in load(uri).state_dict().items()}
    path = next((_local(uri) / "data").glob("*.pt2"))
    try:
        program = torch.export.load(str(path))
    except Exception as e:  # noqa: BLE001
        raise UserError(f"cannot read the pt2 graph of {uri}: {type(e).__name__}: {_first(e)}") from None
    state = dict(program.state_dict)
    state.update({k: v for k, v in program.constants.items() if torch.is_tensor(v)
                  and k in _buffer_names(program)})
    return {k: v.detach().clone() for k, v in state.items()}


def _buffer_names(program) -> set[str]:
    sig = program.graph_signature
    return set(getattr(sig, "buffers", [])) | set(getattr(sig, "non_persistent_buffers", []))


def fresh(module: nn.Module) -> nn.Module:
    """A copy with every module's parameters re-drawn (reset_parameters) from torch's seed."""
    out = copy.deepcopy(module)
    for m in out.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()
    return out.train()


def entry(rest: str) -> Entry:
    uri = f"models:{rest}"
    parse(uri)

    def build(p: RegistryModelParams, in_shape: tuple[int, ...], out_features: int) -> nn.Module:
        return fresh(load(pin(uri)))

    return Entry(uri, obj=build, params=RegistryModelParams,
                 summary=f"the registered MLflow model {uri} (mlflow.pytorch)",
                 defaults={"user_code": True, "registered": True})
