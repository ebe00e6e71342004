"""Trained weights from a user's file onto a built model: read, check, load (or refuse, in one line).

A weights file is a state dict in `.safetensors`, or `.pt` / `.pth` / `.bin` read with
`torch.load(weights_only=True)`: a file that needs pickled Python objects (a whole model saved
with `torch.save(model)`) is refused. Two common wrappings are unwrapped, and the run says so:
a checkpoint dict holding the state dict under `state_dict` / `model_state_dict` / `model`,
and keys prefixed `module.` (saved from DataParallel / DDP).

Keys and shapes must match the model. A mismatch names the first differing keys and both
shapes. Only the classifier head (the last layer with weights the forward pass runs) may
differ, and only with `model.reset_head: true`: it then keeps its fresh, seeded init.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn

from compress.core.hooks import observe
from compress.errors import UserError

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def weights_path(path: str) -> Path:
    p = Path(os.path.expanduser(path))
    if not p.is_file():
        raise UserError(f"model.weights {path} does not exist (a .safetensors or .pt/.pth state "
                        "dict of the model)")
    return p


def read_state(path: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state dict in `path` (a file, or a registered model `models:/...`), and notes on any
    unwrapping done."""
    if path.startswith("models:/"):
        from compress.tracking.model_source import pin, registered_state
        pinned = pin(path)
        return registered_state(pinned), [f"weights of {pinned}"]
    p = weights_path(path)
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(p)), []
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"model.weights {p} is not a readable safetensors file "
                            f"({str(e).splitlines()[0]})") from None
    if p.suffix not in TORCH_SUFFIXES:
        raise UserError(f"model.weights {p}: unknown format {p.suffix!r}; give a .safetensors or "
                        f"a torch state dict ({', '.join(TORCH_SUFFIXES)})")
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle and zip errors come in many types
        text = str(e)
        if "weights_only" in text or "Unsupported global" in text or "GLOBAL" in text:
            raise UserError(f"model.weights {p} holds pickled Python objects (e.g. a whole model "
                            "saved with torch.save(model)), which compress does not load: save "
                            "model.state_dict() instead, or log the model with "
                            "mlflow.pytorch.log_model and use --from models:/NAME@ALIAS") from None
        raise UserError(f"model.weights {p} is not a readable torch file "
                        f"({type(e).__name__}: {text.splitlines()[0] if text else ''})") from None
    return _unwrap(obj, p)


def _unwrap(obj, p: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    notes = []
    if isinstance(obj, dict) and not _is_state(obj):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), dict) and _is_state(obj[key]):
                obj = obj[key]
                notes.append(f"read the state dict under {key!r} of the checkpoint")
                break
    if not isinstance(obj, dict) or not _is_state(obj):
        raise UserError(f"model.weights {p} is not a state dict (a mapping of parameter names to "
                        "tensors); save model.state_dict()")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
        notes.append("removed the 'module.' prefix of a DataParallel/DDP state dict")
    return obj, notes


def _is_state(d: dict) -> bool:
    return bool(d) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in d.items())


def head_module(model: nn.Module, example: torch.Tensor) -> str | None:
    """Name of the last module with weights that the forward pass runs (the classifier head)."""
    called: list[str] = []
    names = {m: n for n, m in model.named_modules()}
    observe(model, example, [(m, lambda mod, *_: called.append(names[mod]))
                             for m in model.modules()
                             if isinstance(getattr(m, "weight", None), torch.Tensor)])
    return called[-1] if called else None


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], *, reset_head: bool,
                 head: str | None, source: str) -> list[str]:
    """Load `state` into `model` (strictly: every key, every shape); returns notes.

    With `reset_head`, the head's parameters may be missing or of another shape: they keep the
    model's fresh init. Anything else that differs is a UserError naming the first keys."""
    own = model.state_dict()
    head_keys = {k for k in own if head and k.startswith(head + ".")}
    missing, unexpected, shape = differences(own, state)
    skipped = [k for k in (missing + shape) if reset_head and k in head_keys]
    missing = [k for k in missing if k not in skipped]
    shape = [k for k in shape if k not in skipped]
    if shape:
        k = shape[0]
        why = (f"the model's output layer {head!r} has {tuple(own[k].shape)}, the file "
               f"{tuple(state[k].shape)}: a different class count; set model.reset_head=true for "
               "a new head") if k in head_keys else ("keep model.* as the weights were trained "
                                                    "with")
        raise UserError(f"{source} does not fit the model: {_shapes(own, state, shape)}; {why}")
    if missing or unexpected:
        raise UserError(f"{source} does not fit the model: {_keys(missing, unexpected)} (keys of "
                        "model.state_dict(); is it the same architecture and model.args?)")
    loaded = {k: v for k, v in state.items() if k not in skipped}
    model.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in loaded.items()}})
    return [f"new head {head!r} (model.reset_head): {', '.join(skipped)} keep a fresh init"] \
        if skipped else []


def differences(own, state) -> tuple[list[str], list[str], list[str]]:
    """Keys of the model missing from `state`, keys of `state` the model lacks, and keys whose
    shapes differ."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    return missing, unexpected, shape


def mismatch(own, state, partial: bool = False) -> str | None:
    """How `state` (name -> tensor) does not fit a model's state dict `own`, in words; None if
    it fits. `partial`: `state` may cover only some of the model's tensors (e.g. masks)."""
    missing, unexpected, shape = differences(own, state)
    if shape:
        return _shapes(own, state, shape)
    if unexpected or (missing and not partial):
        return _keys([] if partial else missing, unexpected)
    return None


def _shapes(own, state, shape: list[str]) -> str:
    k = shape[0]
    return (f"{k} is {tuple(state[k].shape)} in the file and {tuple(own[k].shape)} in the model "
            f"({len(shape)} shape mismatch(es))")


def _keys(missing: list[str], unexpected: list[str]) -> str:
    parts = []
    for word, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            parts.append(f"{word} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}")
    return "; ".join(parts)


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's contents (names, dtypes, shapes, bytes), whatever the file."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
