"""Deployment precision and execution providers: fp16 / INT8 copies of an fp32 ONNX model.

- fp16: every float tensor converted to float16 (onnxconverter-common) except the graph's
  input and output, which stay float32 (keep_io_types) so callers see the same interface.
- int8-dynamic: weights stored as int8, activations quantized at run time per batch
  (onnxruntime.quantization.quantize_dynamic); no calibration data.
- int8-static: weights and activations int8 in QDQ format, activation ranges calibrated
  (MinMax) on batches of the training split (quantize_static).

INT8 settings: weights int8 per output channel with `reduce_range` (7-bit), which onnxruntime
recommends for x86 CPUs without VNNI, where 8-bit products can otherwise saturate. The
accuracy gate runs on this machine's CPU provider, and with reduce_range what it measures is
what any CPU deployment gets (on the default CPNA export, per-channel weights without
reduce_range cost 5 points of test accuracy on an AVX2 CPU, with it none: see
`bench/export_precision.py --int8-variants`). Activations are
uint8 (asymmetric) for CPU deployments; when CUDA or TensorRT is among export.providers they
are symmetric int8, which TensorRT requires.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch

from compress.errors import UserError
from compress.vocab import PRECISIONS
from compress.export.onnx import ExportError, INPUT_NAME, silenced, write_metadata

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
# Parity, accuracy and latency are measured here with this provider, whatever is recorded.
CHECK_PROVIDER = "CPUExecutionProvider"
_GPU_PROVIDERS = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider"})


def known_providers() -> list[str]:
    """Every execution provider name onnxruntime knows (built into this wheel or not)."""
    return list(ort.get_all_providers())


def check_providers(providers: Sequence[str]) -> list[str]:
    """The providers in order, duplicates dropped; UserError naming the valid ones otherwise."""
    known = known_providers()
    if not providers:
        raise UserError(f"export.providers is empty; name at least one of {', '.join(known)}")
    for name in providers:
        if name not in known:
            raise UserError(f"unknown execution provider {name!r}; valid: {', '.join(known)}")
    return list(dict.fromkeys(providers))


def unavailable_here(providers: Sequence[str]) -> list[str]:
    """The providers this machine's onnxruntime cannot run (recorded for deployment elsewhere)."""
    here = set(ort.get_available_providers())
    return [p for p in providers if p not in here]


def calibration_batches(split, batches: int, batch_size: int, seed: int) -> list[np.ndarray]:
    """`batches` float32 input batches of a seeded random sample of `split` (a data split; fewer
    if it is smaller)."""
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    picked = order[:batches * batch_size]
    return [x.numpy().astype(np.float32) for x, _ in
            split.batches(picked[i:i + batch_size] for i in range(0, len(picked), batch_size))]


def reduce_precision(src: Path, dest: Path, precision: str, *,
                     calibration: Iterable[np.ndarray] | None = None,
                     providers: Sequence[str] = DEFAULT_PROVIDERS,
                     metadata: dict | None = None) -> Path:
    """Write the `precision` version of the fp32 ONNX model `src` to `dest`.

    Its input and output keep the fp32 model's names, types and shapes (checked). The file
    appears only when conversion, check and metadata succeeded.
    """
    if precision not in PRECISIONS or precision == "fp32":
        raise UserError(f"cannot reduce to precision {precision!r}; "
                        f"choose one of {', '.join(PRECISIONS[1:])}")
    if precision == "int8-static" and calibration is None:
        raise UserError("int8-static needs calibration batches")
    dest = Path(dest)
    fd, name = tempfile.mkstemp(prefix=f".{dest.stem}.", suffix=".tmp.onnx", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        with silenced():
            _CONVERTERS[precision](Path(src), tmp, calibration, providers)
        onnx.checker.check_model(str(tmp), full_check=True)
        if signature(tmp) != signature(src):
            raise ExportError(f"the {precision} model's interface {signature(tmp)} differs from "
                              f"the fp32 model's {signature(src)}")
        if metadata:
            write_metadata(tmp, metadata)
        os.replace(tmp, dest)
    except UserError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise ExportError(f"{precision} conversion of {Path(src).name} failed: "
                          f"{type(e).__name__}: {first}"[:300]) from e
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def signature(path: Path) -> list[tuple[str, int, tuple]]:
    """(name, element type, shape) of every graph input and output."""
    graph = onnx.load(str(path), load_external_data=False).graph

    def one(v) -> tuple[str, int, tuple]:
        t = v.type.tensor_type
        return v.name, t.elem_type, tuple(d.dim_param or d.dim_value for d in t.shape.dim)
    return [one(v) for v in graph.input] + [one(v) for v in graph.output]


def accuracy_gate(fp32_accuracy: float, accuracy: float, max_drop: float,
                  precision: str) -> float:
    """The accuracy change (reduced - fp32); ExportError if it drops more than `max_drop`."""
    change = accuracy - fp32_accuracy
    # `not <=` so that a NaN accuracy fails too.
    if not -change <= max_drop + 1e-12:
        raise ExportError(
            f"the {precision} model drops test accuracy by {-change:.4f} ({fp32_accuracy:.4f} -> "
            f"{accuracy:.4f}), more than export.max_accuracy_drop={max_drop:g}; nothing was "
            "written or registered (raise the limit, calibrate on more export.calibration_batches, "
            "or choose another export.precision)")
    return change


def _int8_settings(providers: Sequence[str]) -> dict:
    from onnxruntime.quantization import QuantType
    gpu = bool(_GPU_PROVIDERS & set(providers))
    return {"per_channel": True, "reduce_range": True, "weight_type": QuantType.QInt8,
            "activation_type": QuantType.QInt8 if gpu else QuantType.QUInt8}


def _fp16(src: Path, dest: Path, _calibration, _providers) -> None:
    from onnxconverter_common.float16 import convert_float_to_float16
    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dest))


def _int8_dynamic(src: Path, dest: Path, _calibration, providers) -> None:
    from onnxruntime.quantization import quantize_dynamic
    settings = _int8_settings(providers)
    settings.pop("activation_type")  # dynamic: activations are uint8, chosen at run time
    quantize_dynamic(str(src), str(dest), **settings)


def _int8_static(src: Path, dest: Path, calibration, providers) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
    settings = _int8_settings(providers)
    symmetric = settings["activation_type"] == settings["weight_type"]
    quantize_static(str(src), str(dest), _Reader(calibration), quant_format=QuantFormat.QDQ,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": symmetric}, **settings)


class _Reader:
    """A CalibrationDataReader (onnxruntime checks for `get_next`) over input batches."""

    def __init__(self, batches: Iterable[np.ndarray]):
        self._batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


_CONVERTERS = {"fp16": _fp16, "int8-dynamic": _int8_dynamic, "int8-static": _int8_static}
