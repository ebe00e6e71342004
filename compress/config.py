"""Typed configuration: pydantic models (unknown keys rejected), YAML, --set overrides, hashes.

Resolution order (later wins): built-in defaults < the method's embedded defaults < --config
file < --set key=value < --seed. The `data`, `model` and `method` sections are "named": their
options are validated by the registered entry's own Params model, and when a layer changes a
section's `name` the section's other options start again from that entry's defaults.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, PrivateAttr, ValidationError, field_validator

from compress.core.schedules import DurationStr

from compress.errors import UserError
from compress.vocab import MAX_SEED, OPTIONS, Exporter, Precision, RetrainMode

NAMED_SECTIONS = ("data", "model", "method")
# Options of a named section that belong to every entry, so a change of `name` keeps them.
SHARED_KEYS = {"model": ("weights", "reset_head")}


class Strict(BaseModel):
    model_config = OPTIONS


class TrainConfig(Strict):
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(3e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-3, ge=0, description="L2 penalty (added to the gradient)")
    batch_size: int = Field(256, ge=1)
    duration: DurationStr = Field("150ep", description="'150ep' epochs or '4000it' iterations")
    schedule: Literal["constant", "cosine"] = Field("constant", description="lr per epoch")
    device: Literal["cpu", "cuda", "auto"] = Field(
        "cpu", description="where fit() trains: cpu, cuda (under torchrun the local rank's GPU), "
                           "or auto (cuda when available)")
    # Set by the stage, never by config: the dense model that distills into this training.
    _teacher: Any = PrivateAttr(default=None)

    def with_teacher(self, teacher: Any, distill: "DistillConfig | None") -> "TrainConfig":
        """A copy whose trainings distill from `teacher` (None: a plain copy)."""
        out = self.model_copy()
        out._teacher = (teacher, distill) if teacher is not None and distill is not None else None
        return out


class DistillConfig(Strict):
    """Knowledge distillation from the dense model into every training of a prune or retrain
    stage: loss = (1 - alpha) * task loss + alpha * T^2 * KL(teacher_T || student_T)."""

    alpha: float = Field(0.5, ge=0, le=1, description="weight of the distillation term")
    temperature: float = Field(4.0, gt=0, description="softens both models' outputs")


class RetrainConfig(Strict):
    mode: RetrainMode = "finetune"
    rewind: DurationStr = Field("0it", description="rewind point for rewind/random_prune: '0it' = init")
    scope: Literal["layerwise", "global"] = Field(
        "layerwise", description="random_prune: keep per-layer counts, or only the total")
    train: TrainConfig | None = Field(None, description="defaults to the pretrain settings")


class ExportConfig(Strict):
    shrink: bool | Literal["auto"] = Field(
        "auto", description="physically remove dead units: auto = where the model supports it")
    round_to: int | Literal["auto"] = Field(
        8, description="shrink: channels kept per group rounded to a multiple of this (dead "
                       "ones fill in; 1 = off), as export.round says; auto: whichever of 1, 8, "
                       "16 runs fastest in onnxruntime here at batch 16")
    round: Literal["budget", "up", "down", "nearest", "latency"] = Field(
        "budget", description="widths: budget = round up cheapest-first while MACs stay within "
                              "round_budget of exact widths; up = always up (exact, may cancel "
                              "pruning); down / nearest = also drop live channels (smallest "
                              "filters); latency = per group, exact / next 8 / next 16, "
                              "whichever onnxruntime runs fastest here (slow: times the model "
                              "once per candidate)")
    round_budget: float = Field(0.1, ge=0, description="budget: extra MACs allowed for "
                                                       "rounding, as a fraction")
    rtol: float = Field(1e-5, gt=0, description="max relative error of ONNX vs PyTorch")
    parity_samples: int = Field(256, ge=1)
    opset: int | None = None
    exporter: Exporter = Field(
        "auto", description="torch.onnx.export path: torchscript (0.1-0.3 s for the CPNA MLP), "
                            "dynamo (torch's default, 2-8 s there), or auto: torchscript, and "
                            "dynamo where torchscript cannot express an op")
    registry_name: str | None = Field(None, description="register the ONNX model under this name")
    alias: str = "candidate"
    providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        description="onnxruntime execution providers recorded for deployment (ONNX metadata, "
                    "MLflow model); checks here always run on the CPU provider")
    precision: Precision = Field(
        "fp32", description="precision of the deployed model.onnx (fp32 kept as model.fp32.onnx)")
    max_accuracy_drop: float = Field(
        0.01, ge=0, le=1, description="refuse a reduced-precision model whose onnxruntime test "
                                      "accuracy is lower than the fp32 model's by more than this")
    calibration_batches: int = Field(8, ge=1, description="int8-static: training-split batches")
    calibration_batch_size: int = Field(32, ge=1)
    benchmark: bool = Field(True, description="time dense vs shrunk (vs reduced) with onnxruntime")
    latency_rounds: int = Field(30, ge=1, description="timed round-robin runs per model and batch")

    @field_validator("round_to", mode="before")
    @classmethod
    def _round_to(cls, value: Any) -> Any:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError(f"must be a whole number >= 1 (1 = exact widths) or 'auto', got {value!r}")

    @field_validator("providers", mode="before")
    @classmethod
    def _one_provider(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value  # --set export.providers=NAME

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, value: list[str]) -> list[str]:
        if value == ["CPUExecutionProvider"]:  # the default: no onnxruntime import needed
            return value
        try:
            from compress.export.precision import check_providers
        except ImportError:
            raise ValueError("execution providers need onnxruntime (the `export` extra)") from None
        try:
            return check_providers(value)
        except UserError as e:
            raise ValueError(str(e)) from None


class TrackingConfig(Strict):
    enabled: bool = True
    experiment: str = "compress"


class Config(Strict):
    plugins: list[str] = Field(default_factory=list, description="modules (or .py files) that "
                                                                 "register methods, models, datasets")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    data: dict[str, Any] = Field(default_factory=lambda: {"name": "xor"})
    model: dict[str, Any] = Field(default_factory=lambda: {"name": "mlp"})
    train: TrainConfig = Field(default_factory=TrainConfig)
    method: dict[str, Any] = Field(default_factory=lambda: {"name": "cpna"})
    distill: DistillConfig | None = Field(
        None, description="distill from the dense model while pruning and retraining "
                          "({alpha: 0.5, temperature: 4.0}); null = off")
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    def section(self, key: str) -> tuple[str, dict]:
        """(name, options without the name) of a named section."""
        body = dict(getattr(self, key))
        return body.pop("name"), body

    def method_params(self):
        from compress.registry import METHODS
        name, opts = self.section("method")
        return METHODS.get(name).params(**opts)

    def dump(self) -> dict:
        return self.model_dump(mode="json")

    def digest(self, *extra: str, sections: tuple[str, ...] | None = None,
               replace: dict | None = None) -> str:
        """Stable hash of this config (or of some of its sections) plus its inputs' identities;
        `replace` swaps sections for what identifies them (e.g. files by their sha256)."""
        body = {**self.dump(), **(replace or {})}
        if sections is not None:
            body = {k: body[k] for k in sections}
        blob = json.dumps([body, *extra], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------- layering
def merge(base: dict, over: dict) -> dict:
    """Deep merge; a named section whose `name` changes is replaced, not merged (but keeps
    the options every entry of it takes, e.g. model.weights)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        old = out.get(key)
        renamed = (key in NAMED_SECTIONS and isinstance(value, dict) and isinstance(old, dict)
                   and "name" in value and value["name"] != old.get("name"))
        if key == "plugins" and isinstance(old, list) and isinstance(value, list):
            out[key] = list(dict.fromkeys([*old, *value]))  # every layer's plugins, once
        elif isinstance(value, dict) and isinstance(old, dict) and not renamed:
            out[key] = merge(old, value)
        elif renamed:
            kept = {k: old[k] for k in SHARED_KEYS.get(key, ()) if k in old}
            out[key] = {**copy.deepcopy(kept), **copy.deepcopy(value)}
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_set(item: str) -> dict:
    """'a.b.c=value' -> {'a': {'b': {'c': value}}}, the value parsed as YAML (1e-3, [1,2], true)."""
    if "=" not in item:
        raise UserError(f"--set {item!r} is not key=value (e.g. --set train.lr=0.001)")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise UserError(f"--set {item!r}: empty part in key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string
        try:
            value = float(value)
        except ValueError:
            pass
    for part in reversed(parts):
        value = {part: value}
    return value


def load_spec(path: Path, model: type[BaseModel], what: str):
    """A YAML file validated as `model` (a pipeline or sweep file); one line when it is not."""
    try:
        return model(**load_yaml(path, what))
    except ValidationError as e:
        raise UserError(f"{path}: " + format_validation(e)) from None


def load_yaml(path: Path, what: str = "config file") -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{path} is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of config keys, not {type(data).__name__}")
    return data


def _load_plugins(layers: tuple[dict, ...]) -> None:
    """Import the plugins any layer names before names are looked up in the registries."""
    names = [p for layer in layers if isinstance(layer, dict)
             for p in (layer.get("plugins") or []) if isinstance(p, str)]
    if names:
        from compress.plugins import load_plugins
        load_plugins(names)


def _method_defaults(layers: list[dict]) -> dict:
    """The embedded defaults of whichever method the layers select (the last name wins)."""
    from compress.registry import METHODS
    name = "cpna"
    for layer in layers:
        section = layer.get("method")
        if isinstance(section, dict) and isinstance(section.get("name"), str):
            name = section["name"]
    defaults = METHODS.get(name).defaults
    return {**defaults, "method": {**defaults.get("method", {}), "name": name}}


def resolve(*layers: dict, seed: int | None = None) -> Config:
    """Merge layers over the defaults, validate every section, return the typed config."""
    _load_plugins(layers)
    merged: dict = Config().dump()
    merged = merge(merged, _method_defaults(list(layers)))
    for layer in layers:
        merged = merge(merged, layer)
    if seed is not None:
        merged["seed"] = seed
    try:
        cfg = Config(**merged)
    except ValidationError as e:
        raise UserError(format_validation(e)) from None
    _validate_named(cfg)
    return cfg


def _section(name: str, model: type[BaseModel], layers: tuple[dict, ...]) -> BaseModel:
    """One section as the layers select it (what a command checks before it reads its source
    stage, whose config the other sections build on)."""
    merged: dict = {}
    for layer in layers:
        section = layer.get(name)
        if isinstance(section, dict):
            merged = merge(merged, section)
    try:
        return model(**merged)
    except ValidationError as e:
        raise UserError(format_validation(e, prefix=name)) from None


def tracking_settings(*layers: dict) -> TrackingConfig:
    return _section("tracking", TrackingConfig, layers)


def export_settings(*layers: dict) -> ExportConfig:
    return _section("export", ExportConfig, layers)


def _validate_named(cfg: Config) -> None:
    """Check data/model/method options against their registered Params; fill in defaults."""
    from compress.registry import DATASETS, METHODS, MODELS
    for key, reg in (("data", DATASETS), ("model", MODELS), ("method", METHODS)):
        body = getattr(cfg, key)
        if not isinstance(body.get("name"), str):
            raise UserError(f"config error at {key}.name: missing; valid: {', '.join(reg.names())}")
        entry = reg.get(body["name"])
        opts = {k: v for k, v in body.items() if k != "name"}
        common = {}
        if key == "model":  # keys every model takes (weights, reset_head), beside its own
            from compress.models.base import absolute_name, split_options
            body = {**body, "name": absolute_name(body["name"])}
            try:
                shared, opts = split_options(opts)
            except ValidationError as e:
                raise UserError(format_validation(e, prefix=key)) from None
            common = shared.model_dump(mode="json", exclude_defaults=True)
        try:
            typed = entry.params(**opts) if entry.params else None
        except ValidationError as e:
            raise UserError(format_validation(e, prefix=key)) from None
        full = {"name": body["name"], **(typed.model_dump(mode="json") if typed else {}), **common}
        setattr(cfg, key, full)


# Where each named section's valid keys are listed (other sections: the README).
LISTINGS = {"data": "`compress datasets`", "model": "`compress models`",
            "method": "`compress methods`"}


def format_validation(e: ValidationError, prefix: str = "") -> str:
    """One line: every error as 'at a.b: message'."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in ((prefix,) if prefix else ()) + tuple(err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            where = LISTINGS.get(loc.split(".")[0], "the README")
            msg = f"unknown key (check the spelling; {where} lists the keys)"
        parts.append(f"at {loc or '<top>'}: {msg}")
    return "config error " + "; ".join(parts)
