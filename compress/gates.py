"""Quality gates for CI jobs: `--gate 'metrics.test_accuracy>=0.97' --gate 'density<=0.2'`.

A gate is `PATH OP NUMBER`. PATH is a dotted path into the command's JSON summary (what
`--json` prints): `metrics.test_accuracy`, `density`, `export_metrics.onnx_bytes`,
`stages.<id>.metrics.<name>` for any stage of a pipeline. OP is one of >= <= > < == !=.
Gates are parsed before anything runs (a typo costs nothing) and evaluated on the summary
after the run; a failed gate makes the command exit 3.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass

from compress.errors import UserError

_OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
        ">": operator.gt, "<": operator.lt}
_GATE = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(>=|<=|==|!=|>|<)\s*(\S+)\s*$")


@dataclass(frozen=True)
class Gate:
    text: str
    path: str
    op: str
    threshold: float

    def check(self, summary: dict) -> dict:
        value = lookup(summary, self.path)
        passed = not math.isnan(value) and _OPS[self.op](value, self.threshold)
        return {"gate": self.text, "value": value, "passed": bool(passed)}


def parse_gates(texts: list[str] | None) -> list[Gate]:
    gates = []
    for text in texts or []:
        m = _GATE.match(text)
        if not m:
            raise UserError(f"gate {text!r} is not PATH OP NUMBER, e.g. "
                            "'metrics.test_accuracy>=0.97' or 'density<=0.2' (OP: >= <= > < == !=)")
        path, op, raw = m.groups()
        try:
            threshold = float(raw)
        except ValueError:
            raise UserError(f"gate {text!r}: {raw!r} is not a number; write PATH OP NUMBER, "
                            "e.g. 'metrics.test_accuracy>=0.97'") from None
        gates.append(Gate(text.strip(), path, op, threshold))
    return gates


def lookup(summary: dict, path: str) -> float:
    node = summary
    for i, key in enumerate(path.split(".")):
        if not isinstance(node, dict) or key not in node:
            where = ".".join(path.split(".")[:i]) or "the summary"
            options = sorted(k for k, v in node.items() if isinstance(v, (dict, int, float))) \
                if isinstance(node, dict) else []
            raise UserError(f"gate path {path!r}: no {key!r} in {where}; there: "
                            f"{', '.join(options) or 'nothing'}")
        node = node[key]
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        raise UserError(f"gate path {path!r} is not a number ({type(node).__name__})")
    return float(node)


def evaluate(gates: list[Gate], summary: dict) -> list[dict]:
    return [g.check(summary) for g in gates]


def failures(results: list[dict]) -> list[str]:
    return [f"gate failed: {r['gate']} (value {r['value']:.6g})" for r in results if not r["passed"]]
