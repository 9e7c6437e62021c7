"""fp16 graphs: the fp32 export converted to float16, float32 kept at the boundaries and where
parity needs it.

``onnxconverter_common.float16.convert_float_to_float16`` (ONNX Runtime's converter) does the
conversion with ``keep_io_types=True``: the graph's inputs and outputs stay float32, with a Cast
after each input and before each output, so clients and the service see the same signature as
an fp32 version. Kept in float32 (:data:`KEEP_FLOAT32`), each behind a Cast in and a Cast out:

- ``Softmax``: the pooling weights are an output, must sum to 1 per head within 1e-5 and be
  exactly 0 on padding; computed and returned in float32 (:func:`float32_outputs` mends the
  converter's Cast to float16 on the way to that output).
- ``LayerNormalization``: its variance of a sum of squares is where fp16 loses most.
- ``com.microsoft.MultiHeadAttention``: the padding is folded into the keys as a bias of
  ``export.attention.MASKED_KEY`` = -1e30, beyond float16's range (65,504); the converter
  clips every constant to +-``max_finite_val`` (1e4 here, its default), still a logit about
  -1e4 / sqrt(Dh) below any real one after the scale (-3,536 at Dh = 8), whose exponential
  is 0 in float32 (the pooling logits' -inf on padding becomes -1e4 likewise).
  (Left to the converter, the graph loads on ONNX Runtime 1.32's CPU provider too and gave
  the same parity figures on knn-adapool-ego; CUDA's float16 flash kernels are untried: no
  GPU here.)
- the graph's own ``Cast`` nodes (the mask to float): the converter retypes a Cast's output as
  float16 but leaves its ``to`` attribute (the graph then fails to load); kept, a Cast to
  float32 runs as written and the converter casts its result to float16.

The other operators (the MatMul and Gemm of every projection and MLP, Gelu, Add, Where)
are float16 in the graph, and its weights are stored in float16 (the wide benchmark model's
file: 0.55x). On CPU, ONNX Runtime 1.32 computes none of them in float16: in its optimised
graph (``python -m bench.precision`` lists it) every MatMul, Gemm, Add, Mul, Where and the
attention reads float32, cast there by ONNX Runtime itself; only data movement (Reshape,
Concat, Split, Transpose, Expand) stays float16.
So on CPU an fp16 version is the float32 computation with float16 rounding and more Casts, and
no faster (BENCHMARKS.md "fp16 on CPU"); the gain it is for is a GPU's, untried
here.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
from onnx import TensorProto

KEEP_FLOAT32 = ("Softmax", "LayerNormalization", "MultiHeadAttention")
# Constants beyond this are clipped to it: -inf and MASKED_KEY become -1e4 (the converter's
# default; finite, so the attention kernel's running maximum never meets -inf - -inf).
MAX_FINITE = 1e4
PRECISIONS = ("fp32", "fp16")


def _cast_to(node: onnx.NodeProto) -> int | None:
    """A Cast node's target type, else None."""
    if node.op_type != "Cast":
        return None
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _types(graph: onnx.GraphProto) -> dict[str, int]:
    return {
        v.name: v.type.tensor_type.elem_type
        for v in [*graph.input, *graph.value_info, *graph.output]
    }


def float32_outputs(model: onnx.ModelProto) -> None:
    """Mend the converter's graph outputs. It keeps the outputs float32 except one written by a
    node it kept in float32 (the pooling Softmax's ``weights``), which it ends with a Cast to
    float16: that one becomes its float32 source again. And where later nodes read an output
    (``pooled``, under a task head), it leaves them reading its Cast to float32: they read the
    float16 value instead."""
    graph = model.graph
    types = _types(graph)
    producer = {out: node for node in graph.node for out in node.output}
    for output in graph.output:
        tensor = output.type.tensor_type
        node = producer[output.name]
        if tensor.elem_type == TensorProto.FLOAT and _cast_to(node) == TensorProto.FLOAT:
            # An output that later nodes read too (pooled, under a task head): they read the
            # converter's Cast to float32 of it, and must read its float16 input instead.
            for other in graph.node:
                if other.op_type != "Cast":
                    other.input[:] = [node.input[0] if n == output.name else n for n in other.input]
        if tensor.elem_type != TensorProto.FLOAT16:
            continue
        tensor.elem_type = TensorProto.FLOAT
        half = f"{output.name}_float16"  # the float16 value, for the nodes that read it
        node.output[:] = [half if n == output.name else n for n in node.output]
        for other in graph.node:
            other.input[:] = [half if n == output.name else n for n in other.input]
        if _cast_to(node) == TensorProto.FLOAT16 and types.get(node.input[0]) == TensorProto.FLOAT:
            # Its float32 input becomes the output, unrounded.
            _rename(graph, node.input[0], output.name)
        else:  # computed in float16: cast it back
            cast = onnx.helper.make_node(
                "Cast", [half], [output.name], name=f"{half}_to_float32", to=TensorProto.FLOAT
            )
            graph.node.append(cast)


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename the value ``old`` to ``new`` wherever a node writes or reads it."""
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for info in graph.value_info:
        if info.name == old:
            graph.value_info.remove(info)
            break


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The float16 version of an fp32 export (see the module's docstring)."""
    from onnxconverter_common import float16  # the train extra's; the service never imports it

    with warnings.catch_warnings():
        # One warning per clipped constant (-inf, MASKED_KEY): expected, described above.
        warnings.filterwarnings("ignore", message=".*will be truncated to.*")
        converted: onnx.ModelProto = float16.convert_float_to_float16(
            model,
            keep_io_types=True,
            max_finite_val=MAX_FINITE,
            op_block_list=list(KEEP_FLOAT32),
            # By name, not by type: the converter adds Casts of its own, and would block those
            # too, one after another, without end.
            node_block_list=[n.name for n in model.graph.node if n.op_type == "Cast"],
        )
    float32_outputs(converted)
    onnx.checker.check_model(converted)
    return converted


def convert_file(path: Path) -> None:
    """Rewrite the fp32 graph at ``path`` as fp16, in place."""
    onnx.save(to_fp16(onnx.load(str(path))), str(path))


def graph_precision(model: onnx.ModelProto) -> str:
    """``fp16`` when the graph stores float16 weights, else ``fp32``."""
    half = any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)
    return "fp16" if half else "fp32"
