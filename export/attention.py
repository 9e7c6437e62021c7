"""The encoder's attention in ONNX: one ``com.microsoft.MultiHeadAttention`` node per block.

The model's ``operator`` path calls :func:`models.layers.key_padding_attention` once per block;
:data:`TRANSLATION` tells the exporter what to write for it. The explicit formulation
(MatMul, Softmax, MatMul) materialises (B, H, N, N) scores and probabilities: at 16 x 2,048
tokens that is 0.5 GiB per tensor per head pair, and ONNX Runtime's arena keeps it. What ONNX
Runtime 1.32 offers instead, measured side by side by ``python -m bench.attention``
(BENCHMARKS.md): its CPU ``MultiHeadAttention`` kernel runs a flash-attention loop (MLAS,
tiles sized to the L2 cache, memory independent of N) but only without a key padding mask or
attention bias; with either, it and the standard ``Attention`` operator (opset 23; opset 24's
``nonpad_kv_seqlen`` tried by hand, outside the benchmark) compute the whole (B, H, N, N)
probability tensor.

So the padding goes into the keys instead of a mask. Each head's query gets
``extra_channels(Dh)`` more features ``[1, 0, ..., 0]`` and each key ``[b, 0, ..., 0]``, with
b = 0 on a real key and ``MASKED_KEY`` (a large finite negative) on padding: q'.k' = q.k + b,
so a real key's logit is unchanged (+ 0, exactly) and a padded one's is about -1e30 x scale,
whose exponential is 0 in float32: real logits are bounded, since q and k are linear maps of
LayerNorm outputs. A finite value, not -inf, because the kernel's running maximum may start
from a tile of keys that holds only padding (tiles are about 900 keys for the wide model here):
exp(-inf - (-inf)) is NaN, while a finite tile's weight is rescaled to exactly 0 once a real key
raises the maximum. Every row has a real key (the model refuses rows without one). The values
are not masked: a padded position's value is a finite encoder output and gets weight 0.

The extra channels round the query/key head size up to a multiple of 8 (8 more for Dh = 8 or
32), not just 1: the CUDA provider's memory-efficient kernel, the one it has for float32 (its
flash kernels are float16/bfloat16 only), needs head sizes that are multiples of 8
(``has_memory_efficient_attention``); on CPU 8 channels instead of 1 changed the time per run
by -10% to +13% (``make attention``, runs alternating; BENCHMARKS.md), within this machine's
noise. That CUDA path has not run here: no GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import onnx
import onnxscript
import torch

import models.layers  # noqa: F401  (registers adapool::key_padding_attention)

# Called by the exporter on its symbolic tensors, not on onnxscript's typed values, so
# onnxscript's per-operator type stubs do not describe these calls.
op: Any = onnxscript.opset18

MASKED_KEY = -1e30
ATTENTION = "com.microsoft.MultiHeadAttention, key padding folded into the keys"


def extra_channels(head_dim: int) -> int:
    """Channels added per query/key head: at least 1, up to the next multiple of 8."""
    return 8 - head_dim % 8


def _contrib_op(name: str, inputs: list[str], attributes: dict[str, Any]) -> onnxscript.values.Op:
    """An ONNX Runtime contrib operator (domain ``com.microsoft``) for the exporter to write.

    The onnx package has no schemas for them, so this declares the part used here: required
    float inputs, one float output, attributes with their defaults.
    """
    schema = onnx.defs.OpSchema(
        name,
        "com.microsoft",
        1,
        inputs=[onnx.defs.OpSchema.FormalParameter(i, "T") for i in inputs],
        outputs=[onnx.defs.OpSchema.FormalParameter("output", "T")],
        type_constraints=[("T", ["tensor(float)"], "float32")],
        attributes=[
            onnx.defs.OpSchema.Attribute(a, onnx.helper.make_attribute(a, v))
            for a, v in attributes.items()
        ],
    )
    return onnxscript.values.Op(onnxscript.values.Opset("com.microsoft", 1), name, schema)


MULTI_HEAD_ATTENTION = _contrib_op(
    "MultiHeadAttention", ["query", "key", "value"], {"num_heads": 1, "scale": 0.0}
)


def with_channels(x: Any, first: Any, num_heads: int, channels: int) -> Any:
    """(B, N, H * Dh) -> (B, N, H * (Dh + channels)), each head followed by
    ``[first, 0, ..., 0]``; ``first`` broadcasts to (B, N, 1, 1)."""
    heads = op.Reshape(x, op.Constant(value_ints=[0, 0, num_heads, -1]))  # (B, N, H, Dh)
    unit = op.Constant(value_floats=[1.0] + [0.0] * (channels - 1))  # (P,)
    size = op.Concat(op.Shape(heads, start=0, end=3), op.Constant(value_ints=[channels]), axis=0)
    extra = op.Expand(op.Mul(first, unit), size)  # (B, N, H, P)
    return op.Reshape(op.Concat(heads, extra, axis=-1), op.Constant(value_ints=[0, 0, -1]))


def multi_head_attention(
    q: Any,
    k: Any,
    v: Any,
    attention_mask: Any,
    num_heads: int,
    scale: float,
    channels: int | None = None,
) -> Any:
    """ONNX for ``key_padding_attention``: q, k, v (B, N, D), mask (B, N) -> (B, N, D).

    ``channels``: extra key channels per head (default ``extra_channels(Dh)``).
    """
    channels = channels or extra_channels(q.shape[2] // num_heads)
    one = op.Constant(value_float=1.0)
    key_bias = op.Where(
        attention_mask, op.Constant(value_float=0.0), op.Constant(value_float=MASKED_KEY)
    )
    key_bias = op.Unsqueeze(key_bias, op.Constant(value_ints=[2, 3]))  # (B, N, 1, 1)
    return MULTI_HEAD_ATTENTION(
        with_channels(q, one, num_heads, channels),
        with_channels(k, key_bias, num_heads, channels),
        v,
        num_heads=num_heads,
        scale=scale,
    )


Translation = dict[Callable[..., Any], Callable[..., Any]]
TRANSLATION: Translation = {torch.ops.adapool.key_padding_attention.default: multi_head_attention}
