import pytest

from compress.errors import UserError
from compress.gates import evaluate, failures, parse_gates

SUMMARY = {"metrics": {"test_accuracy": 0.95, "test_loss": 0.2}, "density": 0.18,
           "stages": {"export": {"metrics": {"onnx_bytes": 1200.0}}}, "method": "imp"}


def test_gates_pass_and_fail_on_the_summary():
    gates = parse_gates(["metrics.test_accuracy>=0.97", "density <= 0.2",
                         "stages.export.metrics.onnx_bytes<1000", "metrics.test_loss!=0.2"])
    results = evaluate(gates, SUMMARY)
    assert [r["passed"] for r in results] == [False, True, False, False]
    assert results[0]["value"] == 0.95
    lines = failures(results)
    assert len(lines) == 3 and "metrics.test_accuracy>=0.97" in lines[0] and "0.95" in lines[0]


@pytest.mark.parametrize("text, words", [
    ("metrics.test_accuracy=>0.9", ["PATH OP NUMBER"]),
    ("metrics.test_accuracy>=high", ["'high' is not a number"]),
    ("", ["PATH OP NUMBER"]),
])
def test_malformed_gates_are_refused_before_running(text, words):
    with pytest.raises(UserError) as e:
        parse_gates([text])
    assert all(w in str(e.value) for w in words)


@pytest.mark.parametrize("path, words", [
    ("metrics.test_acc", ["no 'test_acc' in metrics", "test_accuracy"]),
    ("method", ["not a number"]),
    ("stages.prune.metrics.x", ["no 'prune' in stages", "export"]),
])
def test_a_gate_on_a_missing_value_names_what_exists(path, words):
    with pytest.raises(UserError) as e:
        evaluate(parse_gates([f"{path}>=1"]), SUMMARY)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_nan_never_passes():
    assert not evaluate(parse_gates(["metrics.x>=0"]), {"metrics": {"x": float("nan")}})[0]["passed"]
