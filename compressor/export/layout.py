"""Layout ops the exported file need not run. onnxruntime runs every Reshape, Transpose, Slice
and Squeeze as a kernel of its own and cancels only adjacent transposes; the exporter writes
chains of them where, taken together, they only reshape (timm's qkv split into heads and back,
a Linear's rows flattened for its Gemm and unflattened for the next). Three rewrites, each
checked on the file's own shapes at two batch sizes:
- a chain of layout ops between two computing ops that reads, at every batch size, what one
  Reshape (of one block of the last axis, for q, k or v out of a fused qkv Gemm) reads becomes
  that Reshape (after that Slice);
- a Reshape undone by another after elementwise ops alone (fc1's output unflattened for its
  GELU and flattened again for fc2) is not run: the elementwise ops read the first one's
  input;
- row-wise ops between Gemms (a transformer's residual sums and norms; `export.rows`) run
  on the Gemms' [rows, width] instead of [batch, tokens, width] where that leaves fewer ops to run.
Most of what this saves is per-kernel overhead: it shows at small batches (docs/method.md)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from . import graph_edit as edit
from .rows import ELEMENTWISE, rows_kept

LAYOUT = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Split",
                    "Flatten"})
_MOST_ENTRIES = 1 << 24  # a chain over a larger tensor is not traced (its index copy's memory)


def fold_layout(model: onnx.ModelProto) -> None:
    """Rewrite `model`'s graph in place (see the module's docstring); a graph whose shapes
    cannot be inferred at both batch sizes is left as it is."""
    graph = model.graph
    if not _worth_looking(graph) or any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
            for n in graph.node for a in n.attribute):
        return  # nothing to fold, or subgraphs whose reads the rewrites do not follow
    for rewrite in (_skip_reshape_pairs, _fold_chains, rows_kept):
        shapes = [edit.shapes(model, batch) for batch in edit.BATCHES]
        if any(s is None for s in shapes):
            return
        if rewrite(graph, edit.constants(graph), shapes):
            edit.drop_unused(graph)


def _worth_looking(graph: onnx.GraphProto) -> bool:
    """Whether any layout op reads another's output, or a Reshape's an elementwise op's (the
    shapes are inferred only then)."""
    producer = {o: n.op_type for n in graph.node for o in n.output}
    return any(n.op_type in LAYOUT and producer.get(n.input[0]) in LAYOUT or
               n.op_type in ELEMENTWISE and any(producer.get(i) == "Reshape" for i in n.input)
               for n in graph.node if n.input)


def _skip_reshape_pairs(graph: onnx.GraphProto, constants: dict, shapes: list[dict]) -> bool:
    """Reshape -> elementwise ops (their other inputs scalar constants) -> Reshapes back to the
    first one's input shape: the elementwise ops read that input, the second Reshapes' readers
    their result."""
    readers = edit.readers(graph.node)
    outputs = {v.name for v in graph.output}
    renamed: dict[str, str] = {}
    reshaped: set[str] = set()  # values whose shapes an earlier pair's rewrite changed
    for first in graph.node:
        if first.op_type != "Reshape" or first.input[0] not in shapes[0] or \
                first.input[0] in reshaped or first.output[0] in renamed:
            continue
        region = _elementwise_region(first.output[0], readers, constants)
        if region is None:
            continue
        nodes, exit_value = region
        backs = readers[exit_value]
        if outputs & {o for n in nodes for o in n.output} or not backs or any(
                b.op_type != "Reshape" or any(s.get(b.output[0]) != s[first.input[0]]
                                              for s in shapes) for b in backs):
            continue
        for node in nodes:
            node.input[:] = [first.input[0] if i == first.output[0] else i for i in node.input]
        renamed.update({b.output[0]: exit_value for b in backs})
        for name in (o for n in nodes for o in n.output):
            edit.record(graph, name, [x[first.input[0]] for x in shapes], (name, first.input[0]))
            reshaped.add(name)
    edit.rename_reads(graph.node, renamed)
    return bool(renamed)


def _elementwise_region(start: str, readers: dict, constants: dict):
    """The elementwise ops reached from `start` (each reading only `start`, one another's
    outputs and scalar constants) and the one value of theirs that anything else reads, or
    None."""
    nodes, inside, frontier, exits = {}, {start}, [start], set()
    while frontier:
        value = frontier.pop()
        for node in readers[value]:
            if node.op_type not in ELEMENTWISE:
                if value == start:
                    return None
                exits.add(value)
                continue
            if node.output[0] not in nodes:
                nodes[node.output[0]] = node
                inside.update(node.output)
                frontier.extend(node.output)
    nodes = list(nodes.values())
    if not nodes or len(exits) != 1 or any(
            not all(i in inside or _scalar(i, constants) for i in n.input) for n in nodes):
        return None
    return nodes, exits.pop()


def _scalar(name: str, constants: dict) -> bool:
    return name in constants and constants[name].size == 1


def _fold_chains(graph: onnx.GraphProto, constants: dict, shapes: list[dict]) -> bool:
    """Each value that a computing op reads from a chain of two or more layout ops, where the
    chain only reshapes (a block of the last axis of) its first input, read from one Reshape
    (after one Slice) instead."""
    producer = {o: n for n in graph.node for o in n.output}
    readers = edit.readers(graph.node)
    outputs = {v.name for v in graph.output}
    plans = {}
    for node in graph.node:
        if node.op_type in LAYOUT:
            continue
        for value in node.input:
            if value and value not in plans and value not in outputs:
                plan = _plan(value, producer, constants, shapes)
                if plan is not None:
                    plans[value] = plan
    # a chain whose values are also read by something left unfolded would run twice: not folded
    while True:
        folded = {n.output[0] for plan in plans.values() for n in plan[1]}
        kept = {v: p for v, p in plans.items() if all(
            _unread(o, plans, folded, readers, outputs) for n in p[1] for o in n.output)}
        if len(kept) == len(plans):
            break
        plans = kept
    if not plans:
        return False
    renamed = {}
    for value, (source, _, start, width, shape) in plans.items():
        names = [edit.fresh(graph, f"{value}_folded_{part}")
                 for part in ("start", "end", "axis", "block", "shape", "reshaped")]
        if width is not None:
            graph.initializer.extend(numpy_helper.from_array(np.array(a, np.int64), n) for a, n in
                                     zip(([start], [start + width], [-1]), names[:3]))
            graph.node.append(helper.make_node("Slice", [source, *names[:3]], [names[3]]))
            edit.record(graph, names[3], [(*x[source][:-1], width) for x in shapes],
                    (value, source))
            source = names[3]
        if shape is not None:
            graph.initializer.append(numpy_helper.from_array(np.array(shape, np.int64),
                                                             names[4]))
            graph.node.append(helper.make_node("Reshape", [source, names[4]], [names[5]]))
            edit.record(graph, names[5], [x[value] for x in shapes], (value, source))
            source = names[5]
        renamed[value] = source
    edit.rename_reads(graph.node, renamed)
    edit.sort(graph)
    return True


def _unread(value: str, plans: dict, folded: set[str], readers: dict, outputs: set[str]) -> bool:
    """Whether nothing reads `value` once `plans` are applied: each reader a folded layout op,
    or a computing op whose read of `value` is replaced."""
    return value not in outputs and all(
        r.output[0] in folded if r.op_type in LAYOUT else value in plans for r in readers[value])


def _plan(value: str, producer: dict, constants: dict, shapes: list[dict]):
    """(first input, the chain's ops, block start, block width or None, Reshape target or
    None) when the layout chain that writes `value` only reshapes a block of its first input,
    else None."""
    chain, source = [], value
    while source in producer and producer[source].op_type in LAYOUT and all(
            i in constants for i in producer[source].input[1:] if i):
        chain.append(producer[source])
        source = producer[source].input[0]
    if len(chain) < 2 or any(source not in s or value not in s or
                             np.prod(s[source]) > _MOST_ENTRIES for s in shapes):
        return None
    found = []
    for s in shapes:
        x = np.arange(int(np.prod(s[source])), dtype=np.int64).reshape(s[source])
        y = _run(chain[::-1], source, value, x, constants)
        if y is None or y.shape != s[value]:
            return None
        found.append(_block(x, y))
    if found[0] is None or found[0] != found[1]:
        return None
    start, width = found[0]
    target = edit.target(shapes, value)
    if target is None:
        return None
    block = None if width == shapes[0][source][-1] else width
    same = block is None and all(s[source] == s[value] for s in shapes)
    return source, chain, start, block, None if same else target


def _block(x: np.ndarray, y: np.ndarray) -> tuple[int, int] | None:
    """(start, width) when `y` holds, in order, columns start .. start + width of `x`'s rows
    over its last axis."""
    columns = x.shape[-1] if x.ndim else 1
    rows = x.size // columns if columns else 0
    if not rows or y.size % rows:
        return None
    width = y.size // rows
    start = int(y.flat[0]) % columns if y.size else 0
    if start + width > columns:
        return None
    expected = x.reshape(rows, columns)[:, start:start + width]
    return (start, width) if np.array_equal(expected.reshape(-1), y.reshape(-1)) else None


def _run(chain: list, source: str, value: str, x: np.ndarray, constants: dict):
    used = {i for n in chain for i in n.input[1:] if i}
    graph = helper.make_graph(
        chain, "chain", [helper.make_tensor_value_info(source, TensorProto.INT64, x.shape)],
        [helper.make_tensor_value_info(value, TensorProto.INT64, None)],
        [numpy_helper.from_array(constants[i], i) for i in used])
    try:
        return ReferenceEvaluator(helper.make_model(graph)).run(None, {source: x})[0]
    except (RuntimeError, ValueError, TypeError, IndexError, NotImplementedError):
        # an op form the reference evaluator does not run: left as it is
        return None
