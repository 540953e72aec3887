"""The working graph rewritten, before export, into the forms onnxruntime runs fastest: the
exporter's own forms of some ops run as several kernels where one would do."""

from __future__ import annotations

import math

import torch
from torch import fx

from .attention import ONE_OP_KEYS

aten = torch.ops.aten
RMS_NORM = aten.rms_norm.default


def fusable(gm: fx.GraphModule, example: torch.Tensor) -> fx.GraphModule:
    """`gm` with the ops that onnxruntime fuses only when written its way rewritten so (a view
    sharing its parameters; `gm` itself if it has none):
    - RMSNorm as x / sqrt(mean(x²) + eps) · w, fused into one SimplifiedLayerNormalization
      (torch's own export, a reciprocal and two products, runs several kernels);
    - GELU as (x · 0.5) · (1 + erf(x / √2)), fused into one Gelu, and its tanh form as
      0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³))), fused into one FastGelu (the
      exporter's own orders of the products match neither fusion);
    - scaled_dot_product_attention over more than `attention.ONE_OP_KEYS` keys as
      softmax(q·kᵀ·scale (+ mask))·v, whose key transpose and scale onnxruntime folds into one
      FusedMatMul (the exporter's opset 18 form swaps the key's last axes through a reshape
      computed at run time: seven more kernels); only the forms an exported model runs: no
      dropout, as many k/v heads as q heads, a causal flag as the lower triangle of a fixed
      number of tokens. Fewer keys are left to the exporter: one Attention op each, but for
      what the exporter's Attention refuses (q, k, v other than 4-D; one k/v head broadcast
      to every q head): the softmax form at any number of keys;
    - a Linear with a bias over [batch, ..., features] as a Linear over the rows flattened,
      one Gemm that adds its bias as it multiplies (onnxruntime fuses a MatMul and the Add
      of its bias only where every size is fixed, never with a batch axis of any size)."""
    if not any(n.target in REWRITES for n in gm.graph.nodes):
        return gm
    graph = fx.Graph()
    graph.output(graph.graph_copy(gm.graph, {}))
    fixed, rewritten = _fixed_sizes(gm, graph, example), False
    for node in [n for n in graph.nodes if n.target in REWRITES]:
        with graph.inserting_before(node):
            out = REWRITES[node.target](graph, node, fixed)
        if out is None:  # a form the rewrite does not cover: exported as it is
            continue
        if node.name in fixed:  # a Linear after it reads its sizes by the new node's name
            fixed[out.name] = fixed[node.name]
        node.replace_all_uses_with(out)
        graph.erase_node(node)
        rewritten = True
    if not rewritten:
        return gm
    view = fx.GraphModule(gm, graph)
    view.meta.update(gm.meta)  # the original names of its parameters, among others
    return view


def _fixed_sizes(gm: fx.GraphModule, graph: fx.Graph, example: torch.Tensor) -> dict:
    """node name -> its output's shape, the batch axis first as -1, for the nodes whose
    output keeps its every other size at two batch sizes (the working graph's own shape
    records predate pruning). Runs only where an N-D Linear could use it."""
    if not any(n.target == aten.linear.default and _rank(n.args[0]) > 2 for n in graph.nodes):
        return {}
    shapes = [_shapes(gm, batch) for batch in (example, torch.cat([example, example[:1]]))]
    fixed = {}
    for name, first in shapes[0].items():
        second = shapes[1].get(name)
        if second is not None and len(first) == len(second) > 0 and first[0] != second[0] \
                and first[1:] == second[1:]:
            fixed[name] = (-1, *first[1:])
    return fixed


def _rank(node) -> int:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return val.dim() if isinstance(val, torch.Tensor) else 0


def _shapes(gm: fx.GraphModule, example: torch.Tensor) -> dict[str, tuple[int, ...]]:
    found = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node):
            out = super().run_node(n)
            if isinstance(out, torch.Tensor):
                found[n.name] = tuple(out.shape)
            return out

    with torch.no_grad():
        Recorder(gm).run(example)
    return found


def _rms_norm(graph: fx.Graph, node: fx.Node, fixed: dict) -> fx.Node:
    x, shape = node.args[0], node.args[1]
    weight = node.args[2] if len(node.args) > 2 else None
    eps = node.args[3] if len(node.args) > 3 and node.args[3] is not None else \
        torch.finfo(torch.float32).eps
    dims = [-1 - i for i in range(len(shape))]
    square = graph.call_function(aten.pow.Tensor_Scalar, (x, 2))
    mean = graph.call_function(aten.mean.dim, (square, dims, True))
    # eps as a one-entry tensor: the exporter's optimizer drops the sum with a scalar it finds
    # close to zero (within 1e-8), and a LayerNorm's 1e-12 would leave 0 / 0 on a zero token
    epsilon = graph.call_function(aten.full.default, ([1], eps), {"dtype": torch.float32})
    root = graph.call_function(aten.sqrt.default,
                               (graph.call_function(aten.add.Tensor, (mean, epsilon)),))
    out = graph.call_function(aten.div.Tensor, (x, root))
    return out if weight is None else graph.call_function(aten.mul.Tensor, (out, weight))


def _gelu(graph: fx.Graph, node: fx.Node, fixed: dict) -> fx.Node:
    x = node.args[0]
    approximate = node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none")
    mul, add = aten.mul.Tensor, aten.add.Tensor
    half_x = _call(graph, mul, x, 0.5)
    if approximate == "tanh":
        cube = _call(graph, aten.pow.Tensor_Scalar, x, 3.0)
        inner = _call(graph, add, x, _call(graph, mul, cube, 0.044715))
        core = _call(graph, aten.tanh.default, _call(graph, mul, inner, math.sqrt(2 / math.pi)))
    else:
        core = _call(graph, aten.erf.default, _call(graph, aten.div.Tensor, x, math.sqrt(2)))
    return _call(graph, mul, half_x, _call(graph, add, core, 1.0))


def _attention(graph: fx.Graph, node: fx.Node, fixed: dict) -> fx.Node | None:
    q, k, v = node.args[:3]
    options = dict(zip(("attn_mask", "dropout_p", "is_causal"), node.args[3:]), **node.kwargs)
    mask, scale = options.get("attn_mask"), options.get("scale")
    causal = options.get("is_causal")
    if options.get("dropout_p") or options.get("enable_gqa") or (causal and mask is not None) \
            or (mask is not None and not isinstance(mask.meta.get("val"), torch.Tensor)):
        return None
    sizes = [_size(q, -2), _size(k, -2)]
    if not _not_one_op(q, k, v) and (not isinstance(sizes[1], int) or sizes[1] <= ONE_OP_KEYS):
        return None  # one Attention op
    if causal and not all(isinstance(n, int) for n in sizes):
        return None
    if scale is None:  # the default, 1/√d, from q's head size (pruning keeps it)
        depth = _size(q, -1)
        if not isinstance(depth, int):
            return None
        scale = 1 / math.sqrt(depth)
    keys = _call(graph, aten.transpose.int, k, -2, -1)
    scores = _call(graph, aten.mul.Tensor, _call(graph, aten.matmul.default, q, keys), scale)
    if causal:  # the lower triangle of [queries, keys], both sizes fixed at export
        above = _call(graph, aten.eq.Scalar, _call(graph, aten.tril.default, _call(
            graph, aten.ones.default, sizes)), 0)
        scores = _call(graph, aten.masked_fill.Scalar, scores, above, -math.inf)
    elif mask is not None and mask.meta["val"].dtype == torch.bool:  # True: attend
        scores = _call(graph, aten.masked_fill.Scalar, scores,
                       _call(graph, aten.logical_not.default, mask), -math.inf)
    elif mask is not None:
        scores = _call(graph, aten.add.Tensor, scores, mask)
    return _call(graph, aten.matmul.default, _call(graph, aten.softmax.int, scores, -1), v)


def _not_one_op(q: fx.Node, k: fx.Node, v: fx.Node) -> bool:
    """Whether the exporter's Attention cannot take q, k and v: other than 4-D (timm's NesT,
    Twins and Hiera attend over [batch, heads, windows, tokens, size]), or one k/v head
    serving every q head by broadcasting ([batch, 1, keys, size]: MobileNetV4's multi-query
    attention)."""
    vals = [n.meta.get("val") for n in (q, k, v)]
    if not all(isinstance(t, torch.Tensor) for t in vals):
        return False
    if any(t.ndim != 4 for t in vals):
        return True
    heads = [t.shape[1] for t in vals]
    return all(isinstance(h, int) for h in heads) and heads[1] == heads[2] == 1 < heads[0]


def _size(node: fx.Node, axis: int):
    val = node.meta.get("val")
    return val.shape[axis] if isinstance(val, torch.Tensor) else None


def _linear(graph: fx.Graph, node: fx.Node, fixed: dict) -> fx.Node | None:
    x, weight = node.args[:2]
    bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    if bias is None or x.name not in fixed or node.name not in fixed or len(fixed[x.name]) < 3:
        return None
    rows = _call(graph, aten.reshape.default, x, [-1, fixed[x.name][-1]])
    return _call(graph, aten.reshape.default, _call(graph, aten.linear.default, rows, weight,
                                                    bias), list(fixed[node.name]))


def _call(graph: fx.Graph, op, *args) -> fx.Node:
    return graph.call_function(op, args)


SDPA = aten.scaled_dot_product_attention.default
REWRITES = {RMS_NORM: _rms_norm, aten.gelu.default: _gelu, SDPA: _attention,
            aten.linear.default: _linear}
