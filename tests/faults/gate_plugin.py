"""A test plugin (`--plugin tests/faults/gate_plugin.py`): holds a `compress` process at a known
point until the file `go` appears in its working folder, so a test can kill a server or send a
signal exactly there (no sleeps, no races).

COMPRESS_TEST_GATE picks the point:
- `prune`: the `gated` method (magnitude pruning) waits before it prunes, inside its stage run;
- `export`: the ONNX export waits, inside the export stage's run;
- `version`: the registry waits right after it created the model version (before the alias),
  after printing `[compress] gate: version created` on stderr.
Without it, nothing waits (the `gated` method is plain magnitude pruning).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from compress.methods.magnitude import Magnitude
from compress.registry import register_method

GATE = os.environ.get("COMPRESS_TEST_GATE", "")


def wait_for_go() -> None:
    while not Path("go").exists():
        time.sleep(0.02)


@register_method
class Gated(Magnitude):
    name = "gated"
    summary = "magnitude pruning that waits for ./go (fault-injection tests)"

    def run(self, p, ctx):
        if GATE == "prune":
            wait_for_go()
        return super().run(p, ctx)


if GATE == "export":
    import compress.export.onnx as _onnx

    _export_onnx = _onnx.export_onnx

    def _gated_export(*args, **kwargs):
        wait_for_go()
        return _export_onnx(*args, **kwargs)

    _onnx.export_onnx = _gated_export

if GATE == "version":
    from mlflow import MlflowClient

    _create = MlflowClient.create_model_version

    def _gated_create(self, *args, **kwargs):
        version = _create(self, *args, **kwargs)
        print("[compress] gate: version created", file=sys.stderr, flush=True)
        wait_for_go()
        return version

    MlflowClient.create_model_version = _gated_create
