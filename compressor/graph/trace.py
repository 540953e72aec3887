"""Find the prunable groups of the working graph by following channel spaces; name every layer
left dense and why.

A channel space starts at a producer's output (Linear out-features, Conv out-channels) and
flows to its consumers' inputs through ops that carry channels unchanged (elementwise
activations, identity ops, Dropout, pooling). Flatten sets `block` (a channel owns H*W columns
of the next Linear); a residual `add` joins the spaces of its inputs into one group, whose units
are removed from every producer and consumer together. A space is pruned only if every consumer
reads it through an elementwise activation after the last join (ReLU, GELU, SiLU, ...: see
`ops.ACTIVATIONS`; each unit reaches the consumer through its own output alone) and every op on
the way is understood; otherwise its layers stay dense with the reason in the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import fx

from .capture import add_zero_bias, get_tensor
from .groups import PrunableGroup, Slice
from .ops import ACTIVATIONS, ADD, CONV, FLATTEN, IDENTITY, LINEAR, MEAN, POOL

OUTPUT_LAYER = "output layer (never pruned)"


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


def trace(gm: fx.GraphModule) -> Trace:
    """Find every channel space of the graph and make a group of each one that can be pruned.

    A bias-free consumer is given a zero bias so that constants can be folded exactly.
    """
    names = gm.meta.get("original_names", {})
    producers = [n for n in gm.graph.nodes if n.target is LINEAR or n.target in CONV]
    layers, by_node = _layers(gm, producers, names)
    spaces = _Spaces()
    for node in producers:
        if node.name in by_node:
            spaces.walk(node)
    groups, dense = [], []
    layer_of = {layer.node: layer for layer in layers}
    for space in spaces.all():
        members = [by_node[p] for p in space.producers if p in by_node]
        reason = space.reason or _layer_reason(gm, space, by_node)
        if reason:
            dense += [(layer.name, reason) for layer in members]
            dense += [(layer_of[d].name, f"it filters the channels of {members[0].name}, "
                                         f"which are not pruned") for d in space.depthwise
                      if d in layer_of and members]
        else:
            groups.append(_group(gm, space, members))
            dense_free = {layer_of[d].name for d in space.depthwise if d in layer_of}
            by_node.unprunable = [(la, why) for la, why in by_node.unprunable
                                  if la.name not in dense_free]
    seen = {name for name, _ in dense} | {g.name for g in groups}
    dense += [(layer.name, why) for layer, why in by_node.unprunable if layer.name not in seen]
    order = {layer.name: i for i, layer in enumerate(layers)}
    dense.sort(key=lambda item: order.get(item[0], len(order)))
    groups.sort(key=lambda g: order[g.name])
    return Trace(tuple(groups), tuple(layers), tuple(dense))


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
        positions = math.prod(out.shape[2:] if conv else out.shape[1:-1]) if out is not None \
            else 1
        layer = Layer(names.get(weight.target, weight.target).removesuffix(".weight"),
                      weight.target, node.name, int(shape[1]), int(shape[0]),
                      "conv" if conv else "linear", int(positions))
        if all(other.weight != weight.target for other in layers):  # count each tensor once
            layers.append(layer)
        if uses[_key(weight)] > 1:
            by_node.unprunable.append((layer, "its weights are shared with another layer"))
        elif conv and _groups(node) != 1:
            by_node.unprunable.append((layer, f"grouped convolution (groups={_groups(node)}) "
                                              "couples its input and output channels"))
        elif len(node.args) > 2 and node.args[2] is not None and node.args[2].op != "get_attr":
            by_node.unprunable.append((layer, "its bias is computed in the graph"))
        else:
            by_node[node.name] = layer
    return layers, by_node


@dataclass
class _Consumer:
    node: fx.Node  # the Linear or Conv that reads the space
    block: int  # columns each unit owns in its weight
    activation: str  # the activation node it reads the space through (where units are counted)
    functions: tuple[str, ...]  # every activation node from the last join to it, in order


@dataclass
class _Space:
    producers: list[str] = field(default_factory=list)
    consumers: dict[str, _Consumer] = field(default_factory=dict)
    depthwise: list[str] = field(default_factory=list)  # convs that filter each unit alone
    reason: str = ""


class _Spaces:
    """Channel spaces found so far, joined where a residual add meets (union-find)."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.spaces: dict[str, _Space] = {}

    def find(self, name: str) -> str:
        while self.parent[name] != name:
            self.parent[name] = self.parent[self.parent[name]]
            name = self.parent[name]
        return name

    def add(self, producer: fx.Node) -> str:
        if producer.name not in self.parent:
            self.parent[producer.name] = producer.name
            self.spaces[producer.name] = _Space([producer.name])
        return self.find(producer.name)

    def join(self, a: str, b: str) -> str:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[b] = a
            first, second = self.spaces[a], self.spaces.pop(b)
            first.producers += second.producers
            first.consumers.update(second.consumers)
            first.depthwise += [d for d in second.depthwise if d not in first.depthwise]
            first.reason = first.reason or second.reason
        return a

    def fail(self, root: str, reason: str) -> None:
        space = self.spaces[self.find(root)]
        space.reason = space.reason or reason

    def all(self) -> list[_Space]:
        return list(self.spaces.values())

    def walk(self, producer: fx.Node) -> None:
        """Follow `producer`'s channels to every consumer, joining spaces at residual adds."""
        root = self.add(producer)
        todo: list[tuple[fx.Node, int, tuple[fx.Node, ...]]] = [(producer, 1, ())]
        seen: set[str] = set()
        while todo:
            node, block, acts = todo.pop()
            if node.name in seen:
                continue
            seen.add(node.name)
            users = list(node.users)
            for user in users:
                step = self._step(root, node, user, block, acts, len(users))
                if step is not None:
                    todo.append(step)
                root = self.find(root)

    def _step(self, root: str, node: fx.Node, user: fx.Node, block: int,
              acts: tuple[fx.Node, ...], readers: int
              ) -> tuple[fx.Node, int, tuple[fx.Node, ...]] | None:
        if user.op == "output":
            self.fail(root, OUTPUT_LAYER if not acts else "its activation is the model's output")
            return None
        if user.target in ACTIVATIONS:
            return user, block, (*acts, user)
        if user.target in IDENTITY or user.target in POOL:
            if user.target is DROPOUT and len(user.args) > 2 and user.args[2]:  # training mode
                self.fail(root, "dropout in training mode")
                return None
            return user, block, acts
        if user.target is MEAN and _spatial_mean(node, user):
            return user, block, acts
        if user.target in FLATTEN:
            flat = _flattened_block(node, user)
            if flat is None:
                self.fail(root, f"its output is reshaped by {_op_name(user)} to "
                                f"{_shape(user)}, which the tracer does not follow")
                return None
            return user, block * flat, acts
        if user.target in ADD:
            return self._join(root, node, user, block)
        if user.target in CONV and user.args[0] is node and _depthwise(user) and block == 1:
            space = self.spaces[self.find(root)]  # it filters each unit alone: carries them on
            if user.name not in space.depthwise:
                space.depthwise.append(user.name)
            return user, 1, ()
        if (user.target is LINEAR or user.target in CONV) and user.args[0] is node:
            return self._consume(root, node, user, block, acts)
        what = "its output" if not acts else f"its {ACTIVATIONS[acts[-1].target]} output"
        if not acts and readers == 1 and user.target not in (*LINEAR_OR_CONV,):
            self.fail(root, f"not followed by an elementwise activation (found "
                            f"{_op_name(user)})")
        else:
            self.fail(root, f"{what} feeds {_op_name(user)}, which couples channels in a way "
                            "the tracer does not follow")
        return None

    def _consume(self, root: str, node: fx.Node, user: fx.Node, block: int,
                 acts: tuple[fx.Node, ...]) -> None:
        if not acts:
            self.fail(root, f"its output reaches {user.name} without an activation")
        elif user.target in CONV and (block != 1 or _groups(user) != 1):
            self.fail(root, f"its output feeds {user.name}, a grouped or reshaped convolution")
        else:
            self.spaces[self.find(root)].consumers[user.name] = _Consumer(
                user, block, acts[-1].name, tuple(a.name for a in acts))
        return None

    def _join(self, root: str, node: fx.Node, add: fx.Node, block: int):
        """A residual add: every operand's space joins this one; the add carries it on."""
        if block != 1:
            self.fail(root, "its flattened output is added to another tensor")
            return None
        for operand in add.args[:2]:
            if operand is node:
                continue
            sources = _sources(operand)
            if sources is None:
                self.fail(root, f"its output is added to {_describe(operand)}, which is not "
                                "the output of a traced layer")
                return None
            for source in sources:
                root = self.join(root, self.add(source))
        return add, 1, ()


LINEAR_OR_CONV = (LINEAR, *CONV)
DROPOUT = torch.ops.aten.dropout.default


def _sources(node: object) -> list[fx.Node] | None:
    """The producers whose channels `node` carries (through activations, identity, pooling and
    adds), or None if it carries anything else."""
    if not isinstance(node, fx.Node):
        return None
    if node.target is LINEAR or node.target in CONV:
        return [node]
    if node.target in ACTIVATIONS or node.target in IDENTITY or node.target in POOL:
        return _sources(node.args[0])
    if node.target in ADD:
        found = [_sources(a) for a in node.args[:2]]
        return None if any(f is None for f in found) else found[0] + found[1]
    return None


def _spatial_mean(node: fx.Node, mean: fx.Node) -> bool:
    """Whether `mean` averages exactly the spatial axes of [N, C, *spatial] (channels stay)."""
    val = node.meta.get("val")
    if val is None or val.ndim < 3 or len(mean.args) < 2:
        return False
    dims = {int(d) % val.ndim for d in mean.args[1]}
    return dims == set(range(2, val.ndim))


def _flattened_block(node: fx.Node, flatten: fx.Node) -> int | None:
    """Columns per channel when `flatten` turns [N, C, *spatial] into [N, C * prod(spatial)],
    or None for any other reshape."""
    before, after = node.meta.get("val"), flatten.meta.get("val")
    if before is None or after is None or after.ndim != 2 or before.ndim < 2:
        return None
    try:
        spatial = math.prod(int(d) for d in before.shape[2:])
        if int(after.shape[1]) != int(before.shape[1]) * spatial:
            return None
    except (TypeError, ValueError):  # symbolic sizes
        return None
    return spatial


def _layer_reason(gm: fx.GraphModule, space: _Space, by_node: _ByNode) -> str:
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


def _group(gm: fx.GraphModule, space: _Space, members: list) -> PrunableGroup:
    nodes = {n.name: n for n in gm.graph.nodes}
    producers = [nodes[p] for p in space.producers]
    producers.sort(key=lambda n: list(nodes).index(n.name))
    filters = producers + [nodes[d] for d in space.depthwise]
    weights = tuple(Slice(p.args[1].target, 0) for p in filters)
    biases = tuple(Slice(p.args[2].target, 0) for p in filters
                   if len(p.args) > 2 and p.args[2] is not None)
    consumers = sorted(space.consumers.values(), key=lambda c: list(nodes).index(c.node.name))
    consumer_biases = []
    for c in consumers:
        if len(c.node.args) < 3 or c.node.args[2] is None:
            consumer_biases.append(add_zero_bias(gm, c.node))
        else:
            consumer_biases.append(c.node.args[2].target)
    chains = {tuple(_signature(nodes[a]) for a in c.functions) for c in consumers}
    exact = len(filters) == 1 and len(chains) == 1 and all(
        c.node.target is LINEAR or not any(_padding(c.node)) for c in consumers)
    members.sort(key=lambda layer: list(nodes).index(layer.node))
    return PrunableGroup(
        name=members[0].name,
        size=int(get_tensor(gm, producers[0].args[1].target).shape[0]),
        weights=weights,
        biases=biases,
        activations=tuple(dict.fromkeys(c.activation for c in consumers)),
        consumers=tuple(Slice(c.node.args[1].target, 1, c.block) for c in consumers),
        consumer_biases=tuple(consumer_biases),
        consumer_nodes=tuple(c.node.name for c in consumers),
        exact_constants=exact,
        grouped_nodes=tuple(space.depthwise),
        functions=consumers[0].functions if len(chains) == 1 else (),
        kinds=tuple(ACTIVATIONS[nodes[a].target] for a in dict.fromkeys(
            c.activation for c in consumers)),
    )


def _signature(node: fx.Node) -> tuple:
    """What an activation node computes: its op and constant arguments."""
    return node.target, tuple(node.args[1:]), tuple(sorted(node.kwargs.items()))


def _depthwise(conv: fx.Node) -> bool:
    """A convolution with one filter per input channel (groups = in = out channels)."""
    weight, val = conv.args[1], conv.meta.get("val")
    if not isinstance(weight, fx.Node) or weight.op != "get_attr" or val is None:
        return False
    w = weight.meta.get("val")
    groups = _groups(conv)
    return groups > 1 and w is not None and w.shape[1] == 1 and int(w.shape[0]) == groups and \
        int(val.shape[1]) == groups and len(weight.users) == 1


def _groups(conv: fx.Node) -> int:
    return int(conv.args[6]) if len(conv.args) > 6 else 1


def _padding(conv: fx.Node) -> list[int]:
    padding = conv.args[4] if len(conv.args) > 4 else 0
    if isinstance(padding, str):  # "same" / "valid"
        return [1] if padding == "same" else [0]
    return [int(p) for p in padding] if isinstance(padding, (list, tuple)) else [int(padding)]


def _key(node: fx.Node) -> object:
    return node.target if node.op == "get_attr" else node


def _op_name(node: fx.Node) -> str:
    return getattr(node.target, "__name__", str(node.target)).split(".")[0]


def _shape(node: fx.Node) -> str:
    val = node.meta.get("val")
    return "?" if val is None else "[" + ", ".join(str(d) for d in val.shape) + "]"


def _describe(node: object) -> str:
    if isinstance(node, fx.Node):
        return "the model's input" if node.op == "placeholder" else f"{_op_name(node)} " \
                                                                     f"({node.name})"
    return repr(node)
