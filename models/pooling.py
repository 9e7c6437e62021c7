"""Global pooling layers. Each returns the pooled vector and per-token pooling weights.

``weights`` says, for every method, how much each token contributed to the pooled vector: each
head's row sums to 1 over the real tokens and is exactly 0 on padding.

All pools share one call signature, ``pool(x, attention_mask, last_attention, inputs)``, and an
``extend`` hook that runs before the encoder (only the class token uses it), so the model has no
per-method branches. ``inputs`` are the un-mixed tokens the encoder received: the faithful
AdaPool (``values = "inputs"``) takes its values from them, and then also gives each token's
exact additive term of the pooled vector (``token_terms``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.config import PoolingConfig


class Pool(nn.Module):
    """Base class: identity ``extend``, no need for the encoder's last attention."""

    num_heads: int = 1
    needs_last_attention: bool = False
    exact_terms: bool = False  # pooled == token_terms(...).sum(1) + bias, exactly

    def extend(self, x: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Add tokens before the encoder (the class token does). x: (B, N, D), mask: (B, N)."""
        return x, attention_mask

    def forward(
        self, x: Tensor, attention_mask: Tensor, last_attention: Tensor | None, inputs: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Pool encoder outputs.

        Args:
            x: (B, N', D) float32 encoder outputs, padded positions already zeroed.
            attention_mask: (B, N') bool, True = real token (N' includes tokens added by extend).
            last_attention: (B, H, N', N') probabilities of the last encoder block, or None.
            inputs: (B, N', D) the encoder's input tokens (un-mixed), padding zeroed.

        Returns:
            pooled (B, D) and weights (B, H, N) over the caller's N input tokens.
        """
        raise NotImplementedError

    def token_terms(self, weights: Tensor, inputs: Tensor) -> Tensor:
        """Each token's additive term of the pooled vector (only when ``exact_terms``).

        Args:
            weights: (B, H, N) this pool's weights for ``inputs``.
            inputs: (B, N, D) the encoder's input tokens.

        Returns:
            (B, N, D): pooled == terms.sum(1) + ``term_bias()``; 0 on padding.
        """
        raise NotImplementedError(f"{type(self).__name__} has no exact per-token terms")

    def term_bias(self) -> Tensor:
        """(D,) the part of the pooled vector that no token contributes (``exact_terms`` only)."""
        raise NotImplementedError(f"{type(self).__name__} has no exact per-token terms")


def masked_mean_weights(attention_mask: Tensor) -> Tensor:
    """Uniform weights over the real tokens: (B, N) bool -> (B, N) float32 rows summing to 1."""
    w = attention_mask.to(torch.float32)
    return w / w.sum(dim=1, keepdim=True)


class AvgPool(Pool):
    """Mean of the real tokens. Weights: 1/n on each of the n real tokens."""

    def forward(
        self, x: Tensor, attention_mask: Tensor, last_attention: Tensor | None, inputs: Tensor
    ) -> tuple[Tensor, Tensor]:
        """x: (B, N, D), attention_mask: (B, N) -> pooled (B, D), weights (B, 1, N)."""
        w = masked_mean_weights(attention_mask)
        pooled = (w.unsqueeze(-1) * x).sum(dim=1)
        return pooled, w.unsqueeze(1)


class MaxPool(Pool):
    """Per-feature maximum over the real tokens.

    Weights: each token's share of the features in which it holds the maximum (ties share the
    feature equally), so a token that wins 4 of 16 features gets 0.25.
    """

    def forward(
        self, x: Tensor, attention_mask: Tensor, last_attention: Tensor | None, inputs: Tensor
    ) -> tuple[Tensor, Tensor]:
        """x: (B, N, D), attention_mask: (B, N) -> pooled (B, D), weights (B, 1, N)."""
        x = x.masked_fill(~attention_mask.unsqueeze(-1), float("-inf"))
        pooled = x.amax(dim=1)
        # (B, N, D): 1 where a token holds the feature's maximum; a tie splits the feature.
        winners = (x == pooled.unsqueeze(1)).to(x.dtype)
        share = winners / winners.sum(dim=1, keepdim=True)
        return pooled, share.mean(dim=-1).unsqueeze(1)


class ClsToken(Pool):
    """A learned class token prepended before the encoder; its output is the pooled vector.

    Weights: the class token's attention over the input tokens in the last encoder block, per head,
    renormalised over the real input tokens (the class token's attention to itself is dropped).
    Unlike the public code, the class token is prepended *after* the query embedding, so it never
    takes the ego token's embedding, and the attention mask is widened to cover it.
    """

    needs_last_attention = True

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.token = nn.Parameter(torch.zeros(dim))
        nn.init.normal_(self.token, std=0.02)

    def extend(self, x: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """(B, N, D), (B, N) -> (B, 1 + N, D), (B, 1 + N) with the class token first."""
        B, _, D = x.shape
        cls = self.token.expand(B, 1, D)
        real = torch.ones((B, 1), dtype=torch.bool, device=attention_mask.device)
        return torch.cat([cls, x], dim=1), torch.cat([real, attention_mask], dim=1)

    def forward(
        self, x: Tensor, attention_mask: Tensor, last_attention: Tensor | None, inputs: Tensor
    ) -> tuple[Tensor, Tensor]:
        """x: (B, 1 + N, D), mask: (B, 1 + N), last_attention: (B, H, 1 + N, 1 + N).

        Returns pooled (B, D) and weights (B, H, N).
        """
        assert last_attention is not None, "ClsToken needs the last block's attention"
        cls_to_inputs = last_attention[:, :, 0, 1:]
        w = cls_to_inputs * attention_mask[:, None, 1:].to(x.dtype)
        return x[:, 0], w / w.sum(dim=-1, keepdim=True)


class TokenQuery(nn.Module):
    """The query is one token's output (the "ego" token)."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def forward(self, x: Tensor, attention_mask: Tensor) -> Tensor:
        """x: (B, N, D) -> (B, D)."""
        return x[:, self.index]


class MeanQuery(nn.Module):
    """The query is the mean of the real tokens' outputs."""

    def forward(self, x: Tensor, attention_mask: Tensor) -> Tensor:
        """x: (B, N, D), attention_mask: (B, N) -> (B, D)."""
        return (masked_mean_weights(attention_mask).unsqueeze(-1) * x).sum(dim=1)


class IndicesQuery(nn.Module):
    """The query is the mean of the outputs at fixed token indices (for example focal patches)."""

    def __init__(self, indices: tuple[int, ...]) -> None:
        super().__init__()
        self.indices: Tensor
        self.register_buffer("indices", torch.tensor(indices, dtype=torch.long), persistent=False)

    def forward(self, x: Tensor, attention_mask: Tensor) -> Tensor:
        """x: (B, N, D) -> (B, D)."""
        return x.index_select(1, self.indices).mean(dim=1)


class LearnedQuery(nn.Module):
    """The query is a learned vector, the same for every input."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(dim))
        nn.init.normal_(self.query, std=0.02)

    def forward(self, x: Tensor, attention_mask: Tensor) -> Tensor:
        """x: (B, N, D) -> (B, D)."""
        return self.query.expand(x.shape[0], -1)


class AdaPool(Pool):
    """Adaptive pooling: multi-head cross-attention with a single query over the tokens.

    w = softmax((x_q W_Q)(x_i W_K)^T / sqrt(D)) per head; pooled = (sum_i w_i x_i W_V) W_O,
    plus the query vector itself when ``residual``. The scale is 1/sqrt(D) over the full width,
    as in the paper, not per head. With W_Q = 0 the weights are uniform (AvgPool).

    With ``values = "inputs"`` (faithful) the values come from the encoder's un-mixed input
    tokens u_i instead: pooled = sum_i sum_h w_hi (u_i W_V^h) W_O^h + b_O, so token i's term is
    known exactly (``token_terms``) and its share per head is w_hi by construction. The query and
    keys still come from the encoder outputs. At depth 0 both variants are the same function.
    """

    def __init__(
        self, dim: int, num_heads: int, config: PoolingConfig, qkv_bias: bool = False
    ) -> None:
        super().__init__()
        assert dim % num_heads == 0, "dim must be divisible by num_heads"
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = dim**-0.5
        self.query = self._make_query(dim, config)
        self.residual = config.use_residual
        self.values_from_inputs = config.values == "inputs"
        self.exact_terms = self.values_from_inputs
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=qkv_bias)

    @staticmethod
    def _make_query(dim: int, config: PoolingConfig) -> nn.Module:
        match config.query:
            case "token":
                return TokenQuery(config.query_index)
            case "mean":
                return MeanQuery()
            case "indices":
                return IndicesQuery(config.query_indices)
            case "learned":
                return LearnedQuery(dim)
        raise ValueError(f"unknown query mode {config.query!r}")

    def forward(
        self, x: Tensor, attention_mask: Tensor, last_attention: Tensor | None, inputs: Tensor
    ) -> tuple[Tensor, Tensor]:
        """x, inputs: (B, N, D), attention_mask: (B, N) -> pooled (B, D), weights (B, H, N)."""
        B, N, D = x.shape
        H, Dh = self.num_heads, self.head_dim
        query = self.query(x, attention_mask)  # (B, D)
        q = self.q(query).reshape(B, H, 1, Dh)
        k = self.k(x).reshape(B, N, H, Dh).transpose(1, 2)  # (B, H, N, Dh)
        v = self._values(inputs if self.values_from_inputs else x)
        logits = (q @ k.transpose(-2, -1)).squeeze(2) * self.scale  # (B, H, N)
        logits = logits.masked_fill(~attention_mask.unsqueeze(1), float("-inf"))
        weights = logits.softmax(dim=-1)
        heads = (weights.unsqueeze(2) @ v).reshape(B, D)
        pooled = self.proj(heads)
        if self.residual:
            pooled = pooled + query
        return pooled, weights

    def _values(self, tokens: Tensor) -> Tensor:
        """(B, N, D) -> per-head values (B, H, N, Dh)."""
        B, N, _ = tokens.shape
        values: Tensor = self.v(tokens)
        return values.reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)

    def token_terms(self, weights: Tensor, inputs: Tensor) -> Tensor:
        """weights (B, H, N), inputs (B, N, D) -> (B, N, D), summing over N to pooled - bias."""
        if not self.exact_terms:
            raise NotImplementedError("only AdaPool with values = 'inputs' has exact token terms")
        B, N, D = inputs.shape
        # Token i's head outputs w_hi v_hi, concatenated over heads, through W_O without bias.
        weighted = (weights.unsqueeze(-1) * self._values(inputs)).transpose(1, 2).reshape(B, N, D)
        terms: Tensor = weighted @ self.proj.weight.T
        return terms

    def term_bias(self) -> Tensor:
        """(D,): W_O's bias (zero without qkv_bias)."""
        bias: Tensor | None = self.proj.bias
        return bias if bias is not None else self.proj.weight.new_zeros(self.proj.out_features)


def build_pool(dim: int, num_heads: int, config: PoolingConfig, qkv_bias: bool = False) -> Pool:
    """The pooling layer named by ``config.method``."""
    match config.method:
        case "avg":
            return AvgPool()
        case "max":
            return MaxPool()
        case "cls":
            return ClsToken(dim, num_heads)
        case "adapool":
            return AdaPool(dim, num_heads, config, qkv_bias)
    raise ValueError(f"unknown pooling method {config.method!r}")
