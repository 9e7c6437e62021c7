"""Task heads and the faithful AdaPool: exact per-token contributions, and config checks."""

from __future__ import annotations

import pytest
import torch

from models import ConfigError, ModelConfig, PoolingConfig, build_model
from models.config import HeadConfig

FAITHFUL = PoolingConfig(method="adapool", query="mean", values="inputs")
HEADS = {
    "none": HeadConfig(),
    "classification": HeadConfig("classification", 3),
    "regression": HeadConfig("regression", 2),
}


def make(
    pooling: PoolingConfig = FAITHFUL, head: HeadConfig = HEADS["classification"], **kw: object
) -> torch.nn.Module:
    params: dict[str, object] = dict(
        input_dim=6,
        dim=16,
        input_projection=True,
        depth=2,
        num_heads=4,
        mlp_dim=32,
        dropout=0.0,
        query_embedding=False,
        pooling=pooling,
        head=head,
    )
    params.update(kw)
    torch.manual_seed(0)
    return build_model(ModelConfig(**params)).eval()  # type: ignore[arg-type]


def ragged() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 9, 6, generator=g)
    mask = torch.arange(9)[None, :] < torch.tensor([9, 5, 1])[:, None]
    return x, mask


@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize(("qkv_bias", "output_dim"), [(False, None), (True, 5)])
def test_contributions_add_up_to_the_output_exactly(
    head: str, qkv_bias: bool, output_dim: int | None
) -> None:
    """output == bias + sum over tokens of contributions, for every head and every bias."""
    model = make(head=HEADS[head], qkv_bias=qkv_bias, output_dim=output_dim)
    x, mask = ragged()
    out = model(x, mask, contributions=True)
    K = model.config.num_outputs
    assert out.output.shape == (3, K) and out.contributions.shape == (3, 9, K)
    total = out.contributions.sum(1) + model.output_bias()
    torch.testing.assert_close(total, out.output, atol=1e-5, rtol=0)
    assert (out.contributions[~mask] == 0).all()
    if head == "none":
        torch.testing.assert_close(out.output, out.pooled)


def test_padding_junk_changes_no_contribution() -> None:
    model = make()
    x, mask = ragged()
    ref = model(x, mask, contributions=True)
    junk = x.masked_fill(~mask[..., None], float("nan"))
    out = model(junk, mask, contributions=True)
    torch.testing.assert_close(out.contributions, ref.contributions)


def test_one_head_contribution_is_the_weight_times_the_tokens_own_value() -> None:
    """One head, no biases: token i's term of the pooled vector is w_i W_O W_V u_i, with u_i
    the input token itself (depth 2: the encoder mixes the keys, never the values)."""
    model = make(head=HEADS["none"], num_heads=1, dim=6, input_projection=False)
    x, mask = ragged()
    out = model(x, mask, contributions=True)
    pool = model.pool
    expected = out.weights[:, 0, :, None] * (x.masked_fill(~mask[..., None], 0) @ pool.v.weight.T)
    torch.testing.assert_close(out.contributions, expected @ pool.proj.weight.T)


def test_faithful_equals_plain_adapool_at_depth_zero() -> None:
    """Without an encoder both variants take their values from the same tokens."""
    x, mask = ragged()
    plain = make(PoolingConfig(method="adapool", query="mean"), depth=0)
    faithful = make(depth=0)
    a, b = plain(x, mask), faithful(x, mask)
    torch.testing.assert_close(a.output, b.output)
    torch.testing.assert_close(a.weights, b.weights)


def test_faithful_differs_from_plain_through_an_encoder() -> None:
    x, mask = ragged()
    plain = make(PoolingConfig(method="adapool", query="mean"))
    faithful = make()
    assert (plain(x, mask).output - faithful(x, mask).output).abs().max() > 1e-3


def test_models_without_exact_terms_refuse_contributions() -> None:
    model = make(PoolingConfig(method="adapool", query="mean"))
    assert not model.has_contributions and make().has_contributions
    x, mask = ragged()
    with pytest.raises(NotImplementedError, match="values = 'inputs'"):
        model(x, mask, contributions=True)
    assert model(x, mask).contributions is None


def test_the_head_trains() -> None:
    model = make().train()
    x, mask = ragged()
    loss = torch.nn.functional.cross_entropy(model(x, mask).output, torch.tensor([0, 1, 2]))
    loss.backward()  # type: ignore[no-untyped-call]
    assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0
    assert model.pool.v.weight.grad is not None and model.pool.v.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: PoolingConfig(method="adapool", query="token", values="inputs"), "residual"),
        (lambda: PoolingConfig(method="avg", values="inputs"), "only used with method"),
        (lambda: HeadConfig("classification", 1), ">= 2 classes"),
        (lambda: HeadConfig("regression", 0), ">= 1 target"),
        (lambda: HeadConfig("none", 3), "only used with a task head"),
    ],
)
def test_bad_configs_raise(build: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build()  # type: ignore[operator]
