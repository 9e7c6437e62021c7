"""Transformer encoder layers: multi-head self-attention with a fused and an explicit path.

Mask convention everywhere: ``attention_mask`` (B, N) bool, True = a real token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def key_padding_bias(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive attention bias from a (B, N) bool mask: 0 on real keys, -inf on padding.

    Returns: (B, 1, 1, N), broadcastable over heads and queries.
    """
    bias = torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device)
    bias = bias.masked_fill(~attention_mask, float("-inf"))
    return bias[:, None, None, :]


class SelfAttention(nn.Module):
    """Multi-head self-attention.

    Two paths compute the same thing: the fused one (``F.scaled_dot_product_attention``) for
    training speed, and an explicit one that also returns the attention probabilities (for pooling
    weights and ONNX export). Tests prove them equal.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False) -> None:
        super().__init__()
        assert dim % num_heads == 0, "dim must be divisible by num_heads"
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=qkv_bias)

    def forward(
        self, x: Tensor, attention_mask: Tensor, explicit: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Attend over the real tokens.

        Args:
            x: (B, N, D) float32.
            attention_mask: (B, N) bool, True = real token. Only keys are masked; padded queries
                still produce (ignored) outputs.
            explicit: use the explicit path and return the attention probabilities.

        Returns:
            out (B, N, D) and, on the explicit path, probabilities (B, H, N, N) (else None).
        """
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        bias = key_padding_bias(attention_mask, x.dtype)
        probs: Tensor | None = None
        if explicit:
            logits = (q @ k.transpose(-2, -1)) * self.scale + bias
            probs = logits.softmax(dim=-1)
            out = probs @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.transpose(1, 2).reshape(B, N, D)
        return self.proj(out), probs


class FeedForward(nn.Module):
    """Linear -> GELU -> dropout -> Linear -> dropout, as in the public Attenuator."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, N, D) -> (B, N, D)."""
        out: Tensor = self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
        return out


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + ff(LN(x))."""

    def __init__(
        self, dim: int, num_heads: int, mlp_dim: int, dropout: float, qkv_bias: bool
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, mlp_dim, dropout)

    def forward(
        self, x: Tensor, attention_mask: Tensor, explicit: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """x: (B, N, D), attention_mask: (B, N) bool -> (B, N, D), probs (B, H, N, N) or None."""
        attended, probs = self.attn(self.norm1(x), attention_mask, explicit)
        x = x + attended
        x = x + self.ff(self.norm2(x))
        return x, probs


class Encoder(nn.Module):
    """A stack of pre-LN blocks.

    ``fused`` picks the attention path of every block (``set_fused``); the last block runs the
    explicit path whenever its attention probabilities are asked for.
    """

    def __init__(
        self, dim: int, depth: int, num_heads: int, mlp_dim: int, dropout: float, qkv_bias: bool
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            EncoderBlock(dim, num_heads, mlp_dim, dropout, qkv_bias) for _ in range(depth)
        )
        self.fused = True

    def forward(
        self, x: Tensor, attention_mask: Tensor, return_last_attention: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """x: (B, N, D), attention_mask: (B, N) bool.

        Returns:
            outputs (B, N, D) and the last block's attention probabilities (B, H, N, N) when
            ``return_last_attention`` (else None).
        """
        probs: Tensor | None = None
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            explicit = not self.fused or (return_last_attention and i == last)
            x, probs = block(x, attention_mask, explicit)
        return x, probs if return_last_attention else None
