"""Reading a table file into a pandas DataFrame: CSV (.csv, .tsv, compressed too), Parquet
(.parquet, .pq) or NPZ (.npz: one 1-D array per column, strings as unicode arrays; pickled
object arrays are refused). A file that cannot be read is one line naming it."""

from __future__ import annotations

import zipfile
from pathlib import Path

from compress.errors import UserError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet", ".npz": "npz"}
COMPRESSIONS = (".gz", ".bz2", ".zip", ".xz", ".zst")
SUPPORTED = "CSV (.csv, .tsv, optionally .gz/.bz2/.zip/.xz/.zst), Parquet (.parquet, .pq), NPZ (.npz)"


def table_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    fmt = FORMATS.get(suffixes[-1] if suffixes else "")
    if fmt is None:
        raise UserError(f"cannot read {path}: unknown table format "
                        f"'{''.join(path.suffixes) or 'no extension'}'; use {SUPPORTED}")
    return fmt


def pandas():
    try:
        import pandas as pd
    except ImportError:
        raise UserError("tables are read with pandas: pip install 'compress[tables]'") from None
    return pd


def read_table(path: Path):
    """The file as a DataFrame (columns as stored: numbers, booleans, strings)."""
    fmt = table_format(path)
    if not path.is_file():
        raise UserError(f"table file {path} does not exist")
    pd = pandas()
    try:
        if fmt in ("csv", "tsv"):
            frame = pd.read_csv(path, sep="," if fmt == "csv" else "\t", low_memory=False)
        elif fmt == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = _read_npz(path, pd)
    except UserError:
        raise
    except ImportError as e:
        raise UserError(f"cannot read {path}: {e.name or e} is not installed "
                        "(pip install 'compress[tables]')") from None
    except (ValueError, OSError, UnicodeDecodeError, zipfile.BadZipFile, EOFError,
            pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise UserError(f"cannot read {path} as {fmt.upper()}: {_first_line(e)}") from None
    frame.columns = [str(c) for c in frame.columns]
    if len(frame) == 0:
        raise UserError(f"table {path} has no rows")
    return frame


def _read_npz(path: Path, pd):
    import numpy as np
    with np.load(path, allow_pickle=False) as archive:
        columns = {}
        for name in archive.files:
            try:
                values = archive[name]
            except ValueError:
                raise UserError(f"cannot read {path}: column {name!r} holds Python objects "
                                "(pickled); store strings as a unicode array (arr.astype(str))") \
                    from None
            if values.ndim != 1:
                raise UserError(f"cannot read {path}: NPZ tables hold one 1-D array per column; "
                                f"{name!r} has shape {values.shape}")
            columns[name] = values
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise UserError(f"cannot read {path}: its columns have different lengths {sorted(lengths)}")
    return pd.DataFrame(columns)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__
