"""Closed vocabularies of the config, defined once: the config validates against them and the
modules that act on them (export, precision, retrain controls) import the same names."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import ConfigDict

Exporter = Literal["auto", "torchscript", "dynamo"]
Precision = Literal["fp32", "fp16", "int8-dynamic", "int8-static"]
RetrainMode = Literal["finetune", "rewind", "reinit", "scratch_e", "scratch_b", "random_prune"]
Scope = Literal["layerwise", "global"]

EXPORTERS: tuple[str, ...] = get_args(Exporter)
PRECISIONS: tuple[str, ...] = get_args(Precision)
RETRAIN_MODES: tuple[str, ...] = get_args(RetrainMode)

# How every options model validates: unknown keys are refused, and so are NaN and ±inf in any
# number (`train.lr=.inf` is a mistake to report at once, not a run that diverges).
OPTIONS = ConfigDict(extra="forbid", allow_inf_nan=False)
# Seeds seed torch, numpy and Python alike: numpy takes 0 <= seed < 2**32.
MAX_SEED = 2**32 - 1
