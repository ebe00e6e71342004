"""--backend local: the pretrain in this process, then the cells here (one worker) or in N
worker processes of this machine. Stage folders go under the driver's sweep folder."""

from __future__ import annotations

import contextlib
from pathlib import Path

from compress.sweep import worker


class LocalBackend:
    name = "local"
    reuse_tracked = False  # cells are reused through their folders under the sweep root

    def __init__(self, workers: int = 1):
        self.workers = workers

    def check(self, tracking: dict) -> None:
        """Any store works: every process runs on this machine."""

    def stage_root(self, root: Path) -> Path:
        return root

    def connected(self):
        return contextlib.nullcontext()

    def in_process(self) -> bool:
        return self.workers <= 1

    def run(self, pretrain: dict, jobs: list[dict], progress, tracker) -> tuple[dict, list[dict]]:
        source = worker.run_pretrain(pretrain)
        if self.in_process():
            rows = []
            for job in jobs:
                rows.append(worker.run_cell(job, source))
                progress.cell(rows[-1])
            return source, rows
        return source, self._pool(jobs, source, progress)

    def _pool(self, jobs: list[dict], source: dict, progress) -> list[dict]:
        import concurrent.futures as cf
        import multiprocessing as mp
        rows: list[dict | None] = [None] * len(jobs)
        with cf.ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn"),
                                    initializer=_one_thread) as pool:
            futures = {pool.submit(worker.run_cell, job, source): i for i, job in enumerate(jobs)}
            for fut in cf.as_completed(futures):
                rows[futures[fut]] = fut.result()
                progress.cell(rows[futures[fut]])
        return rows


def _one_thread() -> None:
    """Workers share the machine's cores: one torch thread each."""
    import torch
    torch.set_num_threads(1)
