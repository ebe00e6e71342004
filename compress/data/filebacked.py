"""What a stage's identity reads of a data section, and the options that only change speed.

A dataset's Params model may declare
  - `performance_keys` (a ClassVar): options that change how fast data is read, never what
    is read (`num_workers`, `pin_memory`). They are left out of stage identities and may
    differ between a stage and its source.
  - `files_digest(self) -> str`: a cheap fingerprint of the files it reads (compress.data.files).
    It joins every stage identity, so a stage whose files changed is re-run, never reused.
"""

from __future__ import annotations

import contextlib
import json
from typing import ClassVar, Iterator

from pydantic import BaseModel, Field

from compress.vocab import OPTIONS


class StreamOptions(BaseModel):
    """How a streamed dataset is read: decoding worker processes and pinned memory."""

    model_config = OPTIONS
    num_workers: int = Field(2, ge=0, description="decoding worker processes (0 = decode in "
                                                  "the training process); speed only")
    pin_memory: bool = Field(False, description="page-locked batches for faster copies to a "
                                                "GPU; speed only")

    performance_keys: ClassVar[tuple[str, ...]] = ("num_workers", "pin_memory")


def _params(section: dict):
    from compress.registry import DATASETS
    return DATASETS.get(section["name"]).params


def identity_view(section: dict) -> dict:
    """The data section without its performance-only options."""
    drop = set(getattr(_params(section), "performance_keys", ()))
    return {k: v for k, v in section.items() if k not in drop}


_MEMO: dict[str, str] | None = None  # inside one_scan_per_command: section -> fingerprint


def files_fingerprint(section: dict) -> str | None:
    """The fingerprint of the files the data section reads, or None (generated / packaged)."""
    params = _params(section)
    if params is None or not callable(getattr(params, "files_digest", None)):
        return None
    key = json.dumps(identity_view(section), sort_keys=True, default=str)
    if _MEMO is not None and key in _MEMO:
        return _MEMO[key]
    digest = params(**{k: v for k, v in section.items() if k != "name"}).files_digest()
    if _MEMO is not None:
        _MEMO[key] = digest
    return digest


@contextlib.contextmanager
def one_scan_per_command() -> Iterator[None]:
    """Within it, each data section's files are fingerprinted once: a command's planning,
    stage identities and data loads then see one state of the files, and a folder of millions
    of images is walked once, not once per stage and check. (Nested uses share the outer one.)"""
    global _MEMO
    outer = _MEMO
    _MEMO = {} if outer is None else outer
    try:
        yield
    finally:
        _MEMO = outer
