"""The pooling model: shapes, gradients, weights, padding, permutations, attention paths."""

from __future__ import annotations

import pytest
import torch

from models import InputError, ModelConfig, PoolingConfig, build_model
from tests.models.conftest import VARIANTS, small_config


def make(variant: str, seed: int = 0, **overrides: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(small_config(VARIANTS[variant], **overrides)).eval()


def test_shapes_and_weight_rows(variant: str, inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, mask = inputs
    model = make(variant)
    out = model(x, mask)
    heads = 1 if variant in ("avg", "max") else 4
    assert out.pooled.shape == (3, 16)
    assert out.weights.shape == (3, heads, 10)
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(3, heads), atol=1e-6, rtol=0)
    assert (out.weights >= 0).all()
    assert (out.weights.masked_select(~mask[:, None, :].expand_as(out.weights)) == 0).all()


def test_output_projection_changes_output_dim(inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, mask = inputs
    model = make("adapool-mean", output_dim=5)
    assert model(x, mask).pooled.shape == (3, 5)


def test_input_projection(inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, mask = inputs
    torch.manual_seed(0)
    model = build_model(
        small_config(VARIANTS["adapool-token"], input_dim=16, dim=32, input_projection=True)
    )
    assert model(x, mask).pooled.shape == (3, 32)


def test_every_parameter_gets_a_gradient(
    variant: str, inputs: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, mask = inputs
    model = make(variant, final_norm=True).train()
    model(x, mask).pooled.square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    # Gradient reaches the input projection path and the encoder's first layer.
    first = model.encoder.blocks[0].attn.qkv.weight.grad
    assert first is not None and first.abs().sum() > 0


def test_padding_never_changes_outputs(
    variant: str, inputs: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """Extra padded tokens holding huge, infinite or NaN values change nothing."""
    x, mask = inputs
    model = make(variant)
    ref = model(x, mask)
    for fill in (1e6, float("inf"), float("nan")):
        extra = torch.full((3, 5, 16), fill)
        x_pad = torch.cat([x.masked_fill(~mask[..., None], fill), extra], dim=1)
        mask_pad = torch.cat([mask, torch.zeros(3, 5, dtype=torch.bool)], dim=1)
        out = model(x_pad, mask_pad)
        torch.testing.assert_close(out.pooled, ref.pooled, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.weights[..., :10], ref.weights, atol=1e-6, rtol=1e-5)
        assert (out.weights[..., 10:] == 0).all()


def test_row_results_do_not_depend_on_other_rows(variant: str) -> None:
    """A row pooled alone equals the same row pooled in a ragged batch."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 9, 16, generator=g)
    mask = torch.tensor([[True] * 9, [True] * 5 + [False] * 4])
    model = make(variant)
    batch = model(x, mask)
    alone = model(x[1:, :5], mask[1:, :5])
    torch.testing.assert_close(batch.pooled[1:], alone.pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch.weights[1:, :, :5], alone.weights, atol=1e-6, rtol=1e-5)


def test_permuting_non_ego_tokens_permutes_weights(
    variant: str, inputs: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """No positional encoding: shuffling tokens 1.. leaves pooled unchanged and permutes weights.

    Token 0 stays in place (it carries the query embedding); ``indices`` queries token 2 too,
    so that variant keeps token 2 in place as well.
    """
    x, _ = inputs
    mask = torch.ones(3, 10, dtype=torch.bool)
    fixed = [0, 2] if variant == "adapool-indices" else [0]
    movable = [i for i in range(10) if i not in fixed]
    perm = list(range(10))
    shuffled = [
        movable[j] for j in torch.randperm(len(movable), generator=torch.Generator().manual_seed(3))
    ]
    for i, j in zip(movable, shuffled, strict=True):
        perm[i] = j
    model = make(variant)
    ref = model(x, mask)
    out = model(x[:, perm], mask)
    torch.testing.assert_close(out.pooled, ref.pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.weights, ref.weights[..., perm], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("query_embedding", [True, False])
def test_query_embedding_marks_token_zero(
    query_embedding: bool, inputs: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """With the query embedding, swapping token 0 with another changes the result; without it,
    a mean-query model is fully permutation invariant."""
    x, _ = inputs
    mask = torch.ones(3, 10, dtype=torch.bool)
    model = make("adapool-mean", query_embedding=query_embedding)
    swapped = x[:, [5, 1, 2, 3, 4, 0, 6, 7, 8, 9]]
    diff = (model(x, mask).pooled - model(swapped, mask).pooled).abs().max().item()
    if query_embedding:
        assert diff > 1e-3
    else:
        assert diff < 1e-5


def test_cls_token_gets_no_query_embedding(inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    """The public code's defect: the class token took token 0's query embedding. Here the
    encoder sees the learned class token itself at position 0 and x_0 + embedding[0] at 1."""
    x, mask = inputs
    model = make("cls")
    seen: list[torch.Tensor] = []
    model.encoder.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    model(x, mask)
    encoder_in = seen[0]
    assert encoder_in.shape == (3, 11, 16)
    torch.testing.assert_close(encoder_in[:, 0], model.pool.token.expand(3, 16))
    emb = model.query_embedding.embedding.weight
    torch.testing.assert_close(encoder_in[:, 1], x[:, 0] + emb[0])
    torch.testing.assert_close(encoder_in[0, 2], x[0, 1] + emb[1])


def test_eval_mode_is_deterministic(
    variant: str, inputs: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, mask = inputs
    model = make(variant, dropout=0.5)
    a, b = model(x, mask), model(x, mask)
    assert torch.equal(a.pooled, b.pooled) and torch.equal(a.weights, b.weights)
    model.train()
    assert not torch.equal(model(x, mask).pooled, model(x, mask).pooled)


def test_same_seed_same_model(variant: str, inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, mask = inputs
    assert torch.equal(make(variant, seed=7)(x, mask).pooled, make(variant, seed=7)(x, mask).pooled)


def test_fused_and_explicit_attention_agree(
    variant: str, inputs: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, mask = inputs
    model = make(variant, depth=3)
    model.set_fused_attention(True)
    fused = model(x, mask)
    model.set_fused_attention(False)
    explicit = model(x, mask)
    torch.testing.assert_close(fused.pooled, explicit.pooled, atol=1e-5, rtol=0)
    torch.testing.assert_close(fused.weights, explicit.weights, atol=1e-5, rtol=0)


def test_fully_padded_row_raises(variant: str, inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, mask = inputs
    mask = mask.clone()
    mask[1] = False
    with pytest.raises(InputError, match=r"rows \[1\] have no real token"):
        make(variant)(x, mask)


@pytest.mark.parametrize("variant", ["adapool-token", "adapool-indices"])
def test_padded_query_token_raises(variant: str, inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, _ = inputs
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[2, 0] = False
    with pytest.raises(InputError, match=r"rows \[2\]: query token"):
        make(variant)(x, mask)


def test_bad_shapes_raise(inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, mask = inputs
    model = make("avg")
    with pytest.raises(InputError, match="x must be"):
        model(x[..., :8], mask)
    with pytest.raises(InputError, match="attention_mask must be bool"):
        model(x, mask.float())
    with pytest.raises(InputError, match="out of range"):
        make("adapool-indices")(x[:, :2], mask[:, :2])


def test_avgpool_is_the_masked_mean(inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, mask = inputs
    model = make("avg", depth=0, query_embedding=False)
    out = model(x, mask)
    for row, n in enumerate((10, 7, 4)):
        torch.testing.assert_close(out.pooled[row], x[row, :n].mean(0))
        torch.testing.assert_close(out.weights[row, 0, :n], torch.full((n,), 1 / n))


def test_maxpool_weights_count_won_features() -> None:
    """Token 0 holds the max in 3 features, token 1 in 1, token 2 in none (D = 4)."""
    x = torch.tensor([[[5.0, 5.0, 5.0, 0.0], [1.0, 1.0, 1.0, 9.0], [0.0, 0.0, 0.0, 0.0]]])
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(
            input_dim=4,
            dim=4,
            depth=0,
            num_heads=1,
            query_embedding=False,
            pooling=PoolingConfig(method="max"),
        )
    )
    out = model(x, torch.ones(1, 3, dtype=torch.bool))
    torch.testing.assert_close(out.pooled, torch.tensor([[5.0, 5.0, 5.0, 9.0]]))
    torch.testing.assert_close(out.weights, torch.tensor([[[0.75, 0.25, 0.0]]]))


def test_maxpool_ties_share_a_feature() -> None:
    x = torch.tensor([[[1.0, 0.0], [1.0, 2.0]]])
    model = build_model(
        ModelConfig(
            input_dim=2,
            dim=2,
            depth=0,
            num_heads=1,
            query_embedding=False,
            pooling=PoolingConfig(method="max"),
        )
    )
    out = model(x, torch.ones(1, 2, dtype=torch.bool))
    torch.testing.assert_close(out.weights, torch.tensor([[[0.25, 0.75]]]))


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v.startswith("adapool")])
def test_zero_query_projection_gives_uniform_weights(
    variant: str, inputs: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """AvgPool is AdaPool's special case: with W_Q = 0 every real token gets 1/n."""
    x, mask = inputs
    model = make(variant)
    with torch.no_grad():
        model.pool.q.weight.zero_()
    out = model(x, mask)
    n = mask.sum(-1, keepdim=True).float()
    expected = (mask.float() / n)[:, None, :].expand(3, 4, 10)
    torch.testing.assert_close(out.weights, expected, atol=1e-7, rtol=0)


def test_adapool_matches_a_hand_computation() -> None:
    """One head, depth 0: w = softmax(q.k / sqrt(D)), pooled = W_O(sum w v) + x_0 (residual)."""
    torch.manual_seed(0)
    config = ModelConfig(
        input_dim=4,
        dim=4,
        depth=0,
        num_heads=1,
        query_embedding=False,
        pooling=PoolingConfig(method="adapool", query="token"),
    )
    model = build_model(config)
    x = torch.randn(1, 5, 4)
    out = model(x, torch.ones(1, 5, dtype=torch.bool))
    pool = model.pool
    q, k, v = pool.q(x[0, 0]), pool.k(x[0]), pool.v(x[0])
    w = torch.softmax(k @ q / 2.0, dim=0)
    expected = pool.proj(w @ v) + x[0, 0]
    torch.testing.assert_close(out.weights[0, 0], w)
    torch.testing.assert_close(out.pooled[0], expected)


def test_residual_default_follows_query_mode() -> None:
    assert PoolingConfig(query="token").use_residual
    assert not PoolingConfig(query="mean").use_residual
    assert not PoolingConfig(query="learned").use_residual
    assert PoolingConfig(query="mean", residual=True).use_residual
