"""Training on several processes under torchrun: the only module that talks to torch.distributed.

    torchrun --standalone --nproc_per_node=2 -m compress prune --method imp ...

Nothing here does anything unless torchrun's WORLD_SIZE > 1 is in the environment: every helper
is then a pass-through (no process group, no collective, no extra tensor op), so the
single-process path is unchanged. torch is imported lazily, so `compress --help` stays light.

Decisions:
- `train.batch_size` is the GLOBAL batch. Every rank draws the same seeded permutation, takes the
  same global batch and trains on its contiguous share of it (sizes differ by at most one); its
  loss is weighted by its share, so DDP's gradient average is the gradient of the global batch
  mean, uneven shares included. Steps per epoch, learning rates, and everything counted in steps
  (GMP's schedule, IteRand's k_per, rewind points) mean what they mean in one process.
- Every rank runs the same code on the same data, so whatever is computed from the parameters
  (masks, CPNA's normalisation, IteRand's redraws) is computed from identical values on every
  rank. `check_same` verifies that (masks whenever they are set, parameters at every epoch end,
  or after every step with COMPRESS_DIST_CHECK=step) and raises if ranks differ.
- Rank 0 alone has side effects (stage folders, MLflow, stdout). `on_main` runs such a step on
  rank 0 and hands every rank its result, or raises its error on every rank, so all ranks exit
  with the same code. No collective runs while an exception unwinds: a rank that fails anywhere
  else just exits, and torchrun stops the others.
- Evaluation shards the split across ranks and all-gathers the logits: metrics are those of the
  full split, as in one process. BatchNorm normalises with per-rank batch statistics (plain DDP;
  SyncBatchNorm needs a GPU) and its running statistics are rank 0's.
- Backend: gloo for CPU tensors; with CUDA and NCCL available, "cpu:gloo,cuda:nccl" so CUDA
  tensors go through NCCL. COMPRESS_DIST_BACKEND overrides. Neither is ever required.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import sys
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterable, Iterator, TypeVar

if TYPE_CHECKING:
    import torch
    from torch import nn

T = TypeVar("T")
_local_depth = 0  # > 0 inside local(): this rank computes on its own, no collectives


class RanksDiverged(RuntimeError):
    """Values every rank should hold identically differ between ranks (a bug, never data)."""


# ------------------------------------------------------------------------- who am I
def launched_world() -> int:
    """Processes torchrun started (1 when not under torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def is_main() -> bool:
    """Rank 0, or the only process: the one that writes folders, tracks and prints."""
    return rank() == 0


def active() -> bool:
    """Ranks are computing together right now (not single-process, not inside local())."""
    return _local_depth == 0 and launched_world() > 1


def world_size() -> int:
    return launched_world() if active() else 1


@contextlib.contextmanager
def local() -> Iterator[None]:
    """This rank computes alone inside the block (its slice of a population, rank 0's export):
    helpers behave as in a single process."""
    global _local_depth
    _local_depth += 1
    try:
        yield
    finally:
        _local_depth -= 1


# ------------------------------------------------------------------------- process group
def default_backend() -> str:
    import torch
    import torch.distributed as td
    chosen = os.environ.get("COMPRESS_DIST_BACKEND")
    if chosen:
        return chosen
    if torch.cuda.is_available() and td.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def setup() -> bool:
    """Join torchrun's process group (only when WORLD_SIZE > 1); returns whether distributed.

    Ranks other than 0 get a silent stdout: the --json line and tables come from rank 0 only.
    Idempotent; called by the CLI's main and lazily by the first collective.
    """
    if launched_world() <= 1:
        return False
    import torch.distributed as td
    if not td.is_initialized():
        td.init_process_group(backend=default_backend())
        import atexit
        atexit.register(_teardown)
        if not is_main():
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    return True


def _teardown() -> None:
    import torch.distributed as td
    if td.is_initialized():
        td.destroy_process_group()


def _ready() -> None:
    import torch.distributed as td
    if not td.is_initialized():
        setup()


# ------------------------------------------------------------------------- rank 0 side effects
def on_main(fn: Callable[[], T], share: bool = True) -> T:
    """Run `fn` on rank 0 only; every rank returns its result (None elsewhere if not `share`),
    or raises its error. In one process (or inside local()) this is just `fn()`.

    On rank 0 `fn` runs inside local(), so helpers it calls do not start collectives of their own.
    """
    if not active():
        return fn()
    _ready()
    if is_main():
        try:
            with local():
                value = fn()
        except BaseException as e:
            _broadcast(("error", _portable(e)))
            raise
        _broadcast(("ok", value if share else None))
        return value
    kind, payload = _broadcast(None)
    if kind == "error":
        raise payload
    return payload


def from_main(value: T) -> T:
    """Rank 0's `value` on every rank (e.g. the record of a stage rank 0 wrote)."""
    return on_main(lambda: value)


@contextlib.contextmanager
def main_context(factory: Callable[[], ContextManager[T]], share: bool = True) -> Iterator[T | None]:
    """Enter `factory()` on rank 0 only (a tracked run, a lock, a staging folder): every rank
    gets what it yields (None elsewhere if not `share`); its clean exit is an `on_main` step too.
    Leaving with an exception exits it on rank 0 without any collective."""
    if not active():
        with factory() as value:
            yield value
        return
    holder: list = []

    def enter():
        cm = factory()
        value = cm.__enter__()
        holder.append(cm)
        return value

    value = on_main(enter, share=share)
    try:
        yield value
    except BaseException:
        if holder:  # rank 0 leaves alone; an exception is never swallowed on one rank only
            holder[0].__exit__(*sys.exc_info())
        raise
    else:
        on_main(lambda: holder[0].__exit__(None, None, None))


def _portable(e: BaseException) -> BaseException:
    """The exception itself if it survives pickling (same type, same exit code on every rank)."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:  # noqa: BLE001 - any unpicklable exception becomes a plain one
        return RuntimeError(f"rank 0 failed: {type(e).__name__}: {e}")


def _broadcast(obj: Any) -> Any:
    import torch
    import torch.distributed as td
    box = [obj]
    td.broadcast_object_list(box, src=0, device=torch.device("cpu"))
    return box[0]


# ------------------------------------------------------------------------- sharding
def _bounds(n: int, w: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) of range(n) per rank; the first n % w ranks get one more."""
    base, extra = divmod(n, w)
    out, start = [], 0
    for r in range(w):
        stop = start + base + (r < extra)
        out.append((start, stop))
        start = stop
    return out


def shard_batch(idx: "torch.Tensor") -> tuple["torch.Tensor", float]:
    """(this rank's part of the global batch `idx`, its share of the batch mean).

    A batch smaller than the world (a tiny last batch) is computed whole by every rank with
    share 1/world, so the averaged gradient is still exactly that batch's.
    """
    w = world_size()
    if w == 1:
        return idx, 1.0
    n = len(idx)
    if n < w:
        return idx, 1.0 / w
    start, stop = _bounds(n, w)[rank()]
    return idx[start:stop], (stop - start) / n


def gather_map(fn: Callable[[slice], "torch.Tensor"], n: int) -> "torch.Tensor":
    """fn(slice) over range(n) with dim-0 results: each rank computes its contiguous slice (inside
    local()) and all ranks get the full result in order, as one process would compute it."""
    w = world_size()
    if w == 1 or n < w:
        return fn(slice(0, n))
    import torch
    import torch.distributed as td
    _ready()
    bounds = _bounds(n, w)
    start, stop = bounds[rank()]
    with local():
        part = fn(slice(start, stop)).contiguous()
    rows = bounds[0][1] - bounds[0][0]  # the largest slice: pad every part to it
    padded = torch.zeros((rows, *part.shape[1:]), dtype=part.dtype, device=part.device)
    padded[:len(part)] = part
    parts = [torch.empty_like(padded) for _ in range(w)]
    td.all_gather(parts, padded)
    return torch.cat([p[:b - a] for p, (a, b) in zip(parts, bounds)])


def all_sum(t: "torch.Tensor") -> "torch.Tensor":
    """The sum of `t` over ranks (t itself in one process)."""
    if not active():
        return t
    import torch.distributed as td
    _ready()
    out = t.clone()
    td.all_reduce(out)
    return out


# ------------------------------------------------------------------------- models
def wrap(model: "nn.Module") -> "nn.Module":
    """The module to run training forwards through: DDP (which starts from rank 0's parameters
    and buffers and averages gradients inside backward) when distributed, else the model."""
    if not active() or not any(p.requires_grad for p in model.parameters()):
        return model
    from torch.nn.parallel import DistributedDataParallel
    _ready()
    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def sync_buffers(model: "nn.Module") -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank; the last training forward
    updated each rank's copy from its own shard."""
    if not active():
        return
    import torch.distributed as td
    _ready()
    for b in model.buffers():
        td.broadcast(b, src=0)


def check_level() -> str:
    """How often parameters are compared across ranks: 'epoch' (default) or 'step'."""
    return os.environ.get("COMPRESS_DIST_CHECK", "epoch")


def fingerprint(tensors: Iterable["torch.Tensor"]) -> bytes:
    """sha256 over the exact bytes of the tensors, in order."""
    import torch
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.digest()


def check_same(tensors: Iterable["torch.Tensor"], what: str) -> None:
    """Raise RanksDiverged on every rank unless `tensors` are bit-identical on all ranks."""
    if not active():
        return
    import torch
    import torch.distributed as td
    _ready()
    mine = torch.frombuffer(bytearray(fingerprint(tensors)), dtype=torch.uint8)
    everyone = [torch.empty_like(mine) for _ in range(world_size())]
    td.all_gather(everyone, mine)
    differ = [r for r, d in enumerate(everyone) if not torch.equal(d, everyone[0])]
    if differ:
        raise RanksDiverged(f"{what} differ between ranks (rank 0 vs ranks {differ}); every "
                            "rank must compute them from identical values")
