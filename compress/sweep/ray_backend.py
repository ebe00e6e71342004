"""--backend ray: the pretrain and every cell as Ray tasks (Ray Core's task API).

- Each job is `ray.remote(worker.run_...)` with the sweep file's `resources` and `max_retries`:
  Ray places it on a node with a free slot and, when the worker process dies (killed, node
  lost, out of memory), runs it again. A retry resumes from the cell's stage folders (same
  node, or a shared `storage:` root) or from its stages finished in MLflow (another node).
- Cells take the pretrain task's ObjectRef as an argument, so Ray starts them when (and only
  after) the pretrain is done; the driver just waits for results as they come.
- Finished cells are looked up in MLflow first (same `compress.cell_id`, FINISHED, with its
  row) and not submitted again: a re-run after Ctrl-C or a failure only runs what is missing.
- Ctrl-C cancels every unfinished task (KeyboardInterrupt inside it, so its stage folder and
  MLflow runs are closed as KILLED) before the driver disconnects.

Without --address a private Ray instance runs on this machine (loopback only), so any
tracking store works. With an address, cells may run on other machines: they need a tracking
server (http) or, with tracking off, a `storage:` folder every node mounts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Iterator

from compress.errors import UserError
from compress.sweep import worker
from compress.sweep.progress import pretrain_line

INSTALL = "pip install 'compress[ray]'"
CANCEL_GRACE_S = 15.0  # how long cancelled cells get to close their runs and folders
POLL_S = 1.0  # ray.wait timeout: the driver checks for Ctrl-C at least this often
CONNECT_TIMEOUT_S = 5.0


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(f"--backend ray needs Ray, which is not installed: {INSTALL}") from None
    return ray


class RayBackend:
    name = "ray"

    def __init__(self, spec, address: str | None):
        # Ray's own variable names the cluster when --address does not.
        address = address or os.environ.get("RAY_ADDRESS") or None
        self.spec, self.address = spec, address
        if address is None:
            # A private instance serves this machine alone: keep it off the network (Ray's own
            # switch for single-machine clusters; read when ray is imported), with Ray's
            # default token authentication, said explicitly (Ray warns when it has to guess).
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
            os.environ.setdefault("RAY_AUTH_MODE", "token")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        self.ray = import_ray()
        self.reuse_tracked = False

    def check(self, tracking: dict) -> None:
        """Refuse stores that cells on other machines could not reach, before anything runs."""
        self.reuse_tracked = tracking["enabled"]
        if self.address is None:
            return
        uri = tracking["uri"] or ""
        if tracking["enabled"] and not uri.startswith(("http://", "https://")):
            raise UserError(
                f"--address {self.address}: cells on other machines cannot reach the local MLflow "
                f"store {uri}; run `mlflow server --serve-artifacts` and set "
                "MLFLOW_TRACKING_URI=http://HOST:5000 (or --no-track with `storage:` in the sweep file)")
        if not tracking["enabled"] and not self.spec.storage:
            raise UserError(f"--address {self.address} with --no-track: cells need a shared store; "
                            "add `storage: /path/every/node/mounts` to the sweep file, or track to "
                            "an MLflow server")

    def stage_root(self, root: Path) -> Path | None:
        """Stage folders: the shared storage, the driver's folder (private instance: same
        machine), or None = each node's scratch folder (inputs then come through MLflow)."""
        if self.spec.storage:
            return Path(self.spec.storage) / self.spec.name
        return root if self.address is None else None

    def in_process(self) -> bool:
        return False

    @contextlib.contextmanager
    def connected(self) -> Iterator[None]:
        ray = self.ray
        where = self.address or "local"
        _check_answers(self.address)
        try:
            ray.init(address=where, log_to_driver=False, logging_level=logging.WARNING,
                     **({"include_dashboard": False} if self.address is None else {}))
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UserError(f"cannot connect to the Ray cluster at {where}: {_first_line(e)} "
                            "(start one with `ray start --head`, or drop --address)") from None
        try:
            # Ray prints raylet messages (a worker died, ...) on stdout, which belongs to --json:
            # while connected, they go to stderr with the progress lines.
            with contextlib.redirect_stdout(sys.stderr):
                self._check_fits()
                yield
        finally:
            ray.shutdown()

    def _check_fits(self) -> None:
        """A cell no node can hold would wait forever: refuse it on a private instance, warn on a
        cluster (an autoscaler may still add such a node)."""
        need = self._options()
        nodes = [n["Resources"] for n in self.ray.nodes() if n.get("Alive")]
        fits = any(n.get("CPU", 0) >= need["num_cpus"] and n.get("GPU", 0) >= need["num_gpus"]
                   for n in nodes)
        if fits:
            return
        have = ", ".join(f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes)
        message = (f"no Ray node has resources for a cell ({need['num_cpus']:g} CPU, "
                   f"{need['num_gpus']:g} GPU; nodes: {have or 'none'})")
        if self.address is None:
            raise UserError(f"{message}; lower `resources` in the sweep file")
        print(f"warning: {message}; cells wait until such a node joins", file=sys.stderr)

    def _options(self) -> dict:
        r = self.spec.resources
        return {"num_cpus": r.num_cpus, "num_gpus": r.num_gpus,
                **({"memory": r.memory} if r.memory else {}),
                "max_retries": self.spec.max_retries, "retry_exceptions": False}

    def run(self, pretrain: dict, jobs: list[dict], progress, tracker) -> tuple[dict | None, list[dict]]:
        rows: list[dict | None] = [None] * len(jobs)
        if self.reuse_tracked and not pretrain["fresh"]:
            for i, row in _finished(tracker, jobs).items():
                rows[i] = row
                progress.cell(row)
        todo = [i for i, row in enumerate(rows) if row is None]
        if not todo:
            return None, rows
        ray = self.ray
        pre = _task(ray, worker.run_pretrain).options(name=pretrain["name"], **self._options())
        pre_ref = pre.remote(pretrain)
        cell = _task(ray, worker.run_cell)
        refs = {cell.options(name=jobs[i]["name"], **self._options()).remote(jobs[i], pre_ref): i
                for i in todo}
        names = {pre_ref: pretrain["name"], **{ref: jobs[i]["name"] for ref, i in refs.items()}}
        source, pending = None, [pre_ref, *refs]
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=POLL_S)
                for ref in ready:
                    value = self._get(ref, names[ref])
                    if ref == pre_ref:
                        source = value
                        progress.note(pretrain_line(value))
                    else:
                        rows[refs[ref]] = value
                        progress.cell(value)
        except BaseException:
            self._cancel(pending)
            raise
        return source, rows

    def _get(self, ref, name: str):
        """A task's value; its UserError as one line naming the job; a worker that kept dying
        (retries used up) or a lost node as one line too."""
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, UserError):
                raise UserError(f"{name}: {e.cause}") from None
            raise
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.OutOfMemoryError, ray.exceptions.ObjectLostError) as e:
            raise UserError(f"{name}: its Ray worker died and {self.spec.max_retries} retries "
                            f"(max_retries) did not finish it: {_first_line(e)}") from None

    def _cancel(self, refs: list) -> None:
        """Cancel unfinished tasks (KeyboardInterrupt inside them: runs end KILLED, staging
        folders go) and give them a moment to wind down before the driver disconnects."""
        ray = self.ray
        for ref in refs:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=False)
        with contextlib.suppress(BaseException):
            ray.wait(refs, num_returns=len(refs), timeout=CANCEL_GRACE_S)


def _task(ray, fn):
    """A Ray remote function for `fn` (pickled by reference: workers import compress)."""
    return ray.remote(fn)


def _finished(tracker, jobs: list[dict]) -> dict[int, dict]:
    """Cells that already finished in the store (same identity, row recorded), by job index."""
    if not jobs:
        return {}
    runs = tracker.find_runs({"compress.sweep": jobs[0]["sweep"], "compress.kind": "cell"})
    latest = {}
    for run in runs:  # oldest first: the newest finished run of an identity wins
        row = worker.tracked_row(run)
        if row is not None and run["tags"].get("compress.cell_id"):
            latest[run["tags"]["compress.cell_id"]] = row
    return {i: {**latest[job["tags"]["compress.cell_id"]], "reused": True}
            for i, job in enumerate(jobs) if job["tags"]["compress.cell_id"] in latest}


def _check_answers(address: str | None, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """One TCP connection to HOST:PORT first: Ray itself retries an address where nothing
    listens for minutes, printing warnings."""
    if not address or address == "auto":
        return  # a private instance, or Ray finds the cluster itself (and says if there is none)
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except ValueError:
        raise UserError(f"--address {address}: expected auto, HOST:PORT or ray://HOST:PORT") from None
    except OSError as e:
        raise UserError(f"no Ray cluster answers at {address} ({e.strerror or e}); start one with "
                        "`ray start --head` or check --address") from None


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines() or [type(e).__name__]
    return " ".join(lines[0].split())
