"""MaskSet: parameter name -> boolean mask, with densities and verified persistence."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterator, Mapping

import torch

from compress.errors import UserError

MASK_FILE = "masks.safetensors"
MASK_META = "masks.json"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class MaskSet(Mapping[str, torch.Tensor]):
    """Immutable-by-convention map of parameter names to boolean tensors (True = kept)."""

    def __init__(self, masks: Mapping[str, torch.Tensor]):
        self._masks: dict[str, torch.Tensor] = {}
        for name, m in masks.items():
            if m.dtype != torch.bool:
                raise TypeError(f"mask {name!r} must be boolean, got {m.dtype}")
            self._masks[name] = m.detach().cpu()

    # Mapping protocol
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    @classmethod
    def ones_like(cls, params: Mapping[str, torch.Tensor]) -> "MaskSet":
        return cls({n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()})

    def kept(self) -> dict[str, int]:
        return {n: int(m.sum()) for n, m in self._masks.items()}

    def layer_density(self) -> dict[str, float]:
        return {n: float(m.float().mean()) for n, m in self._masks.items()}

    def density(self) -> float:
        total = sum(m.numel() for m in self._masks.values())
        return sum(self.kept().values()) / total if total else 1.0

    def __and__(self, other: "MaskSet") -> "MaskSet":
        return MaskSet({n: m & other[n] for n, m in self._masks.items()})

    def equal(self, other: "MaskSet") -> bool:
        return set(self) == set(other) and all(torch.equal(m, other[n]) for n, m in self.items())

    def summary(self) -> dict:
        return {
            "density": self.density(),
            "layer_density": self.layer_density(),
            "kept": self.kept(),
            "total": {n: m.numel() for n, m in self._masks.items()},
        }

    def save(self, directory: Path, **meta) -> Path:
        """Write masks.safetensors and masks.json (densities, sha256, caller metadata)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / MASK_FILE
        save_file({n: m.contiguous() for n, m in self._masks.items()}, str(path))
        info = {**meta, **self.summary(), "sha256": file_sha256(path), "file": MASK_FILE}
        (directory / MASK_META).write_text(json.dumps(info, indent=2, sort_keys=True))
        return path

    @classmethod
    def load(cls, directory: Path, file: str = MASK_FILE, meta: str = MASK_META) -> "MaskSet":
        """Load and verify a saved MaskSet; a sha256 mismatch is a user-facing error."""
        from safetensors.torch import load_file

        directory = Path(directory)
        path, meta_path = directory / file, directory / meta
        if not path.exists() or not meta_path.exists():
            raise UserError(f"no mask set in {directory} (expected {file} and {meta})")
        try:
            expected = json.loads(meta_path.read_text())["sha256"]
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{meta_path} is not a valid mask description ({e})") from None
        actual = file_sha256(path)
        if actual != expected:
            raise UserError(
                f"{path} is corrupted or was edited: sha256 {actual[:12]}... does not match "
                f"{str(expected)[:12]}... in {meta}; re-run the stage that produced it"
            )
        return cls(load_file(str(path)))
