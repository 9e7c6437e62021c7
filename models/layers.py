"""Transformer encoder layers: multi-head self-attention with a fused and an explicit path.

Mask convention everywhere: ``attention_mask`` (B, N) bool, True = a real token.

Three ways to compute the same attention (tests prove them equal):

- ``fused``: ``F.scaled_dot_product_attention``, for training speed;
- ``explicit``: the math written out, which also returns the probabilities (B, H, N, N);
- ``operator``: one call of :func:`key_padding_attention`, a custom operator that the ONNX
  export translates into a kernel whose memory is linear in N (``export/attention.py``); in
  eager mode it is the fused path. ``operator+first`` adds the explicit probabilities of the
  first query only, (B, H, 1, N): the class token's row, all that a pool reads of them.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

AttentionPath = Literal["fused", "explicit", "operator", "operator+first"]


def key_padding_bias(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive attention bias from a (B, N) bool mask: 0 on real keys, -inf on padding.

    Returns: (B, 1, 1, N), broadcastable over heads and queries.
    """
    bias = torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device)
    bias = bias.masked_fill(~attention_mask, float("-inf"))
    return bias[:, None, None, :]


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """(B, N, H * Dh) -> (B, H, N, Dh)."""
    B, N, D = x.shape
    return x.reshape(B, N, num_heads, D // num_heads).transpose(1, 2)


@torch.library.custom_op("adapool::key_padding_attention", mutates_args=())
def key_padding_attention(
    q: Tensor, k: Tensor, v: Tensor, attention_mask: Tensor, num_heads: int, scale: float
) -> Tensor:
    """Multi-head attention over the real keys, as one operator (what the ONNX export sees).

    Args:
        q, k, v: (B, N, H * Dh) float32, head h in features h * Dh .. (h + 1) * Dh - 1.
        attention_mask: (B, N) bool, True = a real key. Every row needs one.
        num_heads: H.
        scale: the factor on q . k.

    Returns:
        (B, N, H * Dh), heads side by side as in q.
    """
    B, N, D = q.shape
    out = F.scaled_dot_product_attention(
        split_heads(q, num_heads),
        split_heads(k, num_heads),
        split_heads(v, num_heads),
        attn_mask=key_padding_bias(attention_mask, q.dtype),
        scale=scale,
    )
    return out.transpose(1, 2).reshape(B, N, D)


@key_padding_attention.register_fake
def _key_padding_attention_shape(
    q: Tensor, k: Tensor, v: Tensor, attention_mask: Tensor, num_heads: int, scale: float
) -> Tensor:
    return torch.empty_like(q)


class SelfAttention(nn.Module):
    """Multi-head self-attention, by any of the paths of :data:`AttentionPath`."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False) -> None:
        super().__init__()
        assert dim % num_heads == 0, "dim must be divisible by num_heads"
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=qkv_bias)

    def forward(
        self, x: Tensor, attention_mask: Tensor, path: AttentionPath = "fused"
    ) -> tuple[Tensor, Tensor | None]:
        """Attend over the real tokens.

        Args:
            x: (B, N, D) float32.
            attention_mask: (B, N) bool, True = real token. Only keys are masked; padded queries
                still produce (ignored) outputs.
            path: how to compute it (module docstring).

        Returns:
            out (B, N, D) and the probabilities: (B, H, N, N) on the explicit path, (B, H, 1, N)
            on ``operator+first``, else None.
        """
        B, N, D = x.shape
        H = self.num_heads
        probs: Tensor | None = None
        if path in ("operator", "operator+first"):
            q, k, v = self.qkv(x).chunk(3, dim=-1)  # (B, N, D) each, heads side by side
            out = key_padding_attention(q, k, v, attention_mask, H, self.scale)
            if path == "operator+first":
                logits = split_heads(q[:, :1], H) @ split_heads(k, H).transpose(-2, -1)
                logits = logits * self.scale + key_padding_bias(attention_mask, x.dtype)
                probs = logits.softmax(dim=-1)
            return self.proj(out), probs
        q, k, v = self.qkv(x).reshape(B, N, 3, H, self.head_dim).permute(2, 0, 3, 1, 4)
        bias = key_padding_bias(attention_mask, x.dtype)
        if path == "explicit":
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
        self, x: Tensor, attention_mask: Tensor, path: AttentionPath = "fused"
    ) -> tuple[Tensor, Tensor | None]:
        """x: (B, N, D), attention_mask: (B, N) bool -> (B, N, D), probs or None (by path)."""
        attended, probs = self.attn(self.norm1(x), attention_mask, path)
        x = x + attended
        x = x + self.ff(self.norm2(x))
        return x, probs


class Encoder(nn.Module):
    """A stack of pre-LN blocks.

    ``fused`` picks the attention path of every block (``set_fused``); the last block runs the
    explicit path whenever its attention probabilities are asked for. ``operator`` (set by the
    ONNX export) overrides both: every block calls :func:`key_padding_attention`, and the last
    block's probabilities, when asked for, are the first query's row only, (B, H, 1, N).
    """

    def __init__(
        self, dim: int, depth: int, num_heads: int, mlp_dim: int, dropout: float, qkv_bias: bool
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            EncoderBlock(dim, num_heads, mlp_dim, dropout, qkv_bias) for _ in range(depth)
        )
        self.fused = True
        self.operator = False

    def forward(
        self, x: Tensor, attention_mask: Tensor, return_last_attention: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """x: (B, N, D), attention_mask: (B, N) bool.

        Returns:
            outputs (B, N, D) and, when ``return_last_attention``, the last block's attention
            probabilities: (B, H, N, N), or (B, H, 1, N) with ``operator`` (else None).
        """
        probs: Tensor | None = None
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            wanted = return_last_attention and i == last
            x, probs = block(x, attention_mask, self._path(wanted))
        return x, probs if return_last_attention else None

    def _path(self, probabilities: bool) -> AttentionPath:
        if self.operator:
            return "operator+first" if probabilities else "operator"
        return "explicit" if probabilities or not self.fused else "fused"
