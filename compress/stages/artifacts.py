"""A stage's output folder: written atomically, described by stage.json, verified on read.

Layout of a stage folder:
    stage.json            what ran: stage, method, id, run id, resolved config, metrics, files
    weights.safetensors   the state dict after the stage (pruned weights exactly 0)
    init.safetensors      the dense initialisation (carried forward for rewind)
    masks.safetensors     + masks.json (densities, sha256)      [after pruning]
    history.json          per-epoch metrics
    density.png           kept fraction per layer               [after pruning]
    model.onnx            structurally shrunk ONNX, in export.precision        [export]
    model.fp32.onnx       the fp32 model it came from (precision != fp32)      [export]
    export_table.json     + .md: dense vs shrunk (vs reduced) size, speed, accuracy [export]
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from compress.core.masks import MaskSet, file_sha256
from compress.errors import UserError

STAGE_FILE = "stage.json"
WEIGHTS, INIT = "weights.safetensors", "init.safetensors"


@contextlib.contextmanager
def staging(out_dir: Path) -> Iterator[Path]:
    """Yield a temp folder next to out_dir; it replaces out_dir only if the block succeeds."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield tmp
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_state(model_or_state, path: Path) -> str:
    from safetensors.torch import save_file
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path))
    return file_sha256(path)


def load_state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(path))


@dataclass
class StageInfo:
    """A finished stage folder, parsed and verified."""

    dir: Path
    record: dict

    @property
    def stage(self) -> str:
        return self.record["stage"]

    @property
    def id(self) -> str:
        return self.record["id"]

    def path(self, key: str) -> Path:
        return self.dir / self.record["files"][key]

    def has(self, key: str) -> bool:
        return key in self.record.get("files", {})

    def state(self, key: str = "weights") -> dict[str, torch.Tensor]:
        return load_state(self.path(key))

    def masks(self) -> MaskSet | None:
        return MaskSet.load(self.dir) if self.has("masks") else None


def write_record(directory: Path, record: dict) -> None:
    """stage.json with a sha256 for every file, so a later read can verify them."""
    files = record.get("files", {})
    record["sha256"] = {k: file_sha256(directory / v) for k, v in files.items()}
    (directory / STAGE_FILE).write_text(json.dumps(record, indent=2, sort_keys=True, default=str))


def read_stage(directory: Path) -> StageInfo:
    directory = Path(directory)
    path = directory / STAGE_FILE
    if not path.is_file():
        raise UserError(f"{directory} is not a stage folder (no {STAGE_FILE}); pass the folder a "
                        "stage printed, or its MLflow run id")
    try:
        record = json.loads(path.read_text())
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON ({e}); re-run the stage") from None
    for key, name in record.get("files", {}).items():
        f = directory / name
        if not f.is_file():
            raise UserError(f"{f} is missing; re-run the {record.get('stage')} stage")
        if key != "masks" and file_sha256(f) != record.get("sha256", {}).get(key):
            raise UserError(f"{f} does not match the sha256 in {STAGE_FILE} (corrupted or "
                            f"edited); re-run the {record.get('stage')} stage")
    return StageInfo(directory, record)


def plot_density(masks: MaskSet, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(masks)
    dens = [masks.layer_density()[n] for n in names]
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(names) + 2), 3.2))
    ax.bar(range(len(names)), dens, color="#3b6ea8")
    ax.set_xticks(range(len(names)), [n.removesuffix(".weight") for n in names], rotation=30,
                  ha="right", fontsize=8)
    ax.set_ylabel("density (fraction kept)")
    ax.set_yscale("log")
    ax.set_title(f"{title}: global density {masks.density():.4f}", fontsize=9)
    for i, d in enumerate(dens):
        ax.annotate(f"{d:.3g}", (i, d), ha="center", va="bottom", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curve(rows: list[dict], path: Path, method: str) -> None:
    """Test accuracy vs density for the ticket and every control trained on the same masks."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = sorted({k.removesuffix("_test_accuracy") for r in rows for k in r
                     if k.endswith("_test_accuracy")})
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    dens = [r["density"] for r in rows]
    for name in series:
        ax.plot(dens, [r.get(f"{name}_test_accuracy") for r in rows], marker="o", label=name)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("density (fraction of weights kept)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{method}: accuracy vs density", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
