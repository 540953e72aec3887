"""Row-wise ops run on a Gemm's rows: a transformer's residual sums and norms read [batch,
tokens, width] through Reshapes around every Gemm; run on [batch x tokens, width] instead, the
residual stream needs no Reshape from its first sum to its last norm (`layout.fold_layout`'s
third rewrite)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import graph_edit as edit

ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Neg", "Sqrt", "Exp", "Erf",
                         "Tanh", "Sigmoid", "HardSigmoid", "HardSwish", "Relu", "LeakyRelu",
                         "Gelu", "Softplus"})


def rows_kept(graph: onnx.GraphProto, constants: dict, shapes: list[dict]) -> bool:
    """Row-wise ops (LayerNormalization or an RMSNorm's ops over the last axis, elementwise ops
    with constants over the last axis alone) that read a Gemm's rows unflattened to [batch,
    tokens, width] run on the rows themselves, and a Reshape that flattens their result again for the next Gemm is
    not run: a pre-norm transformer's residual stream stays [batch x tokens, width] from its
    first residual sum to its last LayerNorm. Kept only where the file ends up with fewer
    nodes; every other reader of a value reads it unflattened once."""
    outputs = {v.name for v in graph.output}
    weights = {t.name: tuple(t.dims) for t in graph.initializer}
    weights.update({name: value.shape for name, value in constants.items()})
    nodes = [edit.copy(n) for n in graph.node]
    readers = edit.readers(nodes)
    rows: dict[str, str] = {}  # a value -> the name of the same entries as [rows, last size]
    added, initializers, records = [], [], []

    def reshaped(value: str, target: list[int], sizes: list[tuple], name: str) -> str:
        shape = edit.fresh(graph, f"{name}_shape")
        initializers.append(numpy_helper.from_array(np.array(target, np.int64), shape))
        added.append(helper.make_node("Reshape", [value, shape], [name]))
        records.append((name, sizes, (value,)))
        return name

    def flat(value: str) -> str:
        if value not in rows:
            rows[value] = reshaped(value, [-1, shapes[0][value][-1]],
                                   [(_rows(s[value]), s[value][-1]) for s in shapes],
                                   edit.fresh(graph, f"{value}_rows"))
        return rows[value]

    converted = []
    for node in nodes:
        out = node.output[0] if node.output else ""
        if _unflattens(node, shapes):
            rows[out] = node.input[0]
        elif out not in outputs and any(i in rows for i in node.input) and \
                _row_wise(node, shapes, weights, constants):
            inputs = [i if not i or i in weights else flat(i) for i in node.input]
            twin = helper.make_node(node.op_type, inputs, [edit.fresh(graph, f"{out}_rows")],
                                    domain=node.domain)
            twin.attribute.extend(a if a.name != "axis" else helper.make_attribute("axis", -1)
                                  for a in node.attribute)
            added.append(twin)
            records.append((twin.output[0], [(_rows(s[out]), s[out][-1]) for s in shapes],
                            (out,)))
            rows[out] = twin.output[0]
            converted.append(node)
    if not converted:
        return False
    renamed, unflattened = {}, {}
    for node in converted:
        value = node.output[0]
        for reader in readers[value]:
            if any(reader is c for c in converted):
                continue
            if _flattens(reader, shapes):
                renamed[reader.output[0]] = rows[value]
                continue
            if edit.target(shapes, value) is None:
                return False  # more than one size follows the batch: no one Reshape back
            if value not in unflattened:
                unflattened[value] = reshaped(rows[value], edit.target(shapes, value),
                                              [s[value] for s in shapes],
                                              edit.fresh(graph, f"{value}_unflattened"))
            reader.input[:] = [unflattened[value] if i == value else i for i in reader.input]
    edit.rename_reads(nodes, renamed)
    ready = {v.name for v in (*graph.input, *graph.initializer, *initializers)}
    nodes = edit.live(edit.sorted_nodes(nodes + added, ready), outputs)
    if len(nodes) >= len(edit.live(list(graph.node), outputs)):
        return False
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(initializers)
    for name, sizes, typed_like in records:
        edit.record(graph, name, sizes, typed_like)
    return True


def _unflattens(node: onnx.NodeProto, shapes: list[dict]) -> bool:
    """A Reshape of [rows, size] to [batch, ..., size]."""
    if node.op_type != "Reshape":
        return False
    found = [(s.get(node.input[0]), s.get(node.output[0])) for s in shapes]
    return all(a and b and len(a) == 2 and len(b) > 2 and a[-1] == b[-1] for a, b in found)


def _flattens(node: onnx.NodeProto, shapes: list[dict]) -> bool:
    """A Reshape of [batch, ..., size] to [rows, size]."""
    if node.op_type != "Reshape":
        return False
    found = [(s.get(node.input[0]), s.get(node.output[0])) for s in shapes]
    return all(a and b and len(a) > 2 and len(b) == 2 and a[-1] == b[-1] for a, b in found)


def _row_wise(node: onnx.NodeProto, shapes: list[dict], weights: dict,
              constants: dict) -> bool:
    """Whether `node` computes each row of its output over the last axis from the same row of
    its inputs alone: LayerNormalization or a ReduceMean (an RMSNorm's mean of squares) over
    the last axis, or an elementwise op whose inputs have its output's leading sizes (a last
    size of 1 broadcast along the row) and whose constants are one value or one per entry of
    the last axis."""
    out = node.output[0]
    if any(out not in s or len(s[out]) < 3 for s in shapes):
        return False
    last = len(shapes[0][out]) - 1
    if node.op_type == "LayerNormalization":
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        if axis not in (-1, last) or any(node.output[1:]):
            return False
    elif node.op_type == "ReduceMean":
        keep = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
        axes = constants.get(node.input[1]) if len(node.input) > 1 else None
        if not keep or axes is None or [int(a) for a in axes.ravel()] != [-1]:
            return False  # (an axis counted from the front would name another on the rows)
        return all(s.get(node.input[0], ())[:-1] == s[out][:-1] for s in shapes)
    elif node.op_type not in ELEMENTWISE:
        return False
    for name in node.input:
        if name in weights:
            if len(weights[name]) > 1 or np.prod(weights[name]) not in (1, shapes[0][out][-1]):
                return False
        elif name and any(name not in s or s[name][:-1] != s[out][:-1] or
                          s[name][-1] not in (1, s[out][-1]) for s in shapes):
            return False
    return True


def _rows(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape[:-1]))
