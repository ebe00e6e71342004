"""Export to ONNX, check it against torch with onnxruntime, time it.

The only module of the package that imports onnx / onnxruntime (the `export` extra).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from compress.errors import UserError
from compress.vocab import EXPORTERS

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# TorchScript first: exporting a 60->1024->1 MLP takes ~0.1-0.3 s with it against ~2 s warm /
# 6-8 s cold (first call in a process) with dynamo in torch 2.14, for the same graph. Some ops
# it cannot express (adaptive_avg_pool2d to a size that does not divide the input: VGG at
# 32x32); `auto` falls back to dynamo there.
DEFAULT_EXPORTER = "auto"
DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch._dynamo", "torch.fx",
                  "onnxscript", "onnx_ir")
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64,
                "tensor(float16)": np.float16}


class ExportError(UserError):
    """Export, ONNX validation or torch/onnxruntime parity failed (one-line message, exit 2)."""


@contextlib.contextmanager
def silenced() -> Iterator[io.StringIO]:
    """Swallow the exporters' prints, warnings and log records; yields what was printed."""
    buf = io.StringIO()
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf), \
                contextlib.redirect_stderr(buf), _native_log_muted():
            warnings.simplefilter("ignore")
            yield buf
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def _native_log_muted() -> Iterator[None]:
    """The torchscript exporter's C++ log (always on in torch 2.14: it dumps the whole IR graph
    when an op fails) goes to the C-level stderr, pointed at /dev/null meanwhile: stdout stays
    clean for --json, stderr for one-line errors."""
    torch._C._jit_set_onnx_log_output_stream("stderr")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _example_for(model: nn.Module, example: torch.Tensor) -> torch.Tensor:
    """The example on the model's device, with batch >= 2 so no exporter specialises batch == 1."""
    param = next(iter(model.parameters()), None)
    if param is not None:
        example = example.to(param.device)
    if example.shape[0] < 2:
        example = example[:1].expand(2, *example.shape[1:]).contiguous()
    return example


def _run_exporter(model: nn.Module, example: torch.Tensor, dest: Path, opset: int | None,
                  exporter: str) -> None:
    kwargs: dict = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False,
                        external_data=False)
    if opset is not None:
        kwargs["opset_version"] = opset
    # Batch is the only dynamic axis; each exporter spells it differently.
    if exporter == "dynamo":
        kwargs.update(dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},))
    else:
        kwargs.update(dynamo=False,
                      dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    was_training = model.training
    model.eval()
    try:
        with silenced():
            torch.onnx.export(model, (example,), str(dest), **kwargs)
    finally:
        model.train(was_training)


def _export_with(model: nn.Module, example: torch.Tensor, dest: Path, opset: int | None,
                 exporter: str) -> None:
    """Run `exporter`; `auto` is torchscript, then dynamo if torchscript fails."""
    if exporter != "auto":
        _run_exporter(model, example, dest, opset, exporter)
        return
    try:
        _run_exporter(model, example, dest, opset, "torchscript")
    except Exception as first:
        try:
            _run_exporter(model, example, dest, opset, "dynamo")
        except Exception as second:
            raise RuntimeError(f"torchscript: {_one_line(first)}; dynamo: "
                               f"{_one_line(second)}") from second


def _metadata_value(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def write_metadata(path: Path, metadata: dict) -> None:
    """Merge `metadata` into the file's metadata_props (non-string values as JSON)."""
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    props.update({str(k): _metadata_value(v) for k, v in metadata.items()})
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path,
                metadata: dict[str, str] | None = None, opset: int | None = None,
                exporter: str = DEFAULT_EXPORTER) -> Path:
    """Write `model` as a checked single-file ONNX graph (input "input", output "logits").

    The batch axis is dynamic. The file appears atomically: all work happens on a temporary
    file next to `path`, renamed over it only once export, check and metadata succeeded.
    """
    if exporter not in EXPORTERS:
        raise UserError(f"unknown ONNX exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp.onnx", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _export_with(model, _example_for(model, example), tmp, opset, exporter)
        onnx.checker.check_model(str(tmp), full_check=True)
        if metadata:
            write_metadata(tmp, metadata)
        os.replace(tmp, path)
    except ExportError:
        raise
    except Exception as e:
        # Exporter internals fail with long multi-line errors; the CLI needs one line.
        raise ExportError(f"ONNX export of {type(model).__name__} to {path} failed "
                          f"({exporter} exporter): {_one_line(e)}") from e
    finally:
        tmp.unlink(missing_ok=True)
    return path


def onnx_metadata(path: Path) -> dict[str, str]:
    """The metadata_props of an ONNX file, as a dict."""
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def ort_session(path: Path, threads: int = 2,
                providers: Sequence[str] | None = None) -> ort.InferenceSession:
    """An onnxruntime session with fixed thread counts and no spin-waiting (fair timings)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Spinning threads burn CPU between runs and distort benchmarks of everything else.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    # onnxruntime writes warnings straight to the C-level stderr; keep the CLI quiet.
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts,
                                providers=list(providers or DEFAULT_PROVIDERS))


def _input_dtype(session: ort.InferenceSession) -> type:
    kind = session.get_inputs()[0].type
    if kind not in _NUMPY_TYPES:
        raise ExportError(f"unsupported ONNX input type {kind}")
    return _NUMPY_TYPES[kind]


def _run(session: ort.InferenceSession, inputs: np.ndarray | dict) -> np.ndarray:
    """The first output on `inputs`: an array for the one input, or a feed of named inputs."""
    if isinstance(inputs, dict):
        feed = inputs
    else:
        feed = {session.get_inputs()[0].name: inputs.astype(_input_dtype(session), copy=False)}
    return session.run([session.get_outputs()[0].name], feed)[0]


@torch.no_grad()
def _torch_output(model: nn.Module, inputs: torch.Tensor) -> np.ndarray:
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        return model(inputs.to(device)).detach().cpu().double().numpy()
    finally:
        model.train(was_training)


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max|got - want| / max(max|want|, 1e-12), in float64 (NaN anywhere gives NaN)."""
    if want.size == 0:
        return 0.0
    got, want = got.astype(np.float64), want.astype(np.float64)
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-12))


def check_parity(onnx_path: Path, reference: nn.Module, inputs: torch.Tensor, rtol: float = 1e-5,
                 providers: Sequence[str] | None = None, feed: dict | None = None) -> float:
    """Relative error of onnxruntime vs `reference` on `inputs`; ExportError above `rtol`.
    With `feed` (named raw inputs, e.g. a table's raw rows), onnxruntime runs on the feed and
    `reference` on `inputs`, the same rows as the model's encoded input."""
    session = ort_session(onnx_path, providers=providers)
    got = _run(session, feed if feed is not None else inputs.detach().cpu().numpy())
    want = _torch_output(reference, inputs)
    if got.shape != want.shape:
        raise ExportError(f"ONNX model {Path(onnx_path).name} outputs shape {got.shape}, "
                          f"the torch model {want.shape}")
    err = relative_error(got, want)
    # `not <=` so that a NaN error fails too.
    if not err <= rtol:
        raise ExportError(f"ONNX model {Path(onnx_path).name} disagrees with the torch model: "
                          f"relative error {err:.3g} > tolerance {rtol:g} on {len(inputs)} inputs")
    return err


def ort_latencies(paths: Sequence[Path], batch: int, in_features: int | Sequence[int],
                  repeats: int = 50, threads: int = 2, warmup: int = 5,
                  providers: Sequence[str] | None = None) -> list[float]:
    """Median seconds of one run of each model on the same random batch, timed round-robin.

    Every round runs each model once, in turn: a slow spell of the (shared) machine then hits
    all models alike instead of whichever happened to be timed at that moment.
    """
    sessions = [ort_session(p, threads=threads, providers=providers) for p in paths]
    shape = (in_features,) if isinstance(in_features, int) else tuple(in_features)
    x = np.random.default_rng(0).standard_normal((batch, *shape))
    feeds = [x.astype(_input_dtype(s)) for s in sessions]
    for s, xs in zip(sessions, feeds):
        for _ in range(warmup):
            _run(s, xs)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(max(1, repeats)):
        for s, xs, ts in zip(sessions, feeds, times):
            t0 = time.perf_counter()
            _run(s, xs)
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]
