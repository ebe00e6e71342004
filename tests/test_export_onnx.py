"""ONNX export of shrunk MLPs: valid, dynamic batch, equal to torch, atomic, quiet."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from compress.core.masking import apply_masks  # noqa: E402
from compress.core.structure import shrink_mlp  # noqa: E402
from compress.errors import UserError  # noqa: E402
from compress.export import onnx as export  # noqa: E402
from compress.models.mlp import MLP  # noqa: E402

IN, HIDDEN, OUT = 24, [64, 32], 3


def initializer_elements(path) -> int:
    model = onnx.load(str(path))
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def input_dims(path) -> list:
    shape = onnx.load(str(path)).graph.input[0].type.tensor_type.shape
    return [d.dim_param or d.dim_value for d in shape.dim]


@pytest.fixture(scope="module")
def pruned():
    torch.manual_seed(0)
    model = MLP(IN, HIDDEN, OUT)
    g = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(p.shape, generator=g) < 0.15
             for n, p in model.named_parameters() if n.endswith("weight")}
    masks["layers.0.weight"][:, :4] = False  # unread inputs -> Gather in the graph
    apply_masks(model, masks)
    shrunk, spec = shrink_mlp(model, masks)
    return model.eval(), shrunk, spec


@pytest.fixture(scope="module")
def dense_onnx(pruned, tmp_path_factory):
    model, _, _ = pruned
    path = tmp_path_factory.mktemp("dense") / "d.onnx"
    return export.export_onnx(model, torch.randn(2, IN), path)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_export_matches_masked_model_at_any_batch(pruned, dense_onnx, tmp_path, capfd, exporter):
    model, shrunk, spec = pruned
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = export.export_onnx(shrunk, torch.randn(1, IN), tmp_path / "model.onnx",
                                  exporter=exporter)
    out, err = capfd.readouterr()
    assert out == "" and err == "" and caught == [], "the exporter must print nothing"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    onnx.checker.check_model(str(path), full_check=True)
    dims = input_dims(path)
    assert isinstance(dims[0], str) and dims[1:] == [IN]
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["input"]
    assert [o.name for o in graph.output] == ["logits"]
    assert any(n.op_type == "Gather" for n in graph.node)
    assert initializer_elements(path) < initializer_elements(dense_onnx)
    # Initializers: the shrunk params plus the int64 index of kept input features.
    assert initializer_elements(path) == spec["params"]["shrunk"] + len(spec["input_kept"])
    for batch in (1, 7):
        x = torch.randn(batch, IN)
        assert export.check_parity(path, model, x, rtol=1e-5) <= 1e-5
        got = export.ort_session(path).run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            want = model(x).numpy()
        assert got.shape == (batch, OUT)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_fully_dead_network_exports_and_stays_exact(tmp_path):
    torch.manual_seed(1)
    model = MLP(10, [8, 6], 2)
    masks = {n: torch.ones_like(p, dtype=torch.bool)
             for n, p in model.named_parameters() if n.endswith("weight")}
    masks["layers.1.weight"][:] = False
    apply_masks(model, masks)
    shrunk, spec = shrink_mlp(model, masks)
    assert spec["hidden_units"]["kept"] == 0
    path = export.export_onnx(shrunk, torch.randn(3, 10), tmp_path / "dead.onnx")
    assert input_dims(path)[1:] == [10]
    for batch in (1, 7):
        assert export.check_parity(path, model, torch.randn(batch, 10)) <= 1e-5


def test_metadata_round_trips(pruned, tmp_path):
    _, shrunk, _ = pruned
    meta = {"method": "cpna", "density": "0.15", "run_id": "abc123"}
    path = export.export_onnx(shrunk, torch.randn(2, IN), tmp_path / "m.onnx",
                              metadata={**meta, "steps": 300})
    got = export.onnx_metadata(path)
    assert {k: got[k] for k in meta} == meta
    assert got["steps"] == "300"
    onnx.checker.check_model(str(path), full_check=True)


def test_parity_failure_reports_error_and_tolerance(pruned, dense_onnx):
    model, _, _ = pruned
    other = MLP(IN, HIDDEN, OUT).eval()
    x = torch.randn(5, IN)
    got = export.ort_session(dense_onnx).run(None, {"input": x.numpy()})[0].astype(np.float64)
    with torch.no_grad():
        want = other(x).double().numpy()
    expected = np.abs(got - want).max() / np.abs(want).max()
    with pytest.raises(export.ExportError) as info:
        export.check_parity(dense_onnx, other, x, rtol=1e-5)
    assert isinstance(info.value, UserError)
    message = str(info.value)
    assert f"relative error {expected:.3g}" in message and "tolerance 1e-05" in message
    assert "\n" not in message


def test_parity_checks_output_shape(dense_onnx):
    with pytest.raises(export.ExportError, match="shape"):
        export.check_parity(dense_onnx, MLP(IN, HIDDEN, OUT + 1), torch.randn(4, IN), rtol=1.0)


def test_failed_export_leaves_nothing_behind(pruned, tmp_path, monkeypatch):
    _, shrunk, _ = pruned
    target = tmp_path / "model.onnx"

    def broken_check(*args, **kwargs):
        # Fails after the exporter has written the (temporary) file.
        assert any(tmp_path.iterdir())
        raise onnx.checker.ValidationError("simulated failure")

    monkeypatch.setattr(onnx.checker, "check_model", broken_check)
    with pytest.raises(export.ExportError, match="simulated failure"):
        export.export_onnx(shrunk, torch.randn(2, IN), target)
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"previous model")
    with pytest.raises(export.ExportError):
        export.export_onnx(shrunk, torch.randn(2, IN), target)
    assert sorted(tmp_path.iterdir()) == [target] and target.read_bytes() == b"previous model"


def test_export_keeps_training_mode_and_rejects_unknown_exporter(tmp_path):
    model = MLP(4, [3], 1).train()
    export.export_onnx(model, torch.randn(2, 4), tmp_path / "t.onnx")
    assert model.training
    with pytest.raises(UserError, match="exporter"):
        export.export_onnx(model, torch.randn(2, 4), tmp_path / "u.onnx", exporter="tflite")
    assert not (tmp_path / "u.onnx").exists()


def test_session_options_and_latency(dense_onnx):
    session = export.ort_session(dense_onnx, threads=3)
    opts = session.get_session_options()
    assert opts.intra_op_num_threads == 3 and opts.inter_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert opts.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert session.get_providers() == ["CPUExecutionProvider"]
    seconds = export.ort_latencies([dense_onnx], batch=16, in_features=IN, repeats=5)[0]
    assert seconds > 0
