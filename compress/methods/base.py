"""The Method contract: what every method receives, returns and may offer the stages.

A method is a subclass of `Method` registered with `@register_method`:

    @register_method
    class Magnitude(Method):
        name = "magnitude"                      # what `--method` takes
        summary = "one-shot magnitude pruning"  # one line for `compress methods`
        Params = OneShotParams                  # its options (pydantic, unknown keys refused)
        defaults = {...}                        # config overlay of its embedded default run
        test_settings = {...}                   # config overlay that makes it tiny (tests)

        def check(self, p, ctx): ...            # refuse bad options before any stage runs
        def run(self, p, ctx) -> PruneResult:   # the work: masks, history, facts to record
            ...

The stages call only this interface (`check`, `run`, `verify_export`); no stage names a method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from pydantic import BaseModel, Field, model_validator

from compress.vocab import OPTIONS
from torch import nn

from compress.core.masks import MaskSet


@dataclass
class PruneContext:
    """Everything a method may use while it checks its options and runs."""

    model: nn.Module        # trained dense (or already masked) weights, loaded
    data: Any               # DataBundle
    train: Any              # TrainConfig: optimiser settings for any training the method does
    masks: MaskSet          # starting masks (all True for a dense model)
    seed: int
    progress: bool = True
    init: dict | None = None                     # the dense initialisation (state dict)
    dense_train: Any = None                      # TrainConfig of dense training (for replay)
    dense_seed: int = 0                          # seed of dense training (for replay)
    build: Callable[[int], nn.Module] | None = None   # fresh model; arg = seed offset
    on_round: Callable[..., None] | None = None  # (index, masks, metrics, history): a nested run


@dataclass
class PruneResult:
    masks: MaskSet
    history: list[dict] = field(default_factory=list)  # per-epoch rows of any training
    info: dict = field(default_factory=dict)           # method-specific facts worth recording
    tensors: dict = field(default_factory=dict)        # name -> {key: tensor}: extra files
    architecture: dict | None = None  # a surgery step (compress.core.surgery) the model took


class MethodParams(BaseModel):
    model_config = OPTIONS


class Method:
    """Base class of every pruning method (see the module docstring for the contract)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Params: ClassVar[type[MethodParams]] = MethodParams
    defaults: ClassVar[dict] = {}
    # A tiny run for registry-driven tests: a config overlay (data, model, train, method
    # options). Methods that need more than the shared tiny MLP say so here.
    test_settings: ClassVar[dict] = {}

    def check(self, p: Any, ctx: PruneContext) -> None:
        """Refuse options that only the model or data can judge (layer names, schedule
        lengths) with a UserError; called before any stage runs. Default: nothing to check."""

    def run(self, p: Any, ctx: PruneContext) -> "PruneResult":
        raise NotImplementedError(f"method {self.name!r} does not implement run()")

    def verify_export(self, model: nn.Module, src: Any, masks: MaskSet | None) -> None:
        """Called by the export stage on the loaded model of a stage this method produced
        (src: its StageInfo); raise to refuse the export. Default: nothing to verify."""


class DensityTarget(MethodParams):
    """Exactly one of density (fraction kept) or sparsity (fraction removed), in (0, 1)."""

    density: float | None = Field(None, gt=0, lt=1, description="fraction of weights KEPT")
    sparsity: float | None = Field(None, gt=0, lt=1, description="fraction of weights REMOVED")

    @model_validator(mode="after")
    def _one_of(self):
        if self.density is not None and self.sparsity is not None \
                and abs(self.density + self.sparsity - 1) > 1e-9:
            raise ValueError(f"density={self.density} and sparsity={self.sparsity} disagree; "
                             "give only one (density = 1 - sparsity)")
        if self.density is None and self.sparsity is None:
            self.density = self.default_density()
        elif self.density is None:
            self.density = 1 - self.sparsity
        self.sparsity = None  # the resolved config records density only
        return self

    def default_density(self) -> float:
        return 0.2


def check_layer_names(names: list[str], params: dict) -> None:
    """Every name must be a prunable layer (module name or its '.weight')."""
    valid = sorted(n.removesuffix(".weight") for n in params)
    bad = [n for n in names if n.removesuffix(".weight") not in valid]
    if bad:
        from compress.errors import UserError
        raise UserError(f"no prunable layer named {', '.join(map(repr, bad))}; this model's "
                        f"layers are: {', '.join(valid)}")


def train_masked(ctx: PruneContext, masks: MaskSet, duration: str, label: str,
                 hooks=()) -> list[dict]:
    """Train ctx.model for `duration` with `masks` enforced (none at all for '0ep' / '0it')."""
    from compress.core.loop import fit
    from compress.core.masking import MaskEnforcer
    from compress.core.schedules import parse_duration
    if parse_duration(duration).amount == 0:
        return []
    return fit(ctx.model, ctx.data, ctx.train, seed=ctx.seed, hooks=hooks,
               masks=MaskEnforcer(masks), duration=duration,
               progress=label if ctx.progress else None)
