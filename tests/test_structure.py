"""Structural shrink of masked MLPs: exact function, smaller widths, counts that add up."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from compress.core.masking import apply_masks
from compress.core.structure import ShrunkMLP, count_macs, shrink_mlp, structure_report
from compress.errors import UserError
from compress.models.mlp import MLP


def random_masks(model: nn.Module, density: float, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) < density
            for n, p in model.named_parameters() if n.endswith("weight")}


def masked_mlp(in_f: int, hidden: list[int], out_f: int, density: float, seed: int,
               bias: bool = True, dtype: torch.dtype = torch.float32):
    """Random masked MLP with planted dead rows/columns, constant units and unread inputs."""
    torch.manual_seed(seed)
    model = MLP(in_f, hidden, out_f, bias=bias).to(dtype)
    masks = random_masks(model, density, seed)
    # Planted cases: unread input features, units with no incoming / no outgoing connection.
    masks["layers.0.weight"][:, :3] = False
    masks["layers.0.weight"][0] = False  # hidden 0 unit 0: constant relu(b)
    masks["layers.0.weight"][1] = False  # hidden 0 unit 1: constant, bias forced negative below
    masks["layers.1.weight"][:, 2] = False  # hidden 0 unit 2: nothing reads it
    masks["layers.1.weight"][0, 0] = True  # make sure the constant unit 0 is read
    with torch.no_grad():
        if bias:
            model.layers[0].bias[0] = 0.7
            model.layers[0].bias[1] = -0.4
    apply_masks(model, masks)
    return model, masks


def brute_force(model: MLP, masks: dict[str, torch.Tensor]) -> dict:
    """What must survive, by graph reachability: a unit matters iff an input reaches it and it
    reaches an output through non-zero (kept) weights."""
    adj = [((layer.weight.detach() * masks[f"layers.{i}.weight"]) != 0).double()
           for i, layer in enumerate(model.layers)]
    reach = [torch.ones(adj[0].shape[1], dtype=torch.bool)]
    for a in adj:
        reach.append((a @ reach[-1].double()) > 0)
    coreach = [torch.ones(adj[-1].shape[0], dtype=torch.bool)]
    for a in reversed(adj):
        coreach.insert(0, (a.t() @ coreach[0].double()) > 0)
    hidden = [reach[i] & coreach[i] for i in range(1, len(adj))]
    constant = [~reach[i] & coreach[i] for i in range(1, len(adj))]
    dead = [~coreach[i] for i in range(1, len(adj))]
    inputs = coreach[0]
    alive = [inputs, *hidden, torch.ones(adj[-1].shape[0], dtype=torch.bool)]
    live = sum(int(a[alive[i + 1]][:, alive[i]].sum()) for i, a in enumerate(adj))
    return {
        "input_kept": [int(i) for i in torch.nonzero(inputs).flatten()],
        "hidden_kept": [[int(i) for i in torch.nonzero(h).flatten()] for h in hidden],
        "live": live,
        "kept": sum(int(m.sum()) for m in masks.values()),
        "constant": [int(c.sum()) for c in constant],
        "dead": [int(d.sum()) for d in dead],
    }


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("hidden", [[32], [48, 24], [40, 30, 20]])
@pytest.mark.parametrize("density", [0.03, 0.1, 0.3, 0.8])
def test_shrink_is_exact_and_counts_match_brute_force(hidden, density):
    model, masks = masked_mlp(16, hidden, 3, density, seed=len(hidden) * 100 + int(density * 100))
    shrunk, spec = shrink_mlp(model, masks)
    x = torch.randn(64, 16)
    with torch.no_grad():
        assert rel_err(shrunk(x), model(x)) < 1e-6
    expected = brute_force(model, masks)
    assert spec["input_kept"] == expected["input_kept"]
    assert spec["hidden_kept"] == expected["hidden_kept"]
    assert spec["connections"] == {"kept": expected["kept"], "total": 16 * hidden[0] + sum(
        a * b for a, b in zip(hidden, hidden[1:])) + hidden[-1] * 3, "live": expected["live"]}
    # Planted cases: unread inputs 0-2, constant units 0/1 and unread unit 2 of hidden layer 0.
    assert not {0, 1, 2} & set(spec["input_kept"])
    assert not {0, 1, 2} & set(spec["hidden_kept"][0])
    kept_widths = [len(k) for k in spec["hidden_kept"]]
    assert spec["hidden_units"]["per_layer_kept"] == kept_widths
    assert spec["hidden_units"]["kept"] == sum(kept_widths)
    assert spec["hidden_units"]["total"] == sum(hidden)
    assert spec["input_features"] == {"kept": len(expected["input_kept"]), "total": 16}
    phys = [max(len(spec["input_kept"]), 1), *[max(w, 1) for w in kept_widths], 3]
    assert spec["widths"] == {"dense": [16, *hidden, 3], "shrunk": phys}
    assert [layer.weight.shape[1] for layer in shrunk.layers] == phys[:-1]
    assert phys[0] < 16 and phys[1] < hidden[0]
    assert all(s <= d for s, d in zip(phys, spec["widths"]["dense"]))
    assert spec["macs"]["shrunk"] == sum(a * b for a, b in zip(phys, phys[1:]))
    assert spec["macs"]["shrunk"] == count_macs(shrunk, x) < spec["macs"]["dense"]
    assert spec["params"]["shrunk"] == sum(p.numel() for p in shrunk.parameters())
    # Every hidden unit is exactly one of kept / constant / dead, and the counts are the graph's.
    assert spec["hidden_units"]["per_layer_constant"] == expected["constant"]
    assert spec["hidden_units"]["per_layer_dead"] == expected["dead"]
    assert spec["hidden_units"]["constant"] == sum(expected["constant"])
    assert spec["hidden_units"]["dead"] == sum(expected["dead"])
    assert [k + c + d for k, c, d in zip(kept_widths, expected["constant"], expected["dead"])] \
        == hidden
    json.dumps(spec)


def test_masked_weights_stay_exactly_zero_and_live_weights_are_carried_over():
    model, masks = masked_mlp(16, [48, 24], 3, 0.2, seed=7)
    shrunk, spec = shrink_mlp(model, masks)
    inputs = torch.tensor(spec["input_kept"])
    rows0 = torch.tensor(spec["hidden_kept"][0])
    rows1 = torch.tensor(spec["hidden_kept"][1])
    w0 = model.layers[0].weight.detach()[rows0][:, inputs]
    w1 = model.layers[1].weight.detach()[rows1][:, rows0]
    assert torch.equal(shrunk.layers[0].weight.detach(), w0)
    assert torch.equal(shrunk.layers[1].weight.detach(), w1)
    m1 = masks["layers.1.weight"][rows1][:, rows0]
    assert torch.all(shrunk.layers[1].weight.detach()[~m1] == 0)


def test_constant_units_fold_into_next_bias():
    torch.manual_seed(3)
    model = MLP(6, [5], 2)
    masks = {"layers.0.weight": torch.ones(5, 6, dtype=torch.bool),
             "layers.1.weight": torch.ones(2, 5, dtype=torch.bool)}
    masks["layers.0.weight"][[1, 3]] = False
    with torch.no_grad():
        model.layers[0].bias[1] = 0.9
        model.layers[0].bias[3] = -2.0
    apply_masks(model, masks)
    shrunk, spec = shrink_mlp(model, masks)
    assert spec["hidden_kept"] == [[0, 2, 4]]
    assert spec["hidden_units"]["constant"] == 2 and spec["hidden_units"]["dead"] == 0
    assert spec["connections"] == {"kept": 5 * 6 - 2 * 6 + 2 * 5, "total": 5 * 6 + 2 * 5,
                                   "live": 3 * 6 + 2 * 3}
    w1, b1 = model.layers[1].weight.detach(), model.layers[1].bias.detach()
    assert torch.allclose(shrunk.layers[1].bias.detach(), b1 + w1[:, 1] * 0.9, atol=1e-7)
    x = torch.randn(10, 6)
    with torch.no_grad():
        assert rel_err(shrunk(x), model(x)) < 1e-6


def test_float64_model_is_exact_to_double_precision():
    model, masks = masked_mlp(16, [40, 30, 20], 3, 0.1, seed=11, dtype=torch.float64)
    shrunk, _ = shrink_mlp(model, masks)
    x = torch.randn(32, 16, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(shrunk(x), model(x)) < 1e-12
    assert shrunk.layers[0].weight.dtype == torch.float64


def test_fully_dead_layer_gives_constant_output():
    torch.manual_seed(5)
    model = MLP(10, [8, 6], 3)
    masks = random_masks(model, 0.5, 5)
    masks["layers.1.weight"][:] = False
    apply_masks(model, masks)
    shrunk, spec = shrink_mlp(model, masks)
    assert spec["input_kept"] == [] and spec["hidden_kept"] == [[], []]
    assert spec["widths"]["shrunk"] == [1, 1, 1, 3]
    assert spec["hidden_units"]["kept"] == 0 and spec["connections"]["live"] == 0
    x = torch.randn(4, 10)
    with torch.no_grad():
        expected = model(x)
        assert torch.allclose(expected, expected[:1].expand(4, 3))
        assert rel_err(shrunk(x), expected) < 1e-6


def test_without_masks_zero_weights_count_as_pruned():
    model, masks = masked_mlp(16, [48, 24], 3, 0.1, seed=2)
    _, with_masks = shrink_mlp(model, masks)
    _, without = shrink_mlp(model)
    assert without["hidden_kept"] == with_masks["hidden_kept"]
    assert without["input_kept"] == with_masks["input_kept"]
    assert without["connections"]["kept"] == sum(int((p != 0).sum())
                                                  for p in model.parameters() if p.dim() == 2)


def test_masks_are_applied_when_weights_are_not_yet_masked():
    torch.manual_seed(4)
    dense = MLP(16, [32, 16], 2)
    masks = random_masks(dense, 0.2, 4)
    masked = copy.deepcopy(dense)
    apply_masks(masked, masks)
    shrunk, _ = shrink_mlp(dense, masks)
    x = torch.randn(8, 16)
    with torch.no_grad():
        assert rel_err(shrunk(x), masked(x)) < 1e-6


def test_multidimensional_input_is_flattened_and_gathered():
    torch.manual_seed(6)
    model = MLP(2 * 3 * 4, [20], 4)
    masks = random_masks(model, 0.2, 6)
    masks["layers.0.weight"][:, 5:11] = False
    apply_masks(model, masks)
    shrunk, spec = shrink_mlp(model, masks)
    assert isinstance(shrunk, ShrunkMLP) and shrunk.input_index is not None
    assert shrunk.input_index.tolist() == spec["input_kept"]
    x = torch.randn(5, 2, 3, 4)
    with torch.no_grad():
        assert rel_err(shrunk(x), model(x)) < 1e-6


def test_all_inputs_kept_skips_the_gather():
    model = MLP(8, [6], 1)
    shrunk, spec = shrink_mlp(model)
    assert shrunk.input_index is None
    assert "input_index" not in dict(shrunk.named_buffers())
    assert spec["widths"]["shrunk"] == spec["widths"]["dense"] == [8, 6, 1]


def test_bias_free_mlp():
    model, masks = masked_mlp(16, [30, 20], 2, 0.15, seed=8, bias=False)
    shrunk, _ = shrink_mlp(model, masks)
    assert all(layer.bias is None for layer in shrunk.layers)
    x = torch.randn(16, 16)
    with torch.no_grad():
        assert rel_err(shrunk(x), model(x)) < 1e-6


def test_deterministic():
    model, masks = masked_mlp(16, [48, 24], 3, 0.1, seed=9)
    a, spec_a = shrink_mlp(model, masks)
    b, spec_b = shrink_mlp(model, masks)
    assert spec_a == spec_b
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_structure_report_matches_spec():
    model, masks = masked_mlp(16, [48, 24], 3, 0.1, seed=10)
    _, spec = shrink_mlp(model, masks)
    report = structure_report(model, masks)
    assert report == {k: v for k, v in spec.items() if k in report}
    assert set(report) >= {"connections", "hidden_units", "input_features", "params", "macs"}
    assert report["params"]["dense"] == sum(p.numel() for p in model.parameters())
    assert report["macs"]["dense"] == 16 * 48 + 48 * 24 + 24 * 3


def test_non_mlp_is_a_user_error():
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(UserError, match="export.shrink=false"):
        shrink_mlp(conv)
    model = MLP(4, [3], 1)
    model.norm = nn.BatchNorm1d(3)
    with pytest.raises(UserError, match=r"'norm' \(BatchNorm1d\).*export\.shrink=false"):
        structure_report(model)


def test_unknown_mask_name_is_a_user_error():
    model = MLP(4, [3], 1)
    with pytest.raises(UserError, match="layers.7.weight"):
        shrink_mlp(model, {"layers.7.weight": torch.ones(3, 4, dtype=torch.bool)})


def test_bias_masks_of_removed_units_are_applied_and_the_units_go():
    torch.manual_seed(0)
    model = MLP(5, [6], 2)
    masks = {"layers.0.weight": torch.ones(6, 5, dtype=torch.bool),
             "layers.0.bias": torch.ones(6, dtype=torch.bool),
             "layers.1.weight": torch.ones(2, 6, dtype=torch.bool)}
    masks["layers.0.weight"][[1, 4]] = False  # units 1 and 4 removed as a structured method
    masks["layers.0.bias"][[1, 4]] = False    # does: filter and bias
    with torch.no_grad():
        model.layers[0].bias.fill_(0.5)  # an unmasked bias would keep them alive (constant)
    ref = copy.deepcopy(model)
    apply_masks(ref, masks)
    shrunk, spec = shrink_mlp(model, masks)
    assert spec["hidden_kept"] == [[0, 2, 3, 5]]
    x = torch.randn(7, 5)
    assert torch.allclose(shrunk(x), ref(x), atol=1e-6)
    assert structure_report(model, masks)["connections"]["kept"] == 4 * 5 + 12


def test_count_macs_linear_and_conv():
    assert count_macs(MLP(20, [16], 3), torch.randn(5, 20)) == 20 * 16 + 16 * 3
    conv = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=4))
    # 8x8 then 6x6 outputs; a grouped conv reads in_channels / groups per output.
    assert count_macs(conv, torch.randn(2, 3, 10, 10)) == 8 * 8 * 8 * 27 + 8 * 6 * 6 * 2 * 9


def test_units_without_inputs_or_outputs_are_dead_not_constant():
    """A unit with no inputs and no outputs, and a unit read only by a dead unit, are dead; a
    unit with no inputs whose output reaches the logits is constant (issue 14: the old count
    called every input-less unit folded)."""
    model = MLP(4, [5, 3], 2)
    masks = {"layers.0.weight": torch.ones(5, 4, dtype=torch.bool),
             "layers.1.weight": torch.ones(3, 5, dtype=torch.bool),
             "layers.2.weight": torch.ones(2, 3, dtype=torch.bool)}
    masks["layers.0.weight"][0] = False          # h1 unit 0: no inputs ...
    masks["layers.1.weight"][:, 0] = False       # ... and no outputs: dead
    masks["layers.0.weight"][1] = False          # h1 unit 1: no inputs, read by h2: constant
    masks["layers.2.weight"][:, 2] = False       # h2 unit 2: reaches no output: dead ...
    masks["layers.1.weight"][:, 4] = False
    masks["layers.1.weight"][2, 4] = True        # ... and h1 unit 4 is read only by it: dead
    apply_masks(model, masks)
    _, spec = shrink_mlp(model, masks)
    units = spec["hidden_units"]
    assert (units["per_layer_kept"], units["per_layer_constant"], units["per_layer_dead"]) == \
        ([2, 2], [1, 0], [2, 1])
    # live: inputs -> h1 units 2, 3 (2 x 4), h1 units 2, 3 -> h2 units 0, 1 (4), h2 0, 1 -> out (4)
    assert spec["connections"]["live"] == 8 + 4 + 4
    assert spec["connections"]["kept"] == sum(int(m.sum()) for m in masks.values())


def test_summary_table_counts_live_connections(capsys):
    """The stage summary shows the live count (issue 14), not what the masks keep."""
    from compress.report import stage_table
    model = MLP(6, [5], 2)
    masks = {"layers.0.weight": torch.ones(5, 6, dtype=torch.bool),
             "layers.1.weight": torch.ones(2, 5, dtype=torch.bool)}
    masks["layers.0.weight"][[1, 3]] = False  # two constant units: 4 connections not live
    apply_masks(model, masks)
    record = {"stage": "prune", "method": "cpna", "metrics": {"test_auc": 0.9}, "density": 0.5,
              "structure": structure_report(model, masks), "out_dir": "o", "run_id": "r",
              "dense_metrics": {"test_auc": 0.8}}
    assert record["structure"]["connections"]["kept"] == 28
    stage_table(record)
    line = next(x for x in capsys.readouterr().out.splitlines() if "live connections" in x)
    assert line.replace("│", " ").split()[-2:] == ["40", "24"]  # dense total, live
