"""Edits of an exported ONNX graph in place: its values' shapes at fixed batch sizes (the
weights standing in by their shapes), its small constants, who reads what, fresh names, shape
records with the symbolic batch, and node order and clean-up after nodes are added or
bypassed."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

BATCHES = (2, 3)  # two batch sizes: a size that differs between them follows the batch
SMALL = 64  # constants up to this many entries (shapes, axes, scalars) are read as values


def target(shapes: list[dict], value: str) -> list[int] | None:
    """`value`'s shape as a Reshape target: -1 for the one size that follows the batch."""
    first, second = (s[value] for s in shapes)
    free = [i for i, (a, b) in enumerate(zip(first, second)) if a != b]
    if len(free) > 1 or 0 in first:
        return None
    return [-1 if i in free else d for i, d in enumerate(first)]


def shapes(model: onnx.ModelProto, batch: int) -> dict[str, tuple[int, ...]] | None:
    """Every value's shape where all its sizes are known, with the first input's first axis
    set to `batch`; the weights stand in by their shapes (inference never reads them)."""
    graph = model.graph
    small = [t for t in graph.initializer if int(np.prod(t.dims)) <= SMALL]
    skeleton = helper.make_graph(
        graph.node, graph.name,
        [*graph.input, *(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                         for t in graph.initializer if int(np.prod(t.dims)) > SMALL)],
        graph.output, small)
    first = skeleton.input[0].type.tensor_type.shape.dim
    if not first:
        return None
    first[0].Clear()
    first[0].dim_value = batch
    copy = helper.make_model(skeleton, opset_imports=model.opset_import,
                             ir_version=model.ir_version)
    try:
        inferred = onnx.shape_inference.infer_shapes(copy, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        # a graph onnx cannot infer: nothing is rewritten
        return None
    shapes = {}
    for v in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        dims = v.type.tensor_type.shape.dim
        if v.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[v.name] = tuple(d.dim_value for d in dims)
    return shapes


def constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    found = {t.name: numpy_helper.to_array(t) for t in graph.initializer
             if int(np.prod(t.dims)) <= SMALL}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tensor = node.attribute[0].t
            if int(np.prod(tensor.dims)) <= SMALL:
                found[node.output[0]] = numpy_helper.to_array(tensor)
    return found


def readers(nodes) -> dict[str, list]:
    found = defaultdict(list)
    for node in nodes:
        for name in node.input:
            found[name].append(node)
    return found


def rename_reads(nodes, renamed: dict[str, str]) -> None:
    def final(name: str) -> str:
        while name in renamed:
            name = renamed[name]
        return name

    for node in nodes:
        node.input[:] = [final(i) for i in node.input]


def fresh(graph: onnx.GraphProto, base: str) -> str:
    """`base`, or `base` numbered, whichever no value or weight of `graph` is named."""
    taken = {v for n in graph.node for v in (*n.input, *n.output)} | \
        {v.name for v in (*graph.input, *graph.initializer)}
    name, k = base, 1
    while name in taken:
        name, k = f"{base}{k}", k + 1
    return name


def copy(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy


def record(graph: onnx.GraphProto, name: str, sizes: list[tuple[int, ...]],
            typed_like: tuple[str, ...]) -> None:
    """Record `name`'s shape from its sizes at the two batch sizes, a size that follows the
    batch written as the input's batch symbol times a constant (the counters of FLOPs read
    it), and its element type as the first of `typed_like` recorded."""
    records = {v.name: v for v in (*graph.input, *graph.value_info, *graph.output)}
    typed = [records[n] for n in typed_like if n in records]
    batch = graph.input[0].type.tensor_type.shape.dim[0].dim_param or "batch"
    if not typed:
        return
    dims = []
    for a, b in zip(*sizes):
        per = (b - a) // (BATCHES[1] - BATCHES[0])
        if a == b or a != per * BATCHES[0]:  # fixed, or not a multiple of the batch: unknown
            dims.append(a if a == b else None)
        else:
            dims.append(batch if per == 1 else f"{per}*{batch}")
    forget_shapes(graph, {name})
    graph.value_info.append(helper.make_tensor_value_info(
        name, typed[0].type.tensor_type.elem_type, dims))


def forget_shapes(graph: onnx.GraphProto, names: set[str]) -> None:
    for info in [v for v in graph.value_info if v.name in names]:
        graph.value_info.remove(info)


def sort(graph: onnx.GraphProto) -> None:
    """The graph's nodes in an order where every value is written before it is read."""
    ordered = sorted_nodes(list(graph.node), {v.name for v in (*graph.input, *graph.initializer)})
    del graph.node[:]
    graph.node.extend(ordered)


def sorted_nodes(nodes: list, ready: set[str]) -> list:
    """`nodes` in an order where every value is written before it is read, `ready` (the
    graph's inputs and weights) read from the start."""
    ready, pending, ordered = {*ready, ""}, nodes, []
    while pending:
        waiting = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            raise ValueError("the graph has a cycle")
        pending = waiting
    return ordered


def live(nodes: list, outputs: set[str]) -> list:
    """The nodes of `nodes` (in order: each value written before it is read) whose outputs the
    graph's `outputs` need."""
    live, kept = set(outputs), []
    for node in reversed(nodes):
        if any(o in live for o in node.output):
            kept.append(node)
            live.update(node.input)
    return kept[::-1]


def drop_unused(graph: onnx.GraphProto) -> None:
    """Drop the nodes, initializers and shape records nothing reads any more."""
    kept = live(list(graph.node), {v.name for v in graph.output})
    read = {v.name for v in graph.output} | {i for n in kept for i in n.input}
    del graph.node[:]
    graph.node.extend(kept)
    for tensor in [t for t in graph.initializer if t.name not in read]:
        graph.initializer.remove(tensor)
    forget_shapes(graph, {v.name for v in graph.value_info} - read)
