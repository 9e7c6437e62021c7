"""The encoder's export path (one key_padding_attention operator per block) against the others."""

from __future__ import annotations

import torch

from models.layers import SelfAttention, key_padding_attention, split_heads
from tests.models.test_model import make


def test_operator_path_equals_explicit(
    variant: str, inputs: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """The path the ONNX export traces gives the explicit path's outputs, cls weights included
    (the class token's row of the last block's probabilities is all the pool reads)."""
    x, mask = inputs
    model = make(variant, depth=3)
    model.set_fused_attention(False)
    explicit = model(x, mask)
    model.encoder.operator = True
    operator = model(x, mask)
    torch.testing.assert_close(operator.pooled, explicit.pooled, atol=1e-5, rtol=0)
    torch.testing.assert_close(operator.weights, explicit.weights, atol=1e-5, rtol=0)


def test_first_query_row_is_the_explicit_row() -> None:
    torch.manual_seed(0)
    attention = SelfAttention(dim=16, num_heads=4).eval()
    x = torch.randn(3, 9, 16)
    mask = torch.arange(9)[None, :] < torch.tensor([9, 5, 1])[:, None]
    out, probs = attention(x, mask, "explicit")
    first_out, first = attention(x, mask, "operator+first")
    assert probs is not None and first is not None
    assert first.shape == (3, 4, 1, 9)
    torch.testing.assert_close(first, probs[:, :, :1], atol=1e-6, rtol=0)
    torch.testing.assert_close(first_out, out, atol=1e-6, rtol=0)
    assert attention(x, mask, "operator")[1] is None


def test_key_padding_attention_ignores_padded_keys_and_their_values() -> None:
    """Whatever a padded key or value holds, the real queries' outputs do not change."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 6, 8, generator=g) for _ in range(3))
    mask = torch.tensor([[True] * 6, [True, False, True, False, False, True]])
    out = key_padding_attention(q, k, v, mask, 2, 0.5)
    k2, v2 = k.clone(), v.clone()
    k2[~mask], v2[~mask] = 1e6, -1e6
    torch.testing.assert_close(key_padding_attention(q, k2, v2, mask, 2, 0.5), out)
    # Head 0 of item 1, query 0, by hand: softmax over the real keys 0, 2 and 5 only.
    qh, kh, vh = (split_heads(t, 2)[1, 0] for t in (q, k, v))
    real = torch.tensor([0, 2, 5])
    w = (qh[0] @ kh[real].T * 0.5).softmax(-1)
    torch.testing.assert_close(out[1, 0, :4], w @ vh[real])
