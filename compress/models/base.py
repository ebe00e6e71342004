"""Build a model for a dataset, and describe how to build it again.

A `model` config section names a registered model (`mlp`, `torchvision:resnet18`), the user's
code (`py:pkg.mod:factory`, `file:path.py:factory`) or a registered MLflow model
(`models:/NAME/VERSION`), plus that entry's own options. Keys every model takes:

    weights      a state dict file (.safetensors, .pt/.pth) loaded by the first stage
    reset_head   a head whose class count differs from the data's is replaced (fresh init)

`build_model` only builds the architecture with a seeded init (and a new head where asked);
the first stage loads `weights` (see compress.models.weights), later stages load their
source's weights. `reference` is what every stage records to rebuild the model; its
`identity` part (weights and code by sha256, not by path) enters the stage identity, so an
edited weights or model file is never silently reused.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
from pydantic import BaseModel, Field, field_validator

from compress.vocab import OPTIONS
from torch import nn

from compress.errors import UserError
from compress.registry import MODELS

COMMON_KEYS = ("weights", "reset_head")


class ModelOptions(BaseModel):
    """Options of every model, beside its own."""

    model_config = OPTIONS
    weights: str | None = Field(None, description="trained weights: a .safetensors or "
                                                  ".pt/.pth state dict, loaded by the first stage")
    reset_head: bool = Field(False, description="replace a head whose class count differs from "
                                                "the data's (fresh init; noted in the record)")

    @field_validator("weights")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        # Recorded absolute, so later commands find the file from any working folder.
        if value is None or value.startswith("models:/"):
            return value
        path = Path(os.path.expanduser(value))
        if not path.exists() and path.suffix == "" and len(path.parts) == 1:
            raise ValueError(f"{value!r} is not a weights file: pretrained weights are never "
                             "downloaded (e.g. torchvision's DEFAULT, IMAGENET1K_V1); save them "
                             "to a .pth/.safetensors file and give its path")
        return str(path.resolve())


def absolute_name(name: str) -> str:
    """`file:PATH:FUNC` with PATH made absolute (other names unchanged)."""
    prefix, sep, rest = name.partition(":")
    if prefix != "file" or not sep:
        return name
    where, colon, func = rest.rpartition(":")
    if not colon or not where:
        return name  # malformed: the resolver says how
    return f"file:{Path(os.path.expanduser(where)).resolve()}:{func}"


def split_options(opts: dict) -> tuple[ModelOptions, dict]:
    """(the options every model takes, the entry's own options)."""
    common = {k: opts[k] for k in COMMON_KEYS if k in opts}
    return ModelOptions(**common), {k: v for k, v in opts.items() if k not in COMMON_KEYS}


def arrives_trained(section: dict) -> bool:
    """A model with trained weights (a file, or a registered model): its first stage is import,
    which evaluates it, instead of pretraining from a random init."""
    return bool(section.get("weights")) or str(section.get("name", "")).startswith("models:/")


def output_width(num_classes: int) -> int:
    """Binary tasks use one logit (logistic output, as in the CPNA paper); others one per class."""
    return 1 if num_classes == 2 else num_classes


def accepts_width(width: int, num_classes: int) -> bool:
    """A model may give one logit per class, or one logit for a binary task."""
    return width == num_classes or (num_classes == 2 and width == 1)


def build_model(name: str, params: dict, in_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    entry = MODELS.get(name)
    common, own = split_options(params)
    typed = entry.params(**own) if entry.params else None
    model = entry.obj(typed, tuple(in_shape), output_width(num_classes))
    if entry.defaults.get("user_code"):
        model = _fit_head(model, name, in_shape, num_classes, common.reset_head)
    return model


def _fit_head(model: nn.Module, name: str, in_shape: tuple[int, ...], num_classes: int,
              reset_head: bool) -> nn.Module:
    """The user's model, checked on one input; a head of the wrong width replaced if allowed."""
    from compress.models.weights import head_module
    example = torch.zeros(1, *in_shape)
    width = _probe(model, name, example)
    if accepts_width(width, num_classes):
        return model
    if not reset_head:
        raise UserError(f"model {name} outputs {width} values per sample but the data has "
                        f"{num_classes} classes; set model.reset_head=true to replace its head, or "
                        "build it for this class count (model.args)")
    head = head_module(model, example)
    replaced = _new_head(model, head, output_width(num_classes))
    if replaced is None:
        raise UserError(f"model.reset_head: the head {head!r} of {name} is not a Linear or "
                        "Conv layer compress can replace; build the model for "
                        f"{num_classes} classes instead")
    if not accepts_width(_probe(model, name, example), num_classes):
        raise UserError(f"model.reset_head: replacing {head!r} did not give {num_classes} "
                        f"outputs in {name}; build the model for this class count instead")
    return model


def _probe(model: nn.Module, name: str, example: torch.Tensor) -> int:
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            out = model(example)
    except Exception as e:  # noqa: BLE001 - the user's forward may raise anything
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(f"model {name} cannot take inputs of shape {tuple(example.shape[1:])} "
                        f"from this data: {type(e).__name__}: {first}") from None
    finally:
        model.train(was_training)
    if not torch.is_tensor(out) or out.dim() != 2:
        what = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise UserError(f"model {name} must return logits of shape (batch, classes), got {what}")
    return int(out.shape[1])


def _new_head(model: nn.Module, head: str | None, width: int) -> nn.Module | None:
    if head is None:
        return None
    parent_name, _, attr = head.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, width, bias=old.bias is not None)
    elif isinstance(old, nn.Conv2d) and old.groups == 1:
        new = nn.Conv2d(old.in_channels, width, old.kernel_size, old.stride, old.padding,
                        old.dilation, bias=old.bias is not None)
    else:
        return None
    setattr(parent, attr, new.to(next(old.parameters()).device))
    return new


# ------------------------------------------------------------------------- reference
@functools.lru_cache(maxsize=64)
def _sha_cached(path: str, size: int, mtime_ns: int) -> str:
    from compress.core.masks import file_sha256
    return file_sha256(Path(path))


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file, cached per (path, size, mtime) within the process."""
    p = Path(os.path.expanduser(str(path))).resolve()
    st = p.stat()
    return _sha_cached(str(p), st.st_size, st.st_mtime_ns)


def reference(section: dict) -> dict:
    """How to rebuild the model of a `model` config section: its reference and options, and
    the sha256 of the weights file and of the user's model code (file:/py:)."""
    name = section["name"]
    common, own = split_options({k: v for k, v in section.items() if k != "name"})
    ref: dict = {"name": name, "options": own}
    if common.weights and common.weights.startswith("models:/"):
        from compress.tracking.model_source import pin
        ref["weights"] = pin(common.weights)  # a registry version never changes
    elif common.weights:
        from compress.models.weights import weights_path
        ref["weights"] = str(weights_path(common.weights).resolve())
        ref["weights_sha256"] = file_digest(common.weights)
    if common.reset_head:
        ref["reset_head"] = True
    prefix, sep, rest = name.partition(":")
    if sep and prefix in ("py", "file"):
        from compress.models.user import resolve_factory
        _, facts = resolve_factory(prefix, rest)
        ref.update({k: v for k, v in facts.items() if v})
    if name.startswith("models:/"):
        from compress.tracking.model_source import pin
        ref["pinned_uri"] = pin(name)
    return ref


def identity(section: dict) -> dict:
    """The part of `section` a stage identity hashes: paths replaced by the sha256 of what they
    hold, so a moved file is the same model and an edited one is not."""
    ref = reference(section)
    out = {k: v for k, v in section.items() if k != "weights"}
    if "weights" in ref:
        out["weights"] = ref.get("weights_sha256", ref["weights"])
    if "pinned_uri" in ref:  # a registry version never changes; an alias may move
        out["name"] = ref["pinned_uri"]
    if ref.get("file_sha256"):
        prefix, _, rest = section["name"].partition(":")
        func = rest.rpartition(":")[2]
        out["name"] = f"{prefix}:sha256={ref['file_sha256']}:{func}" if prefix == "file" else \
            section["name"]
        out["code_sha256"] = ref["file_sha256"]
    return out


def initial_weights(model: nn.Module, section: dict, example: torch.Tensor) -> dict | None:
    """Load the trained weights a model section names (`weights`, or a registered model's own)
    into `model`; returns the facts to record, or None when it names none."""
    from compress.models.weights import head_module, load_weights, read_state, state_digest
    common, _ = split_options({k: v for k, v in section.items() if k != "name"})
    name = section["name"]
    if common.weights:
        state, notes = read_state(common.weights)
        source = f"model.weights {common.weights}"
        facts = {k: v for k, v in reference(section).items() if k.startswith("weights")}
    elif name.startswith("models:/"):
        from compress.tracking.model_source import pin, registered_state
        pinned = pin(name)
        state, notes, source = registered_state(pinned), [], pinned
        facts = {"source_uri": name, "pinned_uri": pinned, "version": pinned.rsplit("/", 1)[1]}
    else:
        return None
    notes += load_weights(model, state, reset_head=common.reset_head,
                          head=head_module(model, example), source=source)
    facts["state_sha256"] = state_digest(model.state_dict())
    facts["notes"] = notes
    return facts
