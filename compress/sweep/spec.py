"""The sweep file: a grid of cells over one shared pretrain, and how each cell is named and set.

A sweep file:
    name: lenet-sweep
    config: {data: {name: mnist5k}, model: {name: lenet300}}   # base of every stage
    pretrain: {train: {duration: 2000it}}                       # optional, the shared pretrain
    grid:
      method: [magnitude, random]       # method names
      density: [0.5, 0.2]               # method.density
      seed: [0, 1, 2]                   # the prune seed (the pretrain is shared)
      train.lr: [0.001, 0.003]          # any other config key
    export: false                       # also export every cell (default false)
    # --backend ray only:
    resources: {num_cpus: 1, num_gpus: 0}   # what one cell (and the pretrain) asks Ray for
    max_retries: 3                          # re-runs of a cell whose worker process died
    storage: /mnt/shared/compress           # optional: a folder every Ray node mounts
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator

from compress.vocab import OPTIONS

from compress.config import load_spec, merge, parse_set


class Resources(BaseModel):
    """Ray task resources of one cell (Ray's own names and units)."""

    model_config = OPTIONS
    num_cpus: float = Field(1, ge=0, description="CPU slots; also the cell's torch threads")
    num_gpus: float = Field(0, ge=0, description="GPUs (set train.device: cuda to use them)")
    memory: int | None = Field(None, ge=0, description="bytes of memory to reserve")


class SweepSpec(BaseModel):
    model_config = OPTIONS
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    config: dict[str, Any] = Field(default_factory=dict)
    pretrain: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]]
    export: bool = False
    resources: Resources = Field(default_factory=Resources)
    max_retries: int = Field(3, ge=0, description="Ray: retries of a cell whose worker died")
    storage: str | None = Field(None, description="Ray: absolute path every node mounts")

    @field_validator("grid")
    @classmethod
    def _grid(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if not grid.get("method"):
            raise ValueError("grid.method must list at least one method")
        for key, values in grid.items():
            if not values:
                raise ValueError(f"grid.{key} is empty")
            if len(set(map(json.dumps, values))) != len(values):
                raise ValueError(f"grid.{key} lists a value twice")
        return grid

    @field_validator("storage")
    @classmethod
    def _storage(cls, storage: str | None) -> str | None:
        # Cells on other machines have other working directories: a relative path means nothing.
        if storage is not None and not Path(storage).is_absolute():
            raise ValueError(f"must be an absolute path every Ray node mounts, not {storage!r}")
        return storage


def load_sweep(path: Path) -> SweepSpec:
    return load_spec(path, SweepSpec, "sweep file")


def cells(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every combination of the grid, in a stable order."""
    keys = list(spec.grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(spec.grid[k] for k in keys))]


def cell_name(cell: dict[str, Any]) -> str:
    """e.g. magnitude-d0.5-train.lr_0.001-s0: also a folder and a pipeline name, so characters
    outside [A-Za-z0-9_.-] (from values like [64, 32]) become '_'."""
    parts = [str(cell["method"])]
    for key, value in cell.items():
        if key == "method":
            continue
        short = {"density": "d", "seed": "s"}.get(key, f"{key}_")
        parts.append(f"{short}{json.dumps(value) if isinstance(value, (list, dict)) else value}")
    return re.sub(r"[^A-Za-z0-9_.-]", "_", "-".join(parts))


def cell_layer(cell: dict[str, Any]) -> tuple[dict, int | None]:
    """The config layer a cell sets (method first, so method options refine it) and its seed."""
    layer: dict = {"method": {"name": cell["method"]}}
    for key, value in cell.items():
        if key in ("method", "seed"):
            continue
        path = f"method.{key}" if key == "density" else key
        layer = merge(layer, parse_set(f"{path}={json.dumps(value)}"))
    return layer, cell.get("seed")


def cell_stages(spec: SweepSpec) -> list[dict]:
    """A cell's pipeline: prune the shared pretrain (`dense`), optionally export."""
    stages = [{"id": "prune", "stage": "prune", "from": "dense"}]
    if spec.export:
        stages.append({"id": "export", "stage": "export", "from": "prune"})
    return stages


def headline(record: dict) -> dict[str, float]:
    m = record.get("metrics", {})
    return {k: float(v) for k, v in m.items() if k.startswith(("test_", "val_"))} | \
        {"density": float(record.get("density", 1.0))}
