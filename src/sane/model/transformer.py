"""The transformer pieces of SANE: pre-LN blocks (as in GPT-2 / nanoGPT) and the 3-D token
position embedding.

Shapes: ``B`` windows of ``W`` tokens, model width ``d``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from sane.errors import FormatError


class SelfAttention(nn.Module):
    """Multi-head self-attention over all tokens of a window (no causal mask: a window is a
    set of weight rows, not a text). ``[B, W, d] -> [B, W, d]``."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, w, d = x.shape
        q, k, v = (t.view(b, w, self.n_heads, d // self.n_heads).transpose(1, 2)
                   for t in self.qkv(x).split(d, dim=2))
        p = self.dropout if self.training else 0.0
        if q.device.type == "cpu" and q.dtype == torch.bfloat16:
            # On CPU, the fused bf16 kernel's backward costs half a pretraining step on
            # windows this short; the plain one is twice as fast overall (measured in
            # benchmarks/bench_pretrain_precision.py, torch 2.13: 6 -> 12 steps/s, preset cpu).
            with sdpa_kernel(SDPBackend.MATH):
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return F.dropout(self.proj(y.transpose(1, 2).reshape(b, w, d)), self.dropout,
                         self.training)


class MLP(nn.Module):
    """``d -> 4d -> GELU -> d``, without biases."""

    def __init__(self, d_model: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, 4 * d_model, bias=False)
        self.proj = nn.Linear(4 * d_model, d_model, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """``x + attn(LN(x))``, then ``x + mlp(LN(x))``; LayerNorms without bias."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(d_model, bias=False)
        self.attn = SelfAttention(d_model, n_heads, dropout)
        self.ln_mlp = nn.LayerNorm(d_model, bias=False)
        self.mlp = MLP(d_model, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x))
        return x + self.mlp(self.ln_mlp(x))


class PositionEmbedding(nn.Module):
    """Learned embedding of token positions ``(n, l, k)``: global index, layer, row.

    ``[B, W, 3]`` int -> ``[B, W, d]``: the first half is ``E_n[n] + E_l[l]``, the second
    ``E_k[k]`` (SANE's layout). ``max_positions`` bounds each coordinate (exclusive); a
    position outside raises :class:`~sane.errors.FormatError`, since an embedding table cannot
    extrapolate.
    """

    def __init__(self, max_positions: tuple[int, int, int], d_model: int) -> None:
        super().__init__()
        half = d_model // 2
        self.max_positions = tuple(max_positions)
        self.global_index = nn.Embedding(max_positions[0], half)
        self.layer = nn.Embedding(max_positions[1], half)
        self.row = nn.Embedding(max_positions[2], d_model - half)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        if positions.ndim != 3 or positions.shape[-1] != 3:
            raise FormatError(f"positions must be [B, W, 3], got {list(positions.shape)}")
        if positions.dtype not in (torch.int16, torch.int32, torch.int64):
            raise FormatError(f"positions must be integers, got {positions.dtype}")
        positions = positions.long()
        low, high = positions.amin(dim=(0, 1)), positions.amax(dim=(0, 1))
        for axis, name in enumerate("nlk"):
            if low[axis] < 0 or high[axis] >= self.max_positions[axis]:
                raise FormatError(
                    f"token position {name} spans [{int(low[axis])}, {int(high[axis])}], "
                    f"outside this model's range [0, {self.max_positions[axis]}) (max_positions "
                    f"{list(self.max_positions)}): the model was built for shorter sequences"
                )
        n, layer, row = positions.unbind(-1)
        return torch.cat([self.global_index(n) + self.layer(layer), self.row(row)], dim=-1)
