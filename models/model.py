"""The pooling model: optional input projection and query embedding, encoder, global pool."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from models.config import ModelConfig
from models.layers import Encoder
from models.pooling import Pool, build_pool


class ModelOutput(NamedTuple):
    """What the model returns.

    Attributes:
        pooled: (B, D_out) float32, the pooled vector.
        weights: (B, H, N) float32, each token's share of the pooled vector per head; rows sum to 1
            over the real tokens and are 0 on padding.
        output: (B, K) float32, the prediction: the task head's logits (classification, K = C)
            or values (regression, K = T); the pooled vector itself without a head.
        contributions: (B, N, K) float32 when asked for: token i's exact additive term of each
            output (output == contributions.sum(1) + ``output_bias()``; 0 on padding). Only
            models whose pool has exact terms (AdaPool with values = "inputs") give them.
    """

    pooled: Tensor
    weights: Tensor
    output: Tensor
    contributions: Tensor | None = None


class QueryEmbedding(nn.Module):
    """A learned 2-entry embedding: entry 0 is added to token 0 (the ego), entry 1 to the others."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(2, dim)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, N, D) -> (B, N, D)."""
        is_other = (torch.arange(x.shape[1], device=x.device) > 0).long()
        embedded: Tensor = self.embedding(is_other)
        return x + embedded


class InputError(ValueError):
    """The input tensors cannot be pooled (for example a row with no real token)."""


class PoolingModel(nn.Module):
    """Transformer encoder + global pool, built from a :class:`ModelConfig`.

    Call as ``model(x, attention_mask)`` with x (B, N, input_dim) float32 and attention_mask (B, N)
    bool (True = real token). Padded tokens never change any output, whatever values they hold.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        # The checks read values (``nonzero``), which torch.func.vmap cannot: the stacked trainer
        # (models.stacked) turns them off for data it generated itself.
        self.check_inputs = True
        dim = config.dim
        self.input_proj: nn.Module = (
            nn.Linear(config.input_dim, dim) if config.input_projection else nn.Identity()
        )
        self.query_embedding: nn.Module = (
            QueryEmbedding(dim) if config.query_embedding else nn.Identity()
        )
        self.encoder = Encoder(
            dim, config.depth, config.num_heads, config.mlp_dim, config.dropout, config.qkv_bias
        )
        self.norm: nn.Module = nn.LayerNorm(dim) if config.final_norm else nn.Identity()
        self.pool: Pool = build_pool(dim, config.num_heads, config.pooling, config.qkv_bias)
        self.output_proj: nn.Module = (
            nn.Linear(dim, config.output_dim) if config.output_dim is not None else nn.Identity()
        )
        head = config.head
        self.head: nn.Module = (
            nn.Identity() if head.task == "none" else nn.Linear(config.out_dim, head.outputs)
        )

    @property
    def has_contributions(self) -> bool:
        """Whether ``forward(..., contributions=True)`` can give exact per-token terms."""
        return self.pool.exact_terms

    def set_fused_attention(self, fused: bool) -> None:
        """Choose the encoder's attention path: fused SDPA (training) or explicit (the math written
        out, with its probabilities). The ONNX export traces a third, ``encoder.operator = True``:
        one ``key_padding_attention`` operator per block (``models/layers.py``)."""
        self.encoder.fused = fused

    def forward(
        self, x: Tensor, attention_mask: Tensor, contributions: bool = False
    ) -> ModelOutput:
        """Pool a batch of token sets and predict from the pooled vector.

        Args:
            x: (B, N, input_dim) float32 tokens.
            attention_mask: (B, N) bool, True = real token.
            contributions: also return each token's exact term of each output (needs
                ``has_contributions``).

        Returns:
            ModelOutput with pooled (B, D_out), weights (B, H, N), output (B, K) and, when
            asked, contributions (B, N, K).

        Raises:
            InputError: a row has no real token, or the AdaPool query token is padding.
        """
        if self.check_inputs and not torch.compiler.is_compiling():
            self._check_inputs(x, attention_mask)
        # Zero the padding so that no value there (huge, inf, NaN) can leak through 0 * x.
        x = x.masked_fill(~attention_mask.unsqueeze(-1), 0.0)
        x = self.query_embedding(self.input_proj(x))
        x, mask = self.pool.extend(x, attention_mask)
        inputs = x.masked_fill(~mask.unsqueeze(-1), 0.0)
        x, last_attention = self.encoder(x, mask, self.pool.needs_last_attention)
        x = self.norm(x).masked_fill(~mask.unsqueeze(-1), 0.0)
        pooled, weights = self.pool(x, mask, last_attention, inputs)
        pooled = self.output_proj(pooled)
        terms = None
        if contributions:
            terms = self._linear_part(self.pool.token_terms(weights, inputs))
        return ModelOutput(pooled, weights, self.head(pooled), terms)

    def _linear_part(self, terms: Tensor) -> Tensor:
        """(B, N, D) pool terms through the output projection and head without their biases."""
        for layer in (self.output_proj, self.head):
            if isinstance(layer, nn.Linear):
                terms = terms @ layer.weight.T
        return terms

    def output_bias(self) -> Tensor:
        """(K,) the part of every output that no token contributes: the pool's, the output
        projection's and the head's biases carried through (``has_contributions`` only)."""
        bias: Tensor = self.head(self.output_proj(self.pool.term_bias()))
        return bias

    def _check_inputs(self, x: Tensor, attention_mask: Tensor) -> None:
        if x.ndim != 3 or x.shape[-1] != self.config.input_dim:
            raise InputError(f"x must be (B, N, {self.config.input_dim}), got {tuple(x.shape)}")
        if attention_mask.shape != x.shape[:2] or attention_mask.dtype != torch.bool:
            raise InputError(
                f"attention_mask must be bool of shape {tuple(x.shape[:2])}, "
                f"got {attention_mask.dtype} {tuple(attention_mask.shape)}"
            )
        empty = (~attention_mask.any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise InputError(f"rows {empty} have no real token (attention_mask all False)")
        pooling = self.config.pooling
        if pooling.method != "adapool" or pooling.query in ("mean", "learned"):
            return
        needed = [pooling.query_index] if pooling.query == "token" else list(pooling.query_indices)
        if max(needed) >= x.shape[1]:
            raise InputError(f"query token(s) {needed} out of range for {x.shape[1]} tokens")
        padded = (~attention_mask[:, needed].all(dim=1)).nonzero().flatten().tolist()
        if padded:
            raise InputError(f"rows {padded}: query token(s) {needed} are padding")


def build_model(config: ModelConfig) -> PoolingModel:
    """Build a :class:`PoolingModel` from a validated config."""
    return PoolingModel(config)
