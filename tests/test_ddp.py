"""Training under torchrun (compress.core.dist): a real 2-process gloo job against one process.

Why results differ at all: with a global batch of 63 split 32/31 across two ranks, each rank
takes the mean loss of its share, DDP sums the two weighted gradients and divides by 2; one
process sums 63 per-sample gradients in one reduction. Same maths, different float summation
order: after 12 steps the weights here differ by ~3e-8, so losses agree to ~1e-7 and
accuracies/AUCs are equal unless a sample sits within that distance of the decision threshold.
The runs are deterministic (gloo's two-rank sum has one order), so the tolerances below cannot
flake: they say how close "the same training" is, not how lucky a run was.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.e2e.helpers import compress_json

DATA = {"name": "xor", "k": 2, "p": 6, "n_train": 250, "n_val": 128, "n_test": 128}
CONFIG = {"data": DATA, "model": {"name": "mlp", "hidden": [16]},
          "train": {"duration": "3ep", "batch_size": 63}}  # 250 = 3 x 63 + 61: uneven shares
LOSS_TOL = 1e-6          # float summation order: measured 6e-8 (see the module docstring)
ONE_SAMPLE = 1 / 128     # accuracy may move by one val/test sample at most
AUC_TOL = 1e-2


def _pipeline(path: Path, source: Path) -> Path:
    stages = [{"id": "dense", "stage": "pretrain"},
              {"id": "imp", "stage": "prune", "from": "sp",
               "set": {"method": {"name": "imp", "rounds": 2}}},
              {"id": "export", "stage": "export", "from": "imp"}]
    path.write_text(json.dumps({"name": "ddp", "config": CONFIG, "sources": {"sp": str(source)},
                                "stages": stages}))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same pipeline (pretrain under DDP; IMP from a single-process pretrain; export) with
    torchrun --nproc_per_node=2 and in one process."""
    root = tmp_path_factory.mktemp("ddp")
    (root / "tiny.yaml").write_text(json.dumps(CONFIG))
    compress_json("pretrain", "--config", "tiny.yaml", "--no-track", "--out", "sp-pre", cwd=root)
    spec = _pipeline(root / "ddp.yaml", root / "sp-pre")
    scratch = root / "scratch"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(OMP_NUM_THREADS="1", TMPDIR=str(scratch), COMPRESS_DIST_CHECK="step",
               COLUMNS="120")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    args = [*torchrun, "-m", "compress", "pipeline", "run", str(spec), "--no-track", "--json",
            "--out", "ddp"]
    proc = subprocess.Popen(args, cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:  # the single-process run meanwhile (torchrun spends seconds starting up)
        single = compress_json("pipeline", "run", str(spec), "--no-track", "--out", "single",
                               cwd=root)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        proc.kill()
    ddp = subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)
    return root, ddp, single, scratch


def _masks(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(folder / "masks.safetensors"))


def test_one_json_line_one_folder_per_stage_and_no_scratch_left(runs):
    root, ddp, single, scratch = runs
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    lines = [line for line in ddp.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, ddp.stdout  # rank 1's stdout is silent
    out = json.loads(lines[0])
    assert sorted(out["stages"]) == ["dense", "export", "imp"]
    # Only rank 0 wrote: one folder per stage, no staging or scratch folder left anywhere.
    assert sorted(p.name for p in (root / "ddp").iterdir()) == \
        [".lock", "dense", "export", "imp", "pipeline.json"]
    assert [p.name for p in scratch.iterdir() if p.name.startswith("compress-")] == []
    for sid, rec in out["stages"].items():
        stage = json.loads((Path(rec["artifacts"]["dir"]) / "stage.json").read_text())
        assert stage["run_id"] == rec["run_id"]  # the run id every rank reported is rank 0's
    assert "Traceback" not in ddp.stderr


def test_metrics_match_one_process(runs):
    _, ddp, single, _ = runs
    out = json.loads(ddp.stdout)
    for sid in ("dense", "imp"):
        a, b = out["stages"][sid]["metrics"], single["stages"][sid]["metrics"]
        assert a.keys() == b.keys()
        for k in a:
            tol = LOSS_TOL if k.endswith("loss") else AUC_TOL if k.endswith("auc") else ONE_SAMPLE
            assert a[k] == pytest.approx(b[k], abs=tol), (sid, k, a[k], b[k])
    a, b = out["stages"]["export"]["metrics"], single["stages"]["export"]["metrics"]
    assert a["parity_rel_error"] <= 1e-5
    for k in ("onnx_test_accuracy", "onnx_test_auc"):
        assert a[k] == pytest.approx(b[k], abs=ONE_SAMPLE if "accuracy" in k else AUC_TOL)


def test_masks_match_one_process_and_pruned_weights_are_zero(runs):
    from safetensors.torch import load_file
    root, ddp, *_ = runs
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    d, s = root / "ddp" / "imp", root / "single" / "imp"
    # Round 1 prunes the same source weights on every rank: bit-identical to one process.
    r1, r1_single = _masks(d / "rounds" / "round-01"), _masks(s / "rounds" / "round-01")
    assert all(torch.equal(r1[n], r1_single[n]) for n in r1_single)
    # Later masks come from DDP-trained weights (~1e-8 away): same counts, and here the same
    # positions too (a swap would need two weights that close at the magnitude threshold).
    final, final_single = _masks(d), _masks(s)
    for n in final_single:
        assert int(final[n].sum()) == int(final_single[n].sum())
        assert (final[n] == final_single[n]).float().mean() >= 0.98
    weights = load_file(str(d / "weights.safetensors"))
    for n, m in final.items():
        assert m.float().mean() < 1
        assert torch.count_nonzero(weights[n][~m]) == 0


# ------------------------------------------------------------------ spawned ranks, unit level
WEEDOUT = {"data": {"name": "xor", "k": 2, "p": 6, "n_train": 256, "n_val": 128, "n_test": 128},
           "model": {"name": "mlp", "hidden": [24, 16]},
           "train": {"duration": "2ep", "batch_size": 64}}


def _weedout(**opts) -> dict:
    from compress.config import resolve
    from compress.core.masking import prunable_parameters
    from compress.core.masks import MaskSet
    from compress.methods.base import PruneContext
    from compress.methods.weedout.method import weedout
    from compress.stages.runner import build, load_data
    cfg = resolve({**WEEDOUT, "method": {"name": "weedout", "density": 0.3, "fitness_batch": 48,
                                         "selection": "tournament", **opts}}, seed=3)
    data = load_data(cfg)
    model = build(cfg, data)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = PruneContext(model, data, cfg.train, MaskSet.ones_like(prunable_parameters(model)),
                       cfg.seed, progress=False, init=init,
                       build=lambda offset: build(cfg, data, seed_offset=offset))
    result = weedout(cfg.method_params(), ctx)
    return {"masks": dict(result.masks), "rows": result.info["generations"],
            "winner": result.info["winner"], "control": result.info["control"],
            "heldout": result.info["heldout"]}


SEARCHES = {"stacked": {"population": 13, "generations": 3},   # 13 = 7 + 6 candidates per rank
            "fitness_steps": {"population": 5, "generations": 2, "fitness_steps": 2}}


def _rank_main(rank: int, world: int, port: int, out: str, locked: str) -> None:
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), COMPRESS_DIST_CHECK="step")
    torch.set_num_threads(1)
    from compress.core import dist
    from compress.errors import UserError
    assert dist.setup()
    res = {name: _weedout(**opts) for name, opts in SEARCHES.items()}
    res["gathered"] = dist.gather_map(lambda s: torch.arange(5)[s] * 10, 5)
    try:  # rank 1 alone holds a different tensor: every rank must raise
        dist.check_same([torch.full((3,), float(rank == 1))], "probe")
        res["diverged"] = None
    except dist.RanksDiverged as e:
        res["diverged"] = str(e)

    def fail():
        raise UserError("rank 0 says no")
    try:  # a failure of a rank-0-only step is raised on every rank, same type
        dist.on_main(fail)
        res["error"] = None
    except UserError as e:
        res["error"] = str(e)
    # The CLI, failing where only rank 0 acts (the pipeline lock, held by the test process):
    # every rank exits with rank 0's code.
    from compress.cli import main
    sys.argv = ["compress", "prune", "--method", "imp", "--no-track", "--out", locked]
    try:
        main()
        res["exit"] = 0
    except SystemExit as e:
        res["exit"] = e.code
    torch.save(res, Path(out) / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    import fcntl

    import torch.multiprocessing as mp
    out = tmp_path_factory.mktemp("spawned")
    (out / "locked").mkdir()
    with open(out / "locked" / ".lock", "w") as fh:  # as if another pipeline ran there
        fcntl.flock(fh, fcntl.LOCK_EX)
        # fork: the ranks inherit this process's imports (torch, compress, torch._dynamo that the
        # first optimizer pulls in), which saves ~5-15 s of start-up on this 2-core machine.
        mp.start_processes(_rank_main, args=(2, _free_port(), str(out), str(out / "locked")),
                           nprocs=2, join=True, start_method="fork")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("search", list(SEARCHES))
def test_weedout_population_split_selects_what_one_process_selects(spawned, search):
    single = _weedout(**SEARCHES[search])
    r0, r1 = spawned[0][search], spawned[1][search]
    for a in (r0, r1):
        assert all(torch.equal(a["masks"][n], single["masks"][n]) for n in single["masks"])
        assert [r["best_born"] for r in a["rows"]] == [r["best_born"] for r in single["rows"]]
        for ra, rs in zip(a["rows"], single["rows"], strict=True):
            for k in ("best_fitness", "mean_fitness", "std_fitness"):
                assert ra[k] == pytest.approx(rs[k], rel=1e-5, abs=1e-6), (search, k)
            assert ra["improved"] == rs["improved"]
        assert a["heldout"]["winner"] == pytest.approx(single["heldout"]["winner"], rel=1e-5)
    # Both ranks hold exactly the same search result (all-gathered scores, same selection)...
    assert r0["rows"] == r1["rows"] and r0["heldout"] == r1["heldout"]
    # ...and the winner and control, trained with DDP, score as in one process.
    for who in ("winner", "control"):
        assert r0[who]["test_accuracy"] == pytest.approx(single[who]["test_accuracy"], abs=ONE_SAMPLE)
        assert r0[who]["test_loss"] == pytest.approx(single[who]["test_loss"], abs=LOSS_TOL)
        assert r0[who]["test_accuracy"] == r1[who]["test_accuracy"]


def test_divergence_and_rank0_failures_are_raised_on_every_rank(spawned):
    for r in spawned:
        assert torch.equal(r["gathered"], torch.arange(5) * 10)  # 3 + 2 rows, in order
        assert r["diverged"] and "probe differ between ranks" in r["diverged"]
        assert r["error"] == "rank 0 says no"
        assert r["exit"] == 2  # the lock's UserError, on rank 1 too


def test_single_process_never_touches_torch_distributed(runs):
    """This process ran the single-process pipeline (fit, evaluate, tracking, folders)."""
    import torch.distributed as td

    from compress.core import dist
    assert "WORLD_SIZE" not in os.environ
    assert not td.is_initialized() and not dist.setup() and not td.is_initialized()
    idx, share = dist.shard_batch(torch.arange(7))
    model = torch.nn.Linear(2, 1)
    assert dist.wrap(model) is model and share == 1.0 and len(idx) == 7
