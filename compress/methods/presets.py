"""Config overlays that several methods share: embedded defaults and tiny test settings.

A method's `defaults` is the config its `compress prune --method NAME` runs on when the user
gives nothing else; its `test_settings` make it run in a second for the registry-driven tests.
"""

from __future__ import annotations

# The lottery-ticket family's embedded default: LeNet-300-100 on the 5k MNIST subset (Adam
# 1.2e-3, batch 60 as in Frankle & Carbin; fewer iterations per round to finish in ~a minute).
LENET_MNIST5K = {"data": {"name": "mnist5k"}, "model": {"name": "lenet300"},
                 "train": {"lr": 0.0012, "batch_size": 60, "duration": "2000it",
                           "weight_decay": 0.0}}

# Tests: a 6-feature 2-D XOR and a 24-unit MLP; a conv net with BatchNorm on 8x8 digits for
# methods that need channels.
TINY_MLP = {"data": {"name": "xor", "k": 2, "p": 6, "n_train": 256, "n_val": 128, "n_test": 128},
            "model": {"name": "mlp", "hidden": [24]},
            "train": {"duration": "2ep", "batch_size": 64}}
TINY_CNN = {"data": {"name": "digits"},
            "model": {"name": "conv2", "width": 0.125, "batchnorm": True},
            "train": {"duration": "2ep", "batch_size": 128}}


def tiny(base: dict, **method: object) -> dict:
    """A test_settings overlay: `base` plus these method options."""
    return {**base, "method": dict(method)}
