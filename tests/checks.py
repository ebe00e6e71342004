"""Invariants tests assert on, kept out of the package (nothing in compress needs them)."""

from __future__ import annotations


def is_subset(inner, outer) -> bool:
    """Every weight kept by mask set `inner` is kept by `outer` (masks only ever shrink)."""
    return all(not bool((m & ~outer[n]).any()) for n, m in inner.items())
