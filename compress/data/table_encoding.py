"""How a table's rows become the network's input, and the description of it (`columns`) that
DataBundle.preprocess carries and compress.export.preprocess turns into ONNX nodes, op for op:

  - numeric and boolean columns: (x - mean) / std with the TRAIN split's mean and std (std 0
    becomes 1), in float64, then float32;
  - categorical columns: one-hot over the categories seen in the train split (sorted); a value
    never seen in train encodes as all zeros; categorical numbers are compared as int64 codes;
  - the network's input: the numeric columns (in `features` order), then each categorical's
    one-hot block (`encoded_names`).
"""

from __future__ import annotations

import numpy as np

from compress.errors import UserError


def fit_columns(train, specs: list[dict], max_categories: int) -> list[dict]:
    """Each column's encoding from the train split: mean/std, or the sorted categories."""
    out = []
    for s in specs:
        values = train[s["name"]].to_numpy()
        if s["kind"] == "numeric":
            x = values.astype(np.float64)
            std = float(x.std())
            out.append({**s, "mean": float(x.mean()), "std": std if std > 0 else 1.0})
            continue
        cats = np.unique(category_values(values, s))
        if len(cats) > max_categories:
            raise UserError(f"categorical column {s['name']!r} has {len(cats)} distinct values "
                            f"in train; one-hot encoding it would add {len(cats)} inputs (more "
                            "than data.max_categories); leave it out of data.features or raise "
                            "the limit")
        out.append({**s, "categories": [c.item() for c in cats]})
    return out


def category_values(values: np.ndarray, spec: dict) -> np.ndarray:
    """A categorical column's values as the encoder compares them: strings or int64 codes."""
    if spec["type"] == "string":
        return values.astype(str)
    if spec["type"] == "double" and not np.all(values == np.round(values)):
        raise UserError(f"categorical column {spec['name']!r} holds non-integer numbers; "
                        "categorical numbers must be whole (codes)")
    return values.astype(np.int64)


def encoded_names(columns: list[dict]) -> list[str]:
    numeric = [c["name"] for c in columns if c["kind"] == "numeric"]
    return numeric + [f"{c['name']}={v}" for c in columns if c["kind"] == "categorical"
                      for v in c["categories"]]


def encode(frame, columns: list[dict]) -> np.ndarray:
    """The network's float32 input rows (see the module docstring for the layout)."""
    numeric = [c for c in columns if c["kind"] == "numeric"]
    blocks = []
    if numeric:
        x = np.stack([frame[c["name"]].to_numpy().astype(np.float64) for c in numeric], axis=1)
        mean = np.array([c["mean"] for c in numeric])
        std = np.array([c["std"] for c in numeric])
        blocks.append(((x - mean) / std).astype(np.float32))
    for c in columns:
        if c["kind"] == "categorical":
            values = category_values(frame[c["name"]].to_numpy(), c)
            cats = np.array(c["categories"], dtype=None if c["type"] == "string" else np.int64)
            blocks.append((values[:, None] == cats[None, :]).astype(np.float32))
    return np.concatenate(blocks, axis=1)


def raw_columns(frame, columns: list[dict]) -> dict[str, np.ndarray]:
    """Raw rows as a served model takes them: one 1-D array per feature column, typed
    (string: str objects, long: int64, double: float64, boolean: bool)."""
    kinds = {"string": object, "long": np.int64, "double": np.float64, "boolean": np.bool_}
    out = {}
    for c in columns:
        values = frame[c["name"]].to_numpy()
        out[c["name"]] = (values.astype(str).astype(object) if c["type"] == "string"
                          else values.astype(kinds[c["type"]]))
    return out
