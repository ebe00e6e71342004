"""k-D XOR of the CPNA paper: x ~ U[-1,1]^p, y = 1[prod of the first k coordinates > 0]."""

from __future__ import annotations

import torch
from pydantic import BaseModel, Field, model_validator

from compress.vocab import OPTIONS

from compress.data.base import DataBundle, split_three
from compress.registry import register_dataset


class XorParams(BaseModel):
    model_config = OPTIONS
    k: int = Field(3, ge=1, description="relevant coordinates (the XOR order)")
    p: int = Field(60, ge=1, description="total features; p - k are irrelevant")
    n_train: int = Field(3000, ge=1)
    n_val: int = Field(1000, ge=1)
    n_test: int = Field(3000, ge=1)
    seed: int = Field(0, description="data seed, independent of the training seed")

    @model_validator(mode="after")
    def _k_le_p(self):
        if self.k > self.p:
            raise ValueError(f"k={self.k} relevant features cannot exceed p={self.p}; "
                             "set data.p >= data.k")
        return self


def xor_samples(n: int, k: int, p: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, p, generator=generator) * 2 - 1
    y = (x[:, :k].prod(dim=1) > 0).long()
    return x, y


@register_dataset("xor", params=XorParams,
                  summary="k-D XOR with p-k irrelevant features (generated, binary)")
def load_xor(p: XorParams) -> DataBundle:
    g = torch.Generator().manual_seed(p.seed)
    n = p.n_train + p.n_val + p.n_test
    x, y = xor_samples(n, p.k, p.p, g)
    train, val, test = split_three(x, y, (p.n_train, p.n_val, p.n_test), p.seed)
    return DataBundle(f"xor{p.k}d-p{p.p}", train, val, test, num_classes=2, in_shape=(p.p,))
