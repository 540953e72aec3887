"""Attention in the exported file: one ONNX Attention op (opset 23) that reads q, k and v as
[batch, tokens, heads x head size], the layout the Linears around it write.

The exporter writes scaled_dot_product_attention as Attention over [batch, heads, tokens, head
size], behind the model's own transposes into heads and before its transpose back. Given the
same tensors flattened back (a transpose and a reshape each, which onnxruntime cancels against
the model's own), the attention reads the Linears' outputs as they are, and no transpose runs
at all (measured in docs/method.md)."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

OPSET = 23  # the first with Attention (onnxruntime runs it on CPU from 1.23)
# Up to this many keys an attention is one Attention op; over more, onnxruntime's Attention
# kernel runs slower than the softmax form at larger batches (`fusable._attention`; measured
# in docs/method.md)
ONE_OP_KEYS = 128
_PAST = 4  # Attention's inputs from here on (past keys and values) are a cache: left alone


def flatten_heads(graph: onnx.GraphProto) -> None:
    """Rewrite each Attention over [batch, heads, tokens, size] whose head counts and sizes
    are fixed as Attention over [batch, tokens, heads x size], with only its output used."""
    shapes = _shapes(graph)
    used = {name for n in graph.node for name in n.input} | {v.name for v in graph.output}
    nodes = []
    for node in graph.node:
        found = [shapes.get(name) for name in node.input[:3]]
        if node.op_type != "Attention" or node.domain not in ("", "ai.onnx") or \
                any(node.input[_PAST:]) or used & set(node.output[1:]) - {""} or \
                not all(_fixed_heads(s) for s in found):
            nodes.append(node)
            continue
        q, k, v = found
        prefix = f"{node.output[0]}_heads"
        flat, split = f"{prefix}_flat", f"{prefix}_split"
        graph.initializer.extend([
            helper.make_tensor(flat, TensorProto.INT64, [3], [0, 0, -1]),
            helper.make_tensor(split, TensorProto.INT64, [4], [0, 0, q[1], v[3]])])
        inputs = []
        for i, name in enumerate(node.input[:3]):
            swapped, merged = f"{prefix}_{i}_t", f"{prefix}_{i}"
            nodes += [helper.make_node("Transpose", [name], [swapped], perm=[0, 2, 1, 3]),
                      helper.make_node("Reshape", [swapped, flat], [merged])]
            inputs.append(merged)
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute
                      if a.name not in ("q_num_heads", "kv_num_heads")}
        nodes += [
            helper.make_node("Attention", [*inputs, *node.input[3:_PAST]], [f"{prefix}_out"],
                             q_num_heads=q[1], kv_num_heads=k[1], **attributes),
            helper.make_node("Reshape", [f"{prefix}_out", split], [f"{prefix}_4d"]),
            helper.make_node("Transpose", [f"{prefix}_4d"], [node.output[0]], perm=[0, 2, 1, 3])]
    del graph.node[:]
    graph.node.extend(nodes)


def _shapes(graph: onnx.GraphProto) -> dict[str, list]:
    values = (*graph.value_info, *graph.input, *graph.output)
    return {v.name: [d.dim_value if d.HasField("dim_value") else None
                     for d in v.type.tensor_type.shape.dim] for v in values}


def _fixed_heads(shape: list | None) -> bool:
    """A [batch, heads, tokens, size] shape with its heads and size known."""
    return shape is not None and len(shape) == 4 and bool(shape[1]) and bool(shape[3])
