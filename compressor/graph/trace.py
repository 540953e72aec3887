"""Find the prunable groups of the working graph by following channel spaces; name every layer
left dense and why.

A channel space starts at a producer's output (Linear out-features, Conv out-channels) and
flows to the layers that read it (`compressor.graph.spaces`); each op on the way is decided by
its rule (`compressor.graph.rules`): elementwise activations, copies, Dropout and pooling carry
the units; a Flatten gives each channel its H*W columns of the next Linear; a residual `add`,
a gate or a cat along another axis joins the spaces it meets into one group, whose units are
removed from every producer and consumer together; a `cat` on the channel axis keeps each
input's space apart, at an offset in what its consumers read; a depthwise convolution carries
the units, a grouped one reads them group by group. A space is pruned only if every op on the
way is understood; otherwise its layers stay dense with the reason in the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import sympy
import torch
from torch import fx

from .capture import add_zero_bias, get_tensor
from .groups import PrunableGroup, Slice
from .heads import find_heads
from .ops import ATTENTION, CONV, EMBEDDING, LINEAR, MATMUL
from .products import Product, as_expr, find_products
from .rules.layers import conv_groups, depthwise
from .spaces import OUTPUT_LAYER, Space, Spaces, group_of

SHARED_KV = "attention: one key/value head, read by every query head (not pruned)"

__all__ = ["OUTPUT_LAYER", "Layer", "Trace", "trace"]


@dataclass(frozen=True)
class Layer:
    """A Linear or Conv layer of the model (all of them count towards the budget)."""

    name: str
    weight: str
    node: str
    in_features: int  # input features or channels
    out_features: int  # output features or channels
    kind: str = "linear"  # "linear" or "conv"
    positions: int = 1  # output positions per sample each weight is applied at


@dataclass(frozen=True)
class Trace:
    """What the tracer found: prunable groups, all Linear/Conv layers, and layers left dense."""

    groups: tuple[PrunableGroup, ...]
    layers: tuple[Layer, ...]
    dense: tuple[tuple[str, str], ...]  # (layer, reason it is not pruned)
    products: tuple[Product, ...] = ()  # products of two activations (attention)


def trace(gm: fx.GraphModule, sample: torch.Tensor | None = None, *,
          stream: bool = False) -> Trace:
    """Find every channel space of the graph and make a group of each one that can be pruned;
    with a `sample` input, also every attention's heads (`compressor.graph.heads`: their
    layout is read by running the graph on it); with `stream`, the residual stream too
    (followed through the LayerNorms and RMSNorms over it, with the parameters added to it
    or concatenated with its tokens).

    A bias-free consumer is given a zero bias so that constants can be folded exactly.
    """
    names = gm.meta.get("original_names", {})
    producers = [n for n in gm.graph.nodes if n.target is LINEAR or n.target in CONV]
    layers, by_node = _layers(gm, producers, names)
    if stream:  # token embeddings write the stream: their columns are its units
        producers += _embeddings(gm, by_node, names)
    spaces = Spaces(_attention_inputs(gm), stream)
    for node in producers:
        if node.name in by_node:
            spaces.walk(node, conv_groups(node) if node.target in CONV else 1)
    groups, dense = [], []
    layer_of = {layer.node: layer for layer in layers}
    found = [(space, [by_node[p] for p in space.producers if p in by_node],
              space.reason or _layer_reason(gm, space, by_node)) for space in spaces.all()]
    for space, _, reason in found:  # a layer may read one group and make another: its bias
        for c in [] if reason else space.consumers.values():  # exists before either lists it
            if len(c.node.args) < 3 or c.node.args[2] is None:
                add_zero_bias(gm, c.node)
    for space, members, reason in found:
        if reason:
            dense += [(layer.name, reason) for layer in members]
            dense += [(layer_of[d].name, f"it filters the channels of {members[0].name}, "
                                         f"which are not pruned") for d in space.depthwise
                      if d in layer_of and members]
        else:
            groups.append(group_of(gm, space, members))
            dense_free = {layer_of[d].name for d in space.depthwise if d in layer_of}
            by_node.unprunable = [(la, why) for la, why in by_node.unprunable
                                  if la.name not in dense_free]
    seen = {name for name, _ in dense} | {g.name for g in groups}
    dense += [(layer.name, why) for layer, why in by_node.unprunable if layer.name not in seen]
    products = find_products(gm)
    if sample is not None:
        groups, dense, products = _with_heads(gm, sample, layers, groups, dense, products)
    order = {layer.name: i for i, layer in enumerate(layers)}
    dense.sort(key=lambda item: order.get(item[0], len(order)))
    groups.sort(key=lambda g: order.get(g.name, -1))  # a stream named after its embedding first
    return Trace(tuple(groups), tuple(layers), tuple(dense), products)


class _ByNode(dict):
    """Layer of every producer node that may start a group, and layers that never can."""

    def __init__(self) -> None:
        super().__init__()
        self.unprunable: list[tuple[Layer, str]] = []
        self.uses: dict[object, int] = {}  # layers per weight tensor


def _layers(gm: fx.GraphModule, producers: list[fx.Node],
            names: dict[str, str]) -> tuple[list[Layer], _ByNode]:
    uses: dict[object, int] = {}
    for n in producers:
        uses[_key(n.args[1])] = uses.get(_key(n.args[1]), 0) + 1
    layers, by_node = [], _ByNode()
    batch = next((n.meta["val"].shape[0] for n in gm.graph.nodes
                  if n.op == "placeholder" and "val" in n.meta), 1)
    by_node.uses = uses
    for node in producers:
        weight = node.args[1]
        if weight.op != "get_attr":
            by_node.unprunable.append((Layer(node.name, "", node.name, 0, 0),
                                       "its weight is computed in the graph, not a parameter"))
            continue
        shape = get_tensor(gm, weight.target).shape
        out = node.meta.get("val")
        conv = node.target in CONV
        positions = _positions(out, batch, conv)
        layer = Layer(names.get(weight.target, weight.target).removesuffix(".weight"),
                      weight.target, node.name, int(shape[1]), int(shape[0]),
                      "conv" if conv else "linear", int(positions))
        if all(other.weight != weight.target for other in layers):  # count each tensor once
            layers.append(layer)
        groups = conv_groups(node) if conv else 1
        if uses[_key(weight)] > 1:
            by_node.unprunable.append((layer, "its weights are shared with another layer"))
        elif node.name in gm.meta.get("kept_widths", ()):
            by_node.unprunable.append((layer, "its width is kept (a factor)"))
        elif depthwise(node):
            by_node.unprunable.append((layer, "a depthwise convolution: its channels are its "
                                              "input's"))
        elif groups > 1 and int(shape[0]) % groups:
            by_node.unprunable.append((layer, f"grouped convolution (groups={groups}) with "
                                              "unequal groups"))
        elif len(node.args) > 2 and node.args[2] is not None and node.args[2].op != "get_attr":
            by_node.unprunable.append((layer, "its bias is computed in the graph"))
        else:
            by_node[node.name] = layer
    return layers, by_node


def _embeddings(gm: fx.GraphModule, by_node: _ByNode, names: dict[str, str]) -> list[fx.Node]:
    """Embedding lookups whose table is a parameter used once: producers of the stream (not
    layers: a lookup has no multiply-adds, and the tables are not counted as weights)."""
    found = []
    for node in gm.graph.nodes:
        table = node.args[0] if node.target is EMBEDDING else None
        if isinstance(table, fx.Node) and table.op == "get_attr" and len(table.users) == 1:
            shape = get_tensor(gm, table.target).shape
            by_node[node.name] = Layer(names.get(table.target, table.target).removesuffix(
                ".weight"), table.target, node.name, int(shape[0]), int(shape[1]), "embedding")
            found.append(node)
    return found


def _with_heads(gm: fx.GraphModule, sample: torch.Tensor, layers: list[Layer], groups: list,
                dense: list, products: tuple[Product, ...]) -> tuple[list, list, tuple]:
    """`groups` with a group of heads for every attention whose heads can be pruned (its q,
    k and v layers no longer named dense, its products counted per head); the output
    projection gets a zero bias to fold into if it has none."""
    taken = {(s.param, s.axis) for g in groups for s in g.weights + g.consumers}
    by_node = {layer.node: layer for layer in layers}
    for heads in find_heads(gm, sample):
        group = heads.group
        if taken & {(s.param, s.axis) for s in group.weights + group.consumers}:
            continue
        proj = next(n for n in gm.graph.nodes if n.name == group.consumer_nodes[0])
        bias = proj.args[2].target if len(proj.args) > 2 and proj.args[2] is not None else \
            add_zero_bias(gm, proj)
        groups = [_with_bias(g, proj.args[1].target, bias) for g in groups]
        q = group.weights[0].param
        rows = sum(s.block for s in group.weights if s.param == q)
        total = int(get_tensor(gm, q).shape[0])
        products = tuple(p.of_heads(group.size, q, rows, total) if p.node in heads.products
                         else p for p in products)
        counted = tuple(Slice(p.name, 0) for p in products if p.node in heads.products)
        name = by_node[heads.layers[0]].name  # the layer that makes q
        groups.append(replace(group, name=name, consumer_biases=(bias,), counted=counted))
        pruned = {by_node[n].name for n in heads.layers[:-1] if n in by_node}
        whole = {by_node[n].name for n in heads.whole if n in by_node}
        dense = [(layer, SHARED_KV if layer in whole else why) for layer, why in dense
                 if layer not in pruned]
    return groups, dense, products


def _with_bias(group, weight: str, bias: str):
    """`group` with `bias` among its producers' biases where `weight`'s rows are its units and it
    does not list it yet (a bias added for the heads after the stream's group was made)."""
    rows = [s for s in group.weights if s.param == weight and s.axis == 0]
    if not rows or any(s.param == bias for s in group.biases):
        return group
    return replace(group, biases=group.biases + tuple(replace(s, param=bias) for s in rows))


def _positions(out: torch.Tensor | None, batch: object, conv: bool) -> int:
    """Output positions per sample (pixels of a conv, tokens of a Linear): the output's size
    over the batch and the channels, wherever reshapes moved the batch ([T, B, F], [T*B, F]);
    none where the output does not follow the batch at all."""
    if out is None:
        return 1
    channels = out.shape[1] if conv else out.shape[-1]
    total, per = as_expr(math.prod(out.shape) // channels), as_expr(batch)
    ratio = sympy.simplify(total / per)  # sympy comes with torch
    if ratio.is_Integer:
        return int(ratio)
    if per.free_symbols and not total.free_symbols & per.free_symbols:
        return 0  # the same output at every batch size: computed from constants (a position
        #           encoding), which the export folds into one: nothing per sample
    return 1  # the batch is not a factor of it


def _attention_inputs(gm: fx.GraphModule) -> set[str]:
    """Nodes on the way from a layer's output to attention (scaled_dot_product_attention, or
    a softmax whose output multiplies another tensor): where a layer's output is split into
    heads."""
    found: set[str] = set()
    todo = [n for n in gm.graph.nodes if n.target is SDPA]
    for softmax in [n for n in gm.graph.nodes if n.target in ATTENTION and n.target is not SDPA]:
        # attention is softmax(q kᵀ) times v: the product is found before any layer (a
        # softmax that weighs elementwise, as MobileViTv2's, reaches none); each node once,
        # or the residual sums after it make the paths exponential
        products, later, seen = [], list(softmax.users), set()
        while later:
            node = later.pop()
            if node in seen:
                continue
            seen.add(node)
            if node.target in MATMUL:
                products.append(node)
            elif node.op == "call_function" and node.target is not LINEAR and \
                    node.target not in CONV:
                later += list(node.users)
        todo += [softmax, *products] if products else []
    found.update(n.name for n in todo)
    while todo:
        node = todo.pop()
        for arg in node.all_input_nodes:
            if arg.name in found or arg.target is LINEAR or arg.target in CONV or \
                    arg.op != "call_function":
                continue
            found.add(arg.name)
            todo.append(arg)
    return found


def _layer_reason(gm: fx.GraphModule, space: Space, by_node: _ByNode) -> str:
    if any(p not in by_node for p in space.producers):
        return "its output is added to the output of a layer that cannot be pruned"
    if not space.consumers:
        return OUTPUT_LAYER
    for consumer in space.consumers.values():
        weight = consumer.node.args[1]
        if weight.op != "get_attr":
            return "the next layer's weight is computed in the graph"
        if by_node.uses.get(_key(weight), 0) > 1:
            return "its weights are shared with another layer"
    return ""


def _key(node: fx.Node) -> object:
    return node.target if node.op == "get_attr" else node


SDPA = ATTENTION[0]
