"""Run the real `compress` command in a subprocess, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TINY_SETS = [
    "data.name=xor", "model.name=mlp",
    "data.k=2", "data.p=6", "data.n_train=256", "data.n_val=128", "data.n_test=128",
    "model.hidden=[16]", "train.duration=3ep", "train.batch_size=64",
]
TINY_CPNA = ["method.anneal_epochs=3", "method.final_epochs=1",
             "method.output_connections=4", "method.input_connections=8"]


def sets(*items: str) -> list[str]:
    out = []
    for s in items:
        out += ["--set", s]
    return out


def compress_subprocess(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300):
    """A real process: what a user's shell sees (exit code, stdout, stderr)."""
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("COLUMNS", "120")
    return subprocess.run([sys.executable, "-m", "compress", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def compress(*args: str, cwd: Path, env: dict | None = None):
    """The same entry point (`compress.cli.main`) in this process: no import cost per call."""
    import contextlib
    import io

    import signal

    from compress import interrupts
    from compress.cli import main

    handlers = {s: signal.getsignal(s) for s in interrupts.SIGNALS}
    out, err = io.StringIO(), io.StringIO()
    old_cwd, old_argv, old_env = os.getcwd(), sys.argv, dict(os.environ)
    os.environ.update({"COLUMNS": "120", **(env or {})})
    code = 0
    try:
        os.chdir(cwd)
        sys.argv = ["compress", *args]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        interrupts.restore(handlers)  # main keeps signals held after a registration
        os.chdir(old_cwd)
        sys.argv = old_argv
        os.environ.clear()
        os.environ.update(old_env)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def compress_json(*args: str, cwd: Path, env: dict | None = None) -> dict:
    r = compress(*args, "--json", cwd=cwd, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def errors(stderr: str) -> str:
    """stderr without the status lines (`[compress] ... started/done`) a CI log shows."""
    from compress.status import PREFIX
    return "\n".join(line for line in stderr.strip().splitlines() if not line.startswith(PREFIX))


def assert_user_error(r, *words: str) -> None:
    """Exit 2, one line on stderr naming the problem, no traceback."""
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    err = errors(r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert len(err.splitlines()) == 1, r.stderr
    for w in words:
        assert w in err, err
