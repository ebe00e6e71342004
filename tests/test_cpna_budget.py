"""CPNA's connection budget on hand-built masks: live (release / revive) vs the paper's count."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from compress.core.live import live_connections, unit_states
from compress.core.masking import MaskEnforcer
from compress.core.masks import MaskSet
from compress.core.structure import structure_report
from compress.methods.cpna import CPNAHook, CPNAParams
from compress.methods.cpna_live import keep_release, keep_revive
from compress.models.mlp import MLP

# Input weights of 3 hidden units (rows) from 4 features; |w| is the score (CPA, magnitude).
# Unit 2's inputs are all weaker than the best inputs of units 0 and 1.
W_IN = [[9.0, 8.0, 1.0, 0.5],
        [7.0, 0.4, 0.3, 0.2],
        [0.9, 0.8, 0.7, 0.6]]
# Outputs: unit 0 feeds both logits, unit 1 one, unit 2 both: 5 hidden->output connections.
W_OUT = [[1.0, 1.0, 1.0],
         [1.0, 0.0, 1.0]]


def _final_masks(budget: str) -> dict[str, torch.Tensor]:
    """One CPNA update at the end of the input phase: 4 input connections, the 5 outputs kept."""
    model = MLP(4, [3], 2)
    with torch.no_grad():
        model.layers[0].weight.copy_(torch.tensor(W_IN))
        model.layers[1].weight.copy_(torch.tensor(W_OUT))
    masks = MaskSet({"layers.0.weight": torch.ones(3, 4, dtype=torch.bool),
                     "layers.1.weight": torch.tensor(W_OUT) != 0})
    params = CPNAParams(normalize=False, input_score="magnitude", output_connections=5,
                        input_connections=4, anneal_epochs=3, budget=budget)
    enforcer = MaskEnforcer(masks)
    enforcer.bind(model)
    hook = CPNAHook(params, [(f"layers.{i}", m) for i, m in enumerate(model.layers)], enforcer)
    hook._update(SimpleNamespace(optimizer=None), epoch=2 * params.anneal_epochs)
    return dict(enforcer.masks), model


def _rows(mask: torch.Tensor) -> list[list[int]]:
    return [torch.nonzero(r).flatten().tolist() for r in mask]


def test_paper_budget_keeps_the_top_connections_and_a_constant_unit():
    masks, model = _final_masks("paper")
    # The 4 best inputs (9, 8, 7, 1): unit 2 loses all its inputs but keeps both outputs.
    assert _rows(masks["layers.0.weight"]) == [[0, 1, 2], [0], []]
    assert torch.equal(masks["layers.1.weight"], torch.tensor(W_OUT) != 0)
    report = structure_report(model, masks)
    assert report["connections"] == {"kept": 9, "total": 18, "live": 4 + 3}
    assert (report["hidden_units"]["constant"], report["hidden_units"]["dead"]) == (1, 0)


def test_live_budget_releases_a_units_outputs_and_spends_them_on_inputs():
    masks, model = _final_masks("live")
    # Budget 4 + 5 live connections. Taking unit 2's best input (0.9) would cost 1 + its 2
    # outputs, more than is left after 9, 8, 7, 1 (cost 3 + 1 + 2 + 1 = 7): unit 2 loses its
    # inputs, its 2 outputs are released and the 2 freed go to the next inputs of units 0, 1.
    assert _rows(masks["layers.0.weight"]) == [[0, 1, 2, 3], [0, 1], []]
    assert _rows(masks["layers.1.weight"]) == [[0, 1], [0]]
    report = structure_report(model, masks)
    assert report["connections"] == {"kept": 9, "total": 18, "live": 9}
    assert (report["hidden_units"]["constant"], report["hidden_units"]["dead"]) == (0, 1)


def test_revive_budget_keeps_every_units_best_input():
    masks, model = _final_masks("revive")
    # Each unit with outputs keeps its best input (9, 7, 0.9); the 4th connection goes by score.
    assert _rows(masks["layers.0.weight"]) == [[0, 1], [0], [0]]
    assert torch.equal(masks["layers.1.weight"], torch.tensor(W_OUT) != 0)
    report = structure_report(model, masks)
    assert report["connections"] == {"kept": 9, "total": 18, "live": 9}
    assert (report["hidden_units"]["constant"], report["hidden_units"]["dead"]) == (0, 0)


@pytest.mark.parametrize("rule", ["release", "revive"])
def test_keep_live_without_deaths_is_the_plain_top_k(rule):
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(6, 5, generator=g)
    fan_out = torch.tensor([1, 2, 1, 3, 1, 2])
    # A budget large enough that every unit keeps an input: the same as the k best, for both.
    mask = keep_release(scores, 20 + 10, fan_out) if rule == "release" else \
        keep_revive(scores, 20, fan_out)
    top = torch.zeros(30, dtype=torch.bool)
    top[scores.flatten().argsort(descending=True)[:20]] = True
    assert int(mask.sum()) == 20
    assert torch.equal(mask, top.view(6, 5))


def test_keep_live_release_spends_the_budget_exactly():
    scores = torch.tensor(W_IN)
    fan_out = torch.tensor([2, 1, 2])
    for keep in range(1, 13):
        mask = keep_release(scores, keep + 5, fan_out)
        live = int(mask.sum()) + int(fan_out[mask.any(1)].sum())
        assert live == keep + 5, keep  # every freed output connection went to an input


def test_revive_with_fewer_connections_than_units_keeps_the_strongest_paths():
    scores = torch.tensor(W_IN)
    mask = keep_revive(scores, 2, torch.tensor([2, 1, 2]))
    assert _rows(mask) == [[0], [0], []]


@pytest.mark.parametrize("budget", ["live", "revive"])
def test_live_budget_leaves_only_live_connections_in_a_deeper_mlp(budget):
    """hidden_density prunes the hidden->hidden layer too; every kept connection ends up live and
    the total stays within the three layers' budgets."""
    from tests.test_methods import _run
    deep = {"model": {"name": "mlp", "hidden": [16, 8]}}
    _, result = _run("cpna", setup=deep, budget=budget, hidden_density=0.2,
                     output_connections=4, input_connections=12)
    masks = [result.masks[f"layers.{i}.weight"] for i in range(3)]
    assert all(torch.equal(m, live) for m, live in zip(masks, live_connections(masks)))
    states = unit_states(masks)
    assert sum(int(c.sum()) for c in states["constant"]) == 0
    budget_total = 4 + 12 + round(0.2 * masks[1].numel())
    total = sum(int(m.sum()) for m in masks)
    # release spends what dead units free on other connections; revive can only lose some
    assert total == budget_total if budget == "live" else total <= budget_total
