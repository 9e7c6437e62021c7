"""Export a trained :class:`~models.PoolingModel` to ONNX, pooled vectors and weights as outputs.

The graph: inputs ``embeddings`` float32 [batch, tokens, D] and ``attention_mask`` bool
[batch, tokens] (True = real token); outputs ``pooled`` float32 [batch, D_out] and ``weights``
float32 [batch, heads, tokens], then for a model with a task head ``logits`` [batch, C]
(classification) or ``prediction`` [batch, T] (regression), and, when the model's pool gives
exact per-token terms (AdaPool with values from the inputs), ``contributions`` [batch, tokens,
C or T]: each token's signed additive term of each output. Batch and tokens are dynamic axes
(the dynamo exporter; the legacy exporter can freeze the example's sequence length: with
``nn.MultiheadAttention`` it writes the example's length into a Reshape, and every other length
fails at run time). The encoder's attention is one ``com.microsoft.MultiHeadAttention`` node per
block (``export.attention``: memory linear in tokens); the pooling attention stays explicit.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from export.attention import TRANSLATION, Translation
from models.model import PoolingModel

INPUT_NAMES = ("embeddings", "attention_mask")
OUTPUT_NAMES = ("pooled", "weights")  # every model's; a task head adds its own (output_names)
HEAD_OUTPUTS = {"classification": "logits", "regression": "prediction"}
CONTRIBUTIONS = "contributions"
# The example's sizes are deliberately unusual, so a frozen axis shows up at every other size.
EXAMPLE_BATCH = 3
EXAMPLE_TOKENS = 17


def exports_contributions(model: PoolingModel) -> bool:
    """A task-head model whose pool has exact per-token terms exports ``contributions``."""
    return model.config.head.task != "none" and model.has_contributions


def output_names(model: PoolingModel) -> tuple[str, ...]:
    """The graph's outputs, in order: pooled, weights[, logits | prediction[, contributions]]."""
    task = model.config.head.task
    head = (HEAD_OUTPUTS[task],) if task != "none" else ()
    extra = (CONTRIBUTIONS,) if exports_contributions(model) else ()
    return (*OUTPUT_NAMES, *head, *extra)


class ExportWrapper(nn.Module):
    """Returns the model's outputs as a plain tuple, the form the exporter names."""

    def __init__(self, model: PoolingModel) -> None:
        super().__init__()
        self.model = model
        self.head = model.config.head.task != "none"
        self.contributions = exports_contributions(model)

    def forward(self, embeddings: Tensor, attention_mask: Tensor) -> tuple[Tensor, ...]:
        """embeddings (B, N, D) float32, attention_mask (B, N) bool -> the outputs named by
        :func:`output_names`."""
        out = self.model(embeddings, attention_mask, contributions=self.contributions)
        outputs = [out.pooled, out.weights]
        if self.head:
            outputs.append(out.output)
        if out.contributions is not None:
            outputs.append(out.contributions)
        return tuple(outputs)


def export_onnx(
    model: PoolingModel,
    path: str | Path,
    attention: Translation | None = TRANSLATION,
    opset: int | None = None,
) -> float:
    """Write ``model`` as ONNX to ``path`` with dynamic batch and token axes.

    ``attention``: what the encoder's attention becomes (the exporter's translation of
    ``adapool::key_padding_attention``; default: ``export.attention``, memory linear in tokens),
    or None for the explicit formulation (MatMul, Softmax, MatMul: memory quadratic in tokens,
    the graphs of version 1). The pooling attention is always explicit: its weights are an
    output. The model's own settings are restored afterwards. Returns the seconds it took.
    """
    encoder = model.encoder
    was_training, was_fused, was_operator = model.training, encoder.fused, encoder.operator
    model.eval()
    model.set_fused_attention(False)
    encoder.operator = attention is not None
    dim = model.config.input_dim
    example = (
        torch.randn(EXAMPLE_BATCH, EXAMPLE_TOKENS, dim),
        torch.ones(EXAMPLE_BATCH, EXAMPLE_TOKENS, dtype=torch.bool),
    )
    batch, tokens = torch.export.Dim("batch"), torch.export.Dim("tokens")
    started = time.perf_counter()
    # The exporter logs a warning for every torchvision op it cannot register; we use none.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # The exporter warns about its own internals (tree specs, axis renaming).
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=UserWarning)
            program = torch.onnx.export(
                ExportWrapper(model),
                example,
                input_names=list(INPUT_NAMES),
                output_names=list(output_names(model)),
                dynamic_shapes={
                    "embeddings": {0: batch, 1: tokens},
                    "attention_mask": {0: batch, 1: tokens},
                },
                dynamo=True,
                verbose=False,
                custom_translation_table=attention,
                opset_version=opset,
            )
        assert program is not None
        program.save(str(path))
    finally:
        model.set_fused_attention(was_fused)
        encoder.operator = was_operator
        model.train(was_training)
    return time.perf_counter() - started
