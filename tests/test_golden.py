"""Refactors keep results bit for bit: every method, as `compress prune --method NAME` on
tiny settings, gives exactly the metrics, masks, weights and export sizes of the code at
BASELINE (before the Method protocol refactor).

The baseline runs live from git history (the same machine, so float kernels match): the old
`compress` package is extracted from BASELINE and driven by the same recorder. Without git
history the recorded tests/golden/methods.json stands in, but only on the kind of CPU it
was recorded on (another CPU's vector kernels change results in the last bits).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.golden import record

BASELINE = "2dd4454"
ROOT = Path(__file__).resolve().parents[1]


def _baseline_from_git(tmp: Path) -> dict | None:
    if shutil.which("git") is None:
        return None
    old = tmp / "baseline"
    old.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", BASELINE, "compress"],
                             capture_output=True)
    if archive.returncode != 0:
        return None
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    env = {**os.environ, "PYTHONPATH": f"{old}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    code = ("import json, sys, compress; assert compress.__file__.startswith(sys.argv[1]); "
            "from tests.golden import record; print(json.dumps(record.record(baseline=True)))")
    r = subprocess.run([sys.executable, "-c", code, str(old)], cwd=tmp, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _recorded() -> dict:
    import torch
    golden = json.loads(record.GOLDEN.read_text())
    machine = golden.pop("_machine")
    golden.pop("_recorded_at", None)
    if torch.backends.cpu.get_cpu_capability() != machine["cpu_capability"]:
        pytest.skip("no git history to run the baseline, and methods.json was recorded on "
                    f"another kind of CPU ({machine})")
    return golden


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> dict:
    return _baseline_from_git(tmp_path_factory.mktemp("golden")) or _recorded()


@pytest.fixture(scope="module")
def today() -> dict:
    return record.record()


@pytest.mark.parametrize("case", [c[0] for c in record.CASES])
def test_results_are_bit_identical_to_the_baseline(case, baseline, today):
    assert today[case] == baseline[case]
