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

stage.json lists every file (`files`: key -> relative path) with its sha256; read_stage checks
each (inside the folder, present, same sha256, parses) and StageInfo.state/masks check that the
tensors fit the model they are loaded into. Per-round masks under rounds/ are not listed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Iterator

import torch
from torch import nn

from compress.core.masks import MASK_META, MaskSet, file_sha256
from compress.errors import UserError

STAGE_FILE = "stage.json"
WEIGHTS, INIT = "weights.safetensors", "init.safetensors"
HISTORY = "history.json"


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

    def state(self, key: str = "weights", like=None) -> dict[str, torch.Tensor]:
        """The tensors of file `key`; with `like` (a model or a state dict) their names and
        shapes must be the model's, else one line naming this folder and the file."""
        from safetensors import SafetensorError
        try:
            state = load_state(self.path(key))
        except (SafetensorError, OSError, ValueError) as e:
            raise self.damaged(self.record["files"][key],
                               f"is not a readable safetensors file ({_first_line(e)})") from None
        if like is not None:
            self._fits(key, state, like)
        return state

    def masks(self, like=None) -> MaskSet | None:
        """The masks (verified against masks.json); with `like` (the model), every mask must
        name one of its tensors (weights, and biases of cut channels) and have its shape."""
        if not self.has("masks"):
            return None
        from safetensors import SafetensorError
        files = self.record["files"]
        try:
            masks = MaskSet.load(self.dir, files["masks"], files.get("masks_meta", MASK_META))
        except (SafetensorError, OSError, ValueError, TypeError) as e:
            raise self.damaged(files["masks"], f"is not a readable mask set ({_first_line(e)})") \
                from None
        if like is not None:
            self._fits("masks", masks, like, partial=True)
        return masks

    def _fits(self, key: str, tensors, like, partial: bool = False) -> None:
        from compress.models.weights import mismatch
        own = like.state_dict() if isinstance(like, nn.Module) else like
        problem = mismatch(own, tensors, partial=partial)
        if problem:
            raise self.damaged(self.record["files"][key],
                               f"does not fit the model its stage.json describes ({problem})")

    def damaged(self, name: str, why: str) -> UserError:
        return damaged(self.dir, self.record.get("stage"), name, why)


def damaged(directory: Path, stage, name: str, why: str) -> UserError:
    """The one-line error for a broken file of a stage folder: which folder, which file, the fix."""
    return UserError(f"stage folder {directory}: {name} {why}; delete the folder and re-run the "
                     f"{stage or 'stage that wrote it'} stage")


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def write_record(directory: Path, record: dict) -> None:
    """stage.json with a sha256 for every file, so a later read can verify them."""
    files = record.get("files", {})
    for key, name in files.items():
        _inside(Path(directory), record.get("stage"), key, name)  # a writer's bug, caught early
    record["sha256"] = {k: file_sha256(directory / v) for k, v in files.items()}
    (directory / STAGE_FILE).write_text(json.dumps(record, indent=2, sort_keys=True, default=str))


def read_stage(directory: Path) -> StageInfo:
    """The stage in `directory`, every file it lists checked: a relative path inside the folder
    (no absolute path, no `..`, no symlink out of it), present, matching its sha256 in
    stage.json, and readable (safetensors headers, JSON). Anything else is one line naming the
    folder and the file (UserError)."""
    directory = Path(directory)
    path = directory / STAGE_FILE
    if not path.is_file():
        raise UserError(f"{directory} is not a stage folder (no {STAGE_FILE}); pass the folder a "
                        "stage printed, or its MLflow run id")
    try:
        record = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise damaged(directory, None, STAGE_FILE, f"is not valid JSON ({e})") from None
    files = record.get("files") if isinstance(record, dict) else None
    sums = record.get("sha256") if isinstance(record, dict) else None
    if not isinstance(files, dict) or not isinstance(sums, dict) \
            or not all(isinstance(record.get(k), str) for k in ("stage", "id")):
        raise damaged(directory, None, STAGE_FILE, "lacks its stage, id, files or sha256 entries")
    stage = record["stage"]
    for key, name in files.items():
        f = _inside(directory, stage, key, name)
        if not f.is_file():
            raise damaged(directory, stage, name, f"({key}) is missing")
        if file_sha256(f) != sums.get(key):
            raise damaged(directory, stage, name, f"({key}) does not match its sha256 in "
                          f"{STAGE_FILE} (corrupted or edited)")
        _readable(directory, stage, f, name)
    return StageInfo(directory, record)


def _inside(directory: Path, stage, key: str, name) -> Path:
    """directory/name, if `name` is a relative path that stays inside the folder."""
    pure = PurePosixPath(name) if isinstance(name, str) else None
    if pure is None or not name or pure.is_absolute() or PureWindowsPath(name).is_absolute() \
            or ".." in pure.parts or "\\" in name:
        raise damaged(directory, stage, STAGE_FILE, f"lists {key} as {name!r}: the files of a "
                      "stage are relative paths inside its folder")
    f = directory / pure
    try:
        target = f.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise damaged(directory, stage, str(name), f"({key}) cannot be resolved ({e})") from None
    if not target.is_relative_to(directory.resolve()):
        raise damaged(directory, stage, str(name), f"({key}) is a link to {target}, outside "
                      "the folder: the files of a stage live inside its folder")
    return f


def _readable(directory: Path, stage, f: Path, name: str) -> None:
    """A cheap check that the file parses: a safetensors header, a JSON document."""
    if f.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(str(f), framework="pt") as h:
                h.keys()
        except (SafetensorError, OSError, ValueError) as e:
            raise damaged(directory, stage, name, "is not a readable safetensors file "
                          f"({_first_line(e)})") from None
    elif f.suffix == ".json":
        try:
            json.loads(f.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise damaged(directory, stage, name, f"is not valid JSON ({e})") from None


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
