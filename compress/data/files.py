"""Cheap fingerprints of data files: what a stage's identity and the registry's lineage tags
call "the data" for file-backed datasets.

The digest (sha256, versioned) covers
  - every file's path relative to the dataset's root, its size and its mtime (ns), sorted;
  - the contents of a seeded sample of the files (at most SAMPLE_FILES of them), each read in
    full up to WHOLE_FILE bytes, larger ones as head, tail and seeded blocks.
So an added, removed, renamed, resized or rewritten file always changes it (a write sets the
mtime); an edit that restores both size and mtime is caught only in a sampled file. The cost
is one stat per file plus at most SAMPLE_FILES * WHOLE_FILE bytes read, whatever the size of
the dataset.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from compress.errors import UserError

VERSION = "files-v1"
SAMPLE_FILES = 64
WHOLE_FILE = 1 << 20  # files up to 1 MiB are hashed whole
BLOCK = 1 << 16  # larger ones: head, tail and BLOCKS seeded blocks of 64 KiB
BLOCKS = 14


@dataclass(frozen=True, slots=True)  # slots: a million of them take ~130 MB, not ~250
class FileStat:
    rel: str  # path relative to the root, with "/" separators
    size: int
    mtime_ns: int


def stat_file(root: Path, rel: str, entry: os.DirEntry | None = None) -> FileStat:
    """The size and mtime of root/rel (from a scandir entry when there is one: no extra call)."""
    try:
        st = entry.stat() if entry is not None else (root / rel).stat()
    except OSError as e:
        raise UserError(f"cannot read {root / rel}: {e.strerror or e}") from None
    return FileStat(rel, st.st_size, st.st_mtime_ns)


def files_digest(root: Path, stats: Iterable[FileStat]) -> str:
    """The fingerprint of the files `stats` under `root` (see the module docstring)."""
    ordered = sorted(stats, key=lambda s: s.rel)
    h = hashlib.sha256(VERSION.encode())
    for s in ordered:
        h.update(f"{s.rel}\0{s.size}\0{s.mtime_ns}\n".encode())
    # The sample depends only on the file list, so the same files give the same digest.
    rng = random.Random(f"{VERSION}:{len(ordered)}:{h.hexdigest()}")
    picked = sorted(rng.sample(range(len(ordered)), min(SAMPLE_FILES, len(ordered))))
    for i in picked:
        h.update(content_digest(root / ordered[i].rel, ordered[i].size, rng))
    return h.hexdigest()


def content_digest(path: Path, size: int, rng: random.Random) -> bytes:
    """sha256 of the file, or of its head, tail and seeded blocks when it is large."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            if size <= WHOLE_FILE:
                h.update(fh.read())
            else:
                for offset in block_offsets(size, rng):
                    fh.seek(offset)
                    h.update(fh.read(BLOCK))
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    return h.digest()


def block_offsets(size: int, rng: random.Random) -> list[int]:
    middle = sorted(rng.randrange(BLOCK, size - 2 * BLOCK) for _ in range(BLOCKS)) \
        if size > 3 * BLOCK else []
    return [0, *middle, max(0, size - BLOCK)]


def paths_digest(paths: Sequence[Path]) -> str:
    """The fingerprint of a few named files (a table's train/val/test files, say)."""
    root = Path(os.path.commonpath([str(Path(p).resolve().parent) for p in paths]))
    return files_digest(root, (stat_file(root, os.path.relpath(Path(p).resolve(), root))
                               for p in paths))
