"""Durations and pruning schedules (pure functions)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator

from compress.errors import UserError

_DURATION = re.compile(r"^\s*(\d+)\s*(ep|it)\s*$")


@dataclass(frozen=True)
class Duration:
    amount: int
    unit: str  # "ep" or "it"

    def steps(self, steps_per_epoch: int) -> int:
        return self.amount * steps_per_epoch if self.unit == "ep" else self.amount

    def __str__(self) -> str:
        return f"{self.amount}{self.unit}"


def parse_duration(text: str | int) -> Duration:
    """'150ep' (epochs) or '4000it' (iterations); a bare integer means epochs."""
    if isinstance(text, int):
        text = f"{text}ep"
    m = _DURATION.match(str(text))
    if not m:
        raise UserError(f"duration {text!r} is not like '150ep' or '4000it'")
    return Duration(int(m.group(1)), m.group(2))


def steps_per_epoch(samples: int, batch_size: int) -> int:
    """Optimizer steps in one pass over `samples` (the last batch may be short)."""
    return max(1, -(-samples // batch_size))


def anneal_count(start: int, target: int, step: int, steps: int, mu: float) -> int:
    """Connections kept at `step` of the FSA annealing schedule (Barbu et al.).

    M_e = k + (M - k) * max(0, (N - 2e) / (2 e mu + N)): starts at M, reaches k at e = N/2,
    then stays at k. mu = 0 is linear; larger mu removes more early.
    """
    if steps <= 0 or start <= target:
        return min(start, max(target, 0))
    frac = max(0.0, (steps - 2 * step) / (2 * step * mu + steps))
    return max(target, min(start, int(math.ceil(target + (start - target) * frac))))


def gmp_sparsity(t: int, s_i: float, s_f: float, t0: int, n: int, dt: int) -> float | None:
    """Zhu & Gupta's cubic schedule: the sparsity to set at step t, or None between updates.

    Updates happen at t0, t0 + dt, ..., t0 + n*dt; the last one is exactly s_f.
    """
    if t < t0 or (t - t0) % dt or (t - t0) // dt > n:
        return None
    j = (t - t0) // dt
    if j == n:
        return s_f
    return s_f + (s_i - s_f) * (1 - j / n) ** 3


def per_round_fraction(density: float, rounds: int) -> float:
    """The fraction of survivors removed each round so that `rounds` rounds reach `density`."""
    return 1 - density ** (1 / rounds)


def _valid_duration(text: str) -> str:
    try:
        parse_duration(text)
    except UserError as e:
        raise ValueError(str(e)) from None
    return text


# A config field holding a duration ('150ep' / '4000it'), checked when the config is read.
DurationStr = Annotated[str, AfterValidator(_valid_duration)]
