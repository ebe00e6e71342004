"""Where a stage's dense model lives: the import or pretrain stage its lineage started from.

Prune and retrain stages record it as `dense_source` ({dir, run_id}); distillation reads the
teacher from there (verified against its sha256 like any stage folder).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from compress.errors import UserError
from compress.stages.artifacts import StageInfo, read_stage

DENSE_STAGES = ("import", "pretrain")


def dense_source(src: StageInfo) -> dict | None:
    """{dir, run_id} of the dense stage behind `src` (src itself if it is one)."""
    if src.stage in DENSE_STAGES:
        return {"dir": str(Path(src.dir).resolve()), "run_id": src.record.get("run_id")}
    return src.record.get("dense_source")


def dense_teacher(cfg, src: StageInfo, data) -> nn.Module:
    """The dense model of `src`'s lineage in eval mode, frozen: the distillation teacher."""
    from compress.stages.runner import build
    where = dense_source(src)
    if where is None or not Path(where["dir"]).is_dir():
        raise UserError("distill needs the dense model this stage descends from, and "
                        f"{(where or {}).get('dir', 'its folder')} is gone; re-run from the "
                        "pretrain/import stage, or drop `distill`")
    dense = read_stage(Path(where["dir"]))
    teacher = build(cfg, data)
    teacher.load_state_dict(dense.state("weights", like=teacher))
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
