"""Sweeps: a grid of prune cells over one shared pretrain, run here or on a Ray cluster.

spec.py the sweep file; jobs.py each cell as plain data; worker.py runs a job in any process;
local.py and ray_backend.py decide where; driver.py ties them together (`compress sweep`).
"""

from compress.sweep.driver import RESULTS_FILE, run_sweep  # noqa: F401
from compress.sweep.spec import SweepSpec, cell_name, cells, load_sweep  # noqa: F401
