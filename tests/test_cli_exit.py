"""The CLI's process-exit shortcut (issue 13): the heap is frozen for teardown only at
interpreter exit, after every other exit hook, and never by an in-process call of main()."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SCRIPT = """
import atexit, gc, sys
from compress import cli
# Registered before main(): runs after the hooks main() registers (atexit is last-in, first-out).
atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count() > 0))
for _ in range(2):  # two in-process calls: one exit hook, no freeze yet
    sys.argv = ["compress", "methods"]
    try:
        cli.main()
    except SystemExit as e:
        assert not e.code, e.code
    print("frozen after main():", gc.get_freeze_count() > 0)
"""


def test_heap_frozen_only_at_interpreter_exit(tmp_path):
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("frozen")]
    assert lines == ["frozen after main(): False", "frozen after main(): False",
                     "frozen at exit: True"]
