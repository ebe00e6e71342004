"""What a command checks before its first stage, so that a mistake found here (exit 2) leaves
nothing behind: no stage folder, no mlflow.db, no FAILED run, no registry entry.

The checks read the config layers section by section (the full config may need the source
stage's, which is read later); each failure is one UserError line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from compress.errors import UserError

# Schemes MLflow can store runs and registered models in (its own list, plus the
# `dialect+driver` forms SQLAlchemy accepts, e.g. postgresql+psycopg2).
TRACKING_SCHEMES = ("", "file", "http", "https", "sqlite", "postgresql", "mysql", "mssql",
                    "databricks", "databricks-uc", "uc")
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def check(layers: list[dict], *, track: bool, out: Path | None) -> None:
    """Registry name and alias, tracking URI, output folder: before any work."""
    from compress.config import export_settings, tracking_settings
    tracking, export = tracking_settings(*layers), export_settings(*layers)
    tracked = track and tracking.enabled
    if export.registry_name:
        from compress.tracking.mlflow_tracker import check_alias, check_model_name
        check_model_name(export.registry_name)
        check_alias(export.alias)
        if not tracked:
            raise UserError("--register needs the MLflow registry; drop --no-track "
                            "(or tracking.enabled: false)")
    if tracked:
        check_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", ""))
    check_writable(Path(out) if out is not None else Path("runs"))


def check_tracking_uri(uri: str) -> None:
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    if scheme not in TRACKING_SCHEMES:
        raise UserError(f"MLFLOW_TRACKING_URI={uri!r}: MLflow cannot store runs at a "
                        f"'{scheme}://' URI; use http(s)://HOST:PORT for a tracking server, "
                        "sqlite:///PATH.db, or unset it for the local store (./mlflow.db)")


def check_writable(path: Path) -> None:
    """The output folder can be created (or replaced) here: its nearest existing ancestor is a
    writable folder, and the path itself is not a file."""
    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} is a file; pass a folder")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"cannot create --out {path}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write under {existing} (permission denied); pass --out a "
                        "folder you can write to")


def check_run_id(ref: str, track: bool) -> None:
    """`--from REF` that is not a folder must be an MLflow run id, in a store that exists
    (checked before a tracker would create an empty local store)."""
    if not RUN_ID.match(ref):
        raise UserError(f"--from {ref}: no such stage folder, and not an MLflow run id "
                        "(32 hex digits); pass a stage folder or a run id from `compress ... --json`")
    if not track:
        raise UserError(f"--from {ref} is an MLflow run id, but tracking is off (--no-track); "
                        "pass the stage folder instead")
    if not os.environ.get("MLFLOW_TRACKING_URI") and not Path("mlflow.db").exists():
        raise UserError(f"no MLflow run {ref}: there is no local store (./mlflow.db) in "
                        f"{Path.cwd()}; run where it is, set MLFLOW_TRACKING_URI, or pass the "
                        "stage folder")
