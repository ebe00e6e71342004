"""Sweep progress on stderr (stdout belongs to --json): one line per finished cell, led by a
bar of the cells done so far, so a log file shows the same as a terminal."""

from __future__ import annotations

import sys

BAR_WIDTH = 20


class CellProgress:
    def __init__(self, total: int, stream=None):
        self.total, self.done = total, 0
        self.stream = stream if stream is not None else sys.stderr

    def note(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def cell(self, row: dict) -> None:
        self.done += 1
        self.note(f"{self.bar()} {self.done:>{len(str(self.total))}}/{self.total}  {row['name']}  "
                  f"{_score(row['metrics'])}  {_where(row)}")

    def bar(self) -> str:
        filled = round(BAR_WIDTH * self.done / self.total) if self.total else BAR_WIDTH
        return "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]"


def pretrain_line(source: dict) -> str:
    how = "reused" if source.get("reused") else f"{source.get('seconds', 0):.1f} s"
    return f"pretrain done ({how}{_on(source)}): cells start"


def _score(metrics: dict) -> str:
    shown = [f"{k} {metrics[k]:.4f}" for k in ("test_auc", "test_accuracy") if k in metrics][:1]
    return "  ".join([*shown, f"kept {metrics.get('density', 1.0):.4f}"])


def _where(row: dict) -> str:
    if row.get("reused"):
        return "reused"
    return f"{row.get('seconds', 0):.1f} s{_on(row)}"


def _on(record: dict) -> str:
    return f" on {record['host']}" if record.get("host") else ""
