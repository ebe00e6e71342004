"""Multi-head self-attention whose inner width differs from its input and output widths.

nn.MultiheadAttention ties the width of queries, keys and values to embed_dim, so a layer that
lost heads (or whose residual stream lost channels) cannot be one. PrunedAttention computes the
same function as nn.MultiheadAttention (self-attention, no masks, packed in_proj) for any
in_dim, num_heads * head_dim and out_dim, keeps its parameter names (in_proj_weight,
in_proj_bias, out_proj.weight/bias) so state dicts carry over, takes the same call
(query, key, value, need_weights=..., ...) and returns the same (output, weights) pair. It is
written with plain matmul/softmax, so both ONNX exporters handle it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PrunedAttention(nn.Module):
    def __init__(self, in_dim: int, num_heads: int, head_dim: int, out_dim: int,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.batch_first, self.dropout = batch_first, dropout
        inner = num_heads * head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, in_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner)) if bias else None
        self.out_proj = nn.Linear(inner, out_dim, bias=bias)
        nn.init.xavier_uniform_(self.in_proj_weight)

    @classmethod
    def like(cls, mha: nn.Module) -> "PrunedAttention":
        """An empty PrunedAttention shaped like `mha` (nn.MultiheadAttention or PrunedAttention)
        as it is now: widths read from its parameters."""
        inner = mha.in_proj_weight.shape[0] // 3
        return cls(mha.in_proj_weight.shape[1], inner // mha.head_dim, mha.head_dim,
                   mha.out_proj.weight.shape[0], bias=mha.in_proj_bias is not None,
                   batch_first=mha.batch_first, dropout=float(mha.dropout))

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                need_weights: bool = True, attn_mask: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False):
        if attn_mask is not None or key_padding_mask is not None or is_causal:
            raise NotImplementedError("PrunedAttention takes no attention masks")
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, n, _ = query.shape
        inner = self.num_heads * self.head_dim
        w = self.in_proj_weight
        bias = self.in_proj_bias if self.in_proj_bias is not None else [None] * 3
        split = (w[:inner], w[inner:2 * inner], w[2 * inner:])
        bsplit = (bias[:inner], bias[inner:2 * inner], bias[2 * inner:]) \
            if self.in_proj_bias is not None else (None, None, None)
        q, k, v = (F.linear(t, wi, bi).view(b, -1, self.num_heads, self.head_dim).transpose(1, 2)
                   for t, wi, bi in zip((query, key, value), split, bsplit))
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        attn = torch.softmax(scores, dim=-1)
        if self.training and self.dropout > 0:
            attn = F.dropout(attn, self.dropout)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, n, inner)
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        weights = None
        if need_weights:
            weights = attn.mean(1) if average_attn_weights else attn
        return out, weights
