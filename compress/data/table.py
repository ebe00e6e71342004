"""`table`: a CSV, Parquet or NPZ file of rows, a `target` column and feature columns.

Numeric and boolean columns are standardised, categorical ones one-hot encoded
(compress.data.table_encoding; the exported ONNX model does the same in front of the network,
so a served model takes RAW rows). Strings are categorical unless `data.categorical` lists the
categorical columns; then any other non-numeric column is an error. Categorical numbers must
be whole (codes).

Memory: a table is held in memory, as pandas reads it (raw columns, kept for exports and raw
checks) and as the encoded float32 matrix. "Too big" means a file larger than
`max_memory_mb` on disk, or an encoded matrix (rows x encoded width x 4 bytes) larger than
that: refused with one line before it is built. Bigger data should be sampled, or streamed as
files (image folders).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from compress.data.base import DataBundle, Split
from compress.data.files import paths_digest
from compress.data.splitting import SPLITS, Fractions, check_classes, stratified
from compress.data.table_encoding import encode, encoded_names, fit_columns, raw_columns
from compress.data.table_io import read_table, table_format
from compress.errors import UserError
from compress.registry import register_dataset

MLFLOW_TYPES = {"b": "boolean", "i": "long", "u": "long", "f": "double"}  # numpy kind -> type


class TableParams(Fractions):
    path: str | None = Field(None, description="one table file, split by val_fraction / "
                             "test_fraction (stratified); or give train, val and test")
    train: str | None = Field(None, description="the train split's file (with val and test)")
    val: str | None = Field(None, description="the val split's file")
    test: str | None = Field(None, description="the test split's file")
    target: str | None = Field(None, description="required: the column holding the class")
    features: list[str] | None = Field(None, description="input columns; default: all but "
                                       "the target")
    categorical: list[str] | Literal["auto"] = Field(
        "auto", description="columns to one-hot encode; auto: every string column")
    nan: Literal["error", "drop"] = Field("error", description="a missing or infinite value "
                                          "in a used column: error, or drop the row")
    max_categories: int = Field(1000, ge=1, description="most distinct values a categorical "
                                "column may have (its one-hot width)")
    max_memory_mb: float = Field(4096, gt=0, description="largest file, and largest encoded "
                                 "float32 matrix, held in memory")

    @field_validator("path", "train", "val", "test")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        # Recorded absolute, so later commands (export --from, resume) find it from any folder.
        return str(Path(os.path.expanduser(value)).resolve()) if value and value.strip() else None

    @model_validator(mode="after")
    def _sources(self):
        if not self.target:
            raise ValueError("data.target is required: the name of the column holding the class")
        split_files = [self.train, self.val, self.test]
        if self.path and any(split_files):
            raise ValueError("give data.path (one file, split by fractions) or data.train, "
                             "data.val and data.test, not both")
        if not self.path and not all(split_files):
            missing = [s for s, f in zip(SPLITS, split_files) if not f]
            raise ValueError("data.path is required (or all of data.train, data.val and "
                             f"data.test; missing: {', '.join('data.' + m for m in missing)})")
        for f in self.files():
            table_format(Path(f))  # an unknown format fails with the config
        return self

    def files(self) -> list[str]:
        return [self.path] if self.path else [self.train, self.val, self.test]  # type: ignore

    def files_digest(self) -> str:
        for f in self.files():
            if not Path(f).is_file():
                raise UserError(f"table file {f} does not exist")
        return paths_digest([Path(f) for f in self.files()])


# ------------------------------------------------------------------------------ columns
def column_specs(frame, p: TableParams) -> list[dict]:
    """Name, kind (numeric | categorical) and MLflow type of every feature column."""
    features = p.features if p.features is not None else [c for c in frame.columns if c != p.target]
    if not features:
        raise UserError(f"the table has no feature columns besides the target {p.target!r}")
    if p.target in features:
        raise UserError(f"data.features lists the target column {p.target!r}; remove it")
    listed = None if p.categorical == "auto" else set(p.categorical)
    for name in [*features, *(listed or ())]:
        if name not in frame.columns:
            raise UserError(f"column {name!r} (named in data.features or data.categorical) is "
                            f"not in the table; its columns: {_names(frame.columns)}")
    specs = []
    for name in features:
        kind_code = frame[name].dtype.kind
        typ = MLFLOW_TYPES.get(kind_code, "string" if _is_text(frame[name]) else None)
        if typ is None:
            raise UserError(f"column {name!r} has type {frame[name].dtype}; tables hold numbers, "
                            "booleans and strings (drop it from data.features)")
        categorical = typ == "string" if listed is None else name in listed
        if typ == "string" and not categorical:
            raise UserError(f"column {name!r} is not numeric (e.g. {_example(frame[name])!r}): "
                            "add it to data.categorical to one-hot encode it, or leave it out "
                            "of data.features")
        if typ == "boolean" and categorical:
            raise UserError(f"column {name!r} is boolean: it is used as a number (0/1); remove "
                            "it from data.categorical")
        specs.append({"name": name, "type": typ,
                      "kind": "categorical" if categorical else "numeric"})
    return specs


def _is_text(column) -> bool:
    return column.dtype.kind in "OUS" or str(column.dtype) in ("str", "string")


def _example(column):
    values = column.dropna()
    return values.iloc[0] if len(values) else None


def _names(columns) -> str:
    shown = ", ".join(repr(c) for c in list(columns)[:12])
    return shown + (" ..." if len(columns) > 12 else "")


def bad_rows(frame, specs: list[dict], target: str) -> dict[str, np.ndarray]:
    """Per used column, a boolean mask of its missing or infinite values."""
    out = {}
    for name in [s["name"] for s in specs] + [target]:
        column = frame[name]
        mask = column.isna().to_numpy()
        if column.dtype.kind == "f":
            mask = mask | ~np.isfinite(column.to_numpy())
        if mask.any():
            out[name] = mask
    return out


def clean(frame, specs: list[dict], p: TableParams, where: str):
    """The frame without rows holding missing/infinite values (nan: drop), or UserError
    naming the first such column (nan: error); and how many rows were dropped."""
    bad = bad_rows(frame, specs, p.target or "")
    if not bad:
        return frame, 0
    if p.nan == "error":
        name, mask = next(iter(bad.items()))
        row = int(np.flatnonzero(mask)[0])
        raise UserError(f"column {name!r} of {where} has {int(mask.sum())} missing or infinite "
                        f"value(s) (first in data row {row + 1}); set data.nan=drop to drop such "
                        "rows, or fix the file")
    keep = ~np.logical_or.reduce(list(bad.values()))
    if not keep.any():
        raise UserError(f"every row of {where} has a missing or infinite value; nothing is left "
                        "after data.nan=drop")
    return frame[keep].reset_index(drop=True), int((~keep).sum())


# ------------------------------------------------------------------------------ targets
def class_values(column, name: str) -> np.ndarray:
    """Target values as ints (whole numbers, booleans) or strings; UserError otherwise."""
    values = column.to_numpy()
    if column.dtype.kind == "f":
        if not np.all(values == np.round(values)):
            bad = values[values != np.round(values)][0]
            raise UserError(f"target column {name!r} holds non-integer numbers (e.g. {bad}): "
                            "compress trains classifiers; bin the values into classes first")
        return values.astype(np.int64)
    if column.dtype.kind in "biu":
        return values.astype(np.int64)
    return values.astype(str)


# ------------------------------------------------------------------------------ loader
@register_dataset("table", params=TableParams,
                  summary="your table (CSV, Parquet or NPZ): a target column, numeric and "
                          "categorical features; preprocessing exported into the ONNX model",
                  defaults={"needs_files": True})
def load_table(p: TableParams) -> DataBundle:
    frames, dropped, specs = _read_splits(p)
    labels_raw = {s: class_values(f[p.target], p.target) for s, f in frames.items()}
    classes = np.unique(np.concatenate(list(labels_raw.values())))
    names = [str(c) for c in classes]
    check_classes(names, {s: {str(v) for v in np.unique(v)} for s, v in labels_raw.items()},
                  f"table column {p.target!r}")
    columns = fit_columns(frames["train"], specs, p.max_categories)
    width = len(encoded_names(columns))
    rows = sum(len(f) for f in frames.values())
    if rows * width * 4 > p.max_memory_mb * 2**20:
        raise UserError(f"the encoded table would take {rows * width * 4 / 2**20:,.0f} MB "
                        f"({rows:,} rows x {width:,} inputs), more than data.max_memory_mb="
                        f"{p.max_memory_mb:g}; use fewer rows or categorical values, or raise "
                        "the limit")
    splits = {s: Split(torch.from_numpy(encode(f, columns)),
                       torch.from_numpy(np.searchsorted(classes, labels_raw[s]).astype(np.int64)))
              for s, f in frames.items()}
    preprocess = {"kind": "table", "version": 1, "target": p.target,
                  "classes": [c.item() for c in classes], "columns": columns,
                  "encoded": encoded_names(columns)}
    facts = {"classes": names, "rows": {s: len(f) for s, f in frames.items()},
             "dropped_rows": dropped, "encoded_width": width,
             "categorical": [c["name"] for c in columns if c["kind"] == "categorical"]}
    raw = {s: f[[c["name"] for c in columns]] for s, f in frames.items()}
    files = [Path(f) for f in p.files()]
    return DataBundle(f"table:{files[0].stem if p.path else files[0].parent.name}",
                      splits["train"], splits["val"], splits["test"], num_classes=len(classes),
                      in_shape=(width,), preprocess=preprocess, classes=names, facts=facts,
                      digest=lambda: paths_digest(files),
                      raw_rows=lambda split, rows: raw_columns(raw[split].iloc[rows], columns))


def _read_splits(p: TableParams):
    """Each split's frame (rows with bad values dropped or refused), rows dropped, columns."""
    files = p.files()
    for f in files:
        size = Path(f).stat().st_size if Path(f).is_file() else 0
        if size > p.max_memory_mb * 2**20:
            raise UserError(f"table file {f} is {size / 2**20:,.0f} MB, more than "
                            f"data.max_memory_mb={p.max_memory_mb:g} (tables are held in "
                            "memory); sample it, or raise the limit")
    raw = [read_table(Path(f)) for f in files]
    for f, frame in zip(files, raw):
        if p.target not in frame.columns:
            raise UserError(f"table {f} has no target column {p.target!r}; its columns: "
                            f"{_names(frame.columns)} (set data.target)")
    specs = column_specs(raw[0], p)  # the train file's types are the served model's
    for f, frame in zip(files[1:], raw[1:]):  # separate split files: the same columns
        theirs = [(c["name"], c["kind"]) for c in column_specs(frame, p)]
        if theirs != [(c["name"], c["kind"]) for c in specs]:
            raise UserError(f"table {f} has other feature columns than {files[0]} (or one "
                            "numeric in one and text in the other); every split file needs "
                            "the same columns")
    if p.path:
        frame, dropped = clean(raw[0], specs, p, Path(p.path).name)
        labels = class_values(frame[p.target], p.target)
        classes = np.unique(labels)
        if len(classes) < 2:
            check_classes([str(c) for c in classes], {}, f"table column {p.target!r}")
        picks = stratified(np.searchsorted(classes, labels), [str(c) for c in classes],
                           p.val_fraction, p.test_fraction, p.seed)
        frames = {s: frame.iloc[picks[s]].reset_index(drop=True) for s in SPLITS}
        return frames, {"all": dropped}, specs
    frames, dropped = {}, {}
    for s, f, frame in zip(SPLITS, files, raw):
        frames[s], dropped[s] = clean(frame, specs, p, Path(f).name)
    return frames, dropped, specs
