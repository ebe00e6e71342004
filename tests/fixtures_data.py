"""User data on disk, written from real data shipped with scikit-learn: PNG image folders
(the 8x8 digits upsampled) and tables (the wine recognition set with string columns).

Plain functions (`write_digit_folder`, `wine_frame`, `write_table`) and pytest fixtures built
on them; other test modules import them (`from tests.fixtures_data import ...`) or list this
module in `pytest_plugins`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------- image folders
def digit_images(size: int = 32, channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 digits as uint8 (N, size, size[, 3]) images and their labels.

    RGB images are tinted (R = v, G = 0.75 v, B = 255 - v) so the channels differ."""
    from PIL import Image
    from sklearn.datasets import load_digits
    raw = load_digits()
    small = (raw.images * (255.0 / 16.0)).round().astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BILINEAR))
                    for im in small])
    if channels == 3:
        v = big.astype(np.float32)
        big = np.stack([v, 0.75 * v, 255.0 - v], axis=-1).round().astype(np.uint8)
    return big, raw.target.astype(np.int64)


def write_digit_folder(root: Path, *, splits: bool = True, channels: int = 3, size: int = 32,
                       per_class: int | None = 30, seed: int = 0,
                       fractions: tuple[float, float] = (0.2, 0.2)) -> Path:
    """PNG files in ImageFolder layout: root/<split>/<digit>/<n>.png (or root/<digit>/...).

    `per_class` images of each digit (all with None), chosen by `seed`; with `splits`, each
    class is cut into train/val/test by `fractions` (val, test)."""
    from PIL import Image
    images, labels = digit_images(size, channels)
    rng = np.random.default_rng(seed)
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))[:per_class]
        n_val, n_test = (max(1, round(len(idx) * f)) for f in fractions)
        parts = {"val": idx[:n_val], "test": idx[n_val:n_val + n_test],
                 "train": idx[n_val + n_test:]} if splits else {"": idx}
        for split, members in parts.items():
            folder = root / split / str(digit) if split else root / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            for i in members:
                Image.fromarray(images[i]).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def digit_folder(tmp_path_factory) -> Path:
    """3x32x32 PNG digits with train/, val/ and test/ folders (30 per class: 18/6/6)."""
    return write_digit_folder(tmp_path_factory.mktemp("digits-rgb"))


@pytest.fixture(scope="session")
def digit_folder_flat(tmp_path_factory) -> Path:
    """3x32x32 PNG digits, class folders directly under the root (30 per class)."""
    return write_digit_folder(tmp_path_factory.mktemp("digits-flat"), splits=False)


@pytest.fixture(scope="session")
def digit_folder_gray(tmp_path_factory) -> Path:
    """1x32x32 grayscale PNG digits with train/, val/ and test/ folders."""
    return write_digit_folder(tmp_path_factory.mktemp("digits-gray"), channels=1)


# --------------------------------------------------------------------------- tables
def wine_frame():
    """scikit-learn's wine recognition data (178 rows, 3 cultivars) as a raw table:
    13 numeric columns (magnesium and proline integers), two string columns derived from it
    (`color` from color_intensity, `hue_band` from hue, by tertiles) and a string target
    `cultivar` (class_0, class_1, class_2)."""
    import pandas as pd
    from sklearn.datasets import load_wine
    raw = load_wine(as_frame=True)
    df = raw.frame.drop(columns=["target"]).copy()
    df["magnesium"] = df["magnesium"].round().astype(np.int64)
    df["proline"] = df["proline"].round().astype(np.int64)
    df["color"] = pd.qcut(df.pop("color_intensity"), 3, labels=["pale", "medium", "deep"]).astype(str)
    df["hue_band"] = pd.qcut(df["hue"], 3, labels=["low", "mid", "high"]).astype(str)
    df["cultivar"] = [f"class_{t}" for t in raw.target]
    return df


TABLE_SUFFIX = {"csv": ".csv", "parquet": ".parquet", "npz": ".npz"}


def mixed_frame(n: int, seed: int = 0):
    """A table with double, long, boolean, string-categorical and integer-categorical feature
    columns and a 3-class `label`."""
    import pandas as pd
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "size": rng.normal(5, 2, n), "count": rng.integers(0, 50, n),
        "flag": rng.random(n) < 0.3, "city": rng.choice(["oslo", "rome", "lima"], n),
        "zone": rng.choice([3, 7, 11], n), "label": np.arange(n) % 3})


def write_table(frame, path: Path, fmt: str | None = None) -> Path:
    """`frame` as CSV, Parquet or NPZ (one 1-D array per column; strings as unicode arrays)."""
    fmt = fmt or Path(path).suffix.lstrip(".")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "parquet":
        frame.to_parquet(path, index=False)
    elif fmt == "npz":
        arrays = {c: (frame[c].to_numpy().astype(str) if frame[c].dtype.kind in "OUT" or
                      str(frame[c].dtype) in ("str", "string") else frame[c].to_numpy())
                  for c in frame.columns}
        np.savez(path, **arrays)
    else:
        raise ValueError(fmt)
    return path


@pytest.fixture(scope="session")
def wine_tables(tmp_path_factory) -> dict[str, Path]:
    """The wine table as wine.csv, wine.parquet and wine.npz."""
    folder = tmp_path_factory.mktemp("wine")
    frame = wine_frame()
    return {fmt: write_table(frame, folder / f"wine{suffix}", fmt)
            for fmt, suffix in TABLE_SUFFIX.items()}
