"""Find the prunable groups of the working graph by following channel spaces; name every layer
left dense and why.

A channel space starts at a producer's output (Linear out-features, Conv out-channels) and
flows to its consumers' inputs through ops that carry channels unchanged (elementwise
activations, identity ops, Dropout, pooling). Flatten sets `block` (a channel owns H*W columns
of the next Linear); a residual `add` joins the spaces of its inputs into one group, whose units
are removed from every producer and consumer together; a `cat` on the channel axis keeps each
input's space apart, at an offset in what its consumers read. A space is pruned only if every consumer
reads it through an elementwise activation after the last join (ReLU, GELU, SiLU, ...: see
`ops.ACTIVATIONS`; each unit reaches the consumer through its own output alone) and every op on
the way is understood; otherwise its layers stay dense with the reason in the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import sympy
import torch
from torch import fx

from .capture import add_zero_bias, get_tensor
from .groups import PrunableGroup, Slice
from .ops import (
    ACTIVATIONS,
    ADD,
    ATTENTION,
    CAT,
    CONV,
    FLATTEN,
    IDENTITY,
    LINEAR,
    MATMUL,
    MEAN,
    MUL,
    NORMS,
    POOL,
    TRANSPOSE,
)

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
    spaces = _Spaces(_attention_inputs(gm))
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
    axis: int = 1  # the axis of the units in the activation node's output
    offset: int = 0  # where the units' entries start in its input (behind a channel cat)
    count_offset: int = 0  # where they start in the output of `activation`


@dataclass
class _Space:
    producers: list[str] = field(default_factory=list)
    consumers: dict[str, _Consumer] = field(default_factory=dict)
    depthwise: list[str] = field(default_factory=list)  # convs that filter each unit alone
    carried: dict[tuple[str, int], Slice] = field(default_factory=dict)  # unfolded BatchNorm
    reason: str = ""
    final: bool = False  # the reason explains the whole space (LayerNorm, attention heads)


class _Spaces:
    """Channel spaces found so far, joined where a residual add meets (union-find)."""

    def __init__(self, attention: set[str]) -> None:
        self.parent: dict[str, str] = {}
        self.spaces: dict[str, _Space] = {}
        self.attention = attention  # nodes between a layer and the attention it feeds
        self.cats: set[str] = set()  # channel cats the current walk has passed

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
            first.carried.update(second.carried)
            if second.final and not first.final:
                first.reason, first.final = second.reason, True
            first.reason = first.reason or second.reason
        return a

    def fail(self, root: str, reason: str, final: bool = False) -> None:
        """Mark the space unprunable; the first reason stays, unless a final one comes."""
        space = self.spaces[self.find(root)]
        if final and not space.final:
            space.reason, space.final = reason, True
        space.reason = space.reason or reason

    def all(self) -> list[_Space]:
        return list(self.spaces.values())

    def walk(self, producer: fx.Node) -> None:
        """Follow `producer`'s channels to every consumer, joining spaces at residual adds."""
        root = self.add(producer)
        self.cats = set()
        axis = 1 if producer.target in CONV else _ndim(producer) - 1
        todo = [_At(producer, 1, (), axis, axis)]
        seen: set[str] = set()
        while todo:
            at = todo.pop()
            if at.node.name in seen:
                continue
            seen.add(at.node.name)
            users = list(at.node.users)
            for user in users:
                step = self._step(root, at, user, len(users))
                if step is not None:
                    todo.append(step)
                root = self.find(root)

    def _step(self, root: str, at: _At, user: fx.Node, readers: int) -> _At | None:
        node, block = at.node, at.block
        acts = [a for a in at.acts if not _scaling(a)]  # the activations (for messages)
        if at.behind and not _after_cat(user, at):
            self.fail(root, f"its concatenated output feeds {_op_name(user)}, which the tracer "
                            "follows only for the output of one layer")
            return None
        if user.op == "output":
            self.fail(root, OUTPUT_LAYER if not acts else "its activation is the model's output")
            return None
        if user.target in NORMS and user.args[0] is node:
            if _normalised(user, at.axis):
                self.fail(root, f"residual stream: {NORMS[user.target]} couples all its "
                                "features (not pruned)", final=True)
                return None
            return replace(at, node=user)  # each unit (a token) normalised on its own
        if user.target in ACTIVATIONS:
            return replace(at, node=user, acts=(*at.acts, user), counted=at.axis,
                           count_offset=at.offset)
        if user.target is BATCH_NORM_OP and user.args[0] is node:
            return self._affine(root, at, user)
        if user.target in MUL:
            return self._gate(root, at, user)
        if user.target in IDENTITY or (user.target in POOL and at.axis == 1):
            if user.target is DROPOUT and len(user.args) > 2 and user.args[2]:  # training mode
                self.fail(root, "dropout in training mode")
                return None
            return replace(at, node=user)
        moved = _moved_axis(node, user, at.axis) if block == 1 else None
        if moved is not None:
            return replace(at, node=user, axis=moved)
        if user.target in FLATTEN and at.axis == 1:
            flat = _flattened_block(node, user)
            if flat is not None:
                return replace(at, node=user, block=block * flat, offset=at.offset * flat)
        if user.target in ADD:
            return self._join(root, at, user)
        if user.target in CAT and _cat_dim(user) != at.axis:
            return self._append(root, at, user)
        if user.target in CAT:
            return self._concat(root, at, user)
        if user.target in CONV and user.args[0] is node and _depthwise(user) and block == 1 \
                and at.axis == 1:
            space = self.spaces[self.find(root)]  # it filters each unit alone: carries them on
            if user.name not in space.depthwise:
                space.depthwise.append(user.name)
            return _At(user, 1, (), 1, 1)
        if (user.target is LINEAR or user.target in CONV) and user.args[0] is node:
            return self._consume(root, at, user)
        if user.name in self.attention:
            self.fail(root, "attention: its output is split into heads (not pruned)",
                      final=True)
            return None
        if user.target in FLATTEN or user.target in TRANSPOSE:
            self.fail(root, f"its output is reshaped by {_op_name(user)} to {_shape(user)}, "
                            "which the tracer does not follow")
            return None
        what = "its output" if not acts else f"its {_kind(acts[-1])} output"
        if not acts and readers == 1 and user.target not in (*LINEAR_OR_CONV,):
            self.fail(root, f"not followed by an elementwise activation (found "
                            f"{_op_name(user)})")
        else:
            self.fail(root, f"{what} feeds {_op_name(user)}, which couples channels in a way "
                            "the tracer does not follow")
        return None

    def _consume(self, root: str, at: _At, user: fx.Node) -> None:
        counted = [a for a in at.acts if not _scaling(a)]
        known = self.spaces[self.find(root)].consumers.get(user.name)
        if not counted:
            self.fail(root, f"its output reaches {user.name} without an activation")
        elif user.target in CONV and (at.block != 1 or _groups(user) != 1 or at.axis != 1):
            self.fail(root, f"its output feeds {user.name}, a grouped or reshaped convolution")
        elif user.target is LINEAR and at.axis != _ndim(at.node) - 1:
            self.fail(root, f"its output reaches {user.name} with its features on axis "
                            f"{at.axis} of {_shape(at.node)}, not the last")
        elif known is not None and (known.offset, known.block) != (at.offset, at.block):
            self.fail(root, f"{user.name} reads its channels twice (through a cat)")
        else:
            self.spaces[self.find(root)].consumers[user.name] = _Consumer(
                user, at.block, counted[-1].name, tuple(a.name for a in at.acts), at.counted,
                at.offset, at.count_offset)
        return None

    def _concat(self, root: str, at: _At, cat: fx.Node) -> _At | None:
        """A `cat` along the units' axis (Inception branches, U-Net skips, DenseNet layers):
        the units keep their own space, behind the channels of the operands before them;
        the consumers read them at that offset (which moves when those operands shrink), and
        they are counted at that offset in the activations after it."""
        operands = list(cat.args[0])
        widths = [_width(o, at.axis) for o in operands[:operands.index(at.node)]]
        if at.block != 1:
            self.fail(root, "its flattened output is concatenated with other tensors")
        elif cat.name in self.cats or operands.count(at.node) != 1:
            self.fail(root, f"its channels reach {cat.name} more than once")
        elif None in widths:
            self.fail(root, f"it is concatenated after a tensor of unknown width in {cat.name}")
        else:
            self.cats.add(cat.name)
            return replace(at, node=cat, offset=at.offset + sum(widths), behind=True)
        return None

    def _affine(self, root: str, at: _At, norm: fx.Node) -> _At | None:
        """An eval-mode BatchNorm that could not be folded into a layer (it follows a cat, a
        residual add, or a layer whose output goes elsewhere too): it scales and shifts each
        channel alone, so its entries for the units go with them."""
        params = norm.args[1:5]
        if at.axis != 1 or at.block != 1 or (len(norm.args) > 5 and norm.args[5]):
            self.fail(root, f"its output feeds {norm.name} (BatchNorm in training mode or "
                            "off the channel axis)")
            return None
        if not all(isinstance(p, fx.Node) and p.op == "get_attr" and len(p.users) == 1
                   for p in params if p is not None):
            self.fail(root, f"its output feeds {norm.name}, a BatchNorm whose statistics are "
                            "computed or shared")
            return None
        space = self.spaces[self.find(root)]
        for p in params:
            if p is not None:
                space.carried[p.target, at.offset] = Slice(p.target, 0, 1, at.offset)
        return replace(at, node=norm)

    def _join(self, root: str, at: _At, add: fx.Node) -> _At | None:
        """A residual add: every operand's space joins this one; the add carries it on. An
        operand that is not a traced layer's output fails the space, and the walk goes on to
        find every layer the space reaches (and the reason that explains it best)."""
        if at.block != 1:
            self.fail(root, "its flattened output is added to another tensor")
            return None
        for operand in add.args[:2]:
            if operand is at.node:
                continue
            sources = _sources(operand, at.axis) if _ndim(operand) == _ndim(add) else None
            if sources is None:
                self.fail(root, f"its output is added to {_describe(operand)}, which is not "
                                "the output of a traced layer")
                continue
            for source in sources:
                root = self.join(root, self.add(source))
        return _At(add, 1, (), at.axis, at.axis)

    def _append(self, root: str, at: _At, cat: fx.Node) -> _At | None:
        """A `cat` along another axis than the units' (a class token put before the patch
        tokens): unit j of every operand is unit j of the result, so the operands' spaces
        join as at an add; an operand that is no traced layer's output (a learned token)
        fails the space, and the walk goes on as after an add."""
        if at.block != 1:
            self.fail(root, "its flattened output is concatenated with other tensors")
            return None
        for operand in cat.args[0]:
            if operand is at.node:
                continue
            sources = _sources(operand, at.axis) if _ndim(operand) == _ndim(cat) else None
            if sources is None:
                self.fail(root, f"its output is concatenated with {_describe(operand)}, which "
                                "is not the output of a traced layer")
                continue
            for source in sources:
                root = self.join(root, self.add(source))
        return _At(cat, 1, (), at.axis, at.axis)

    def _gate(self, root: str, at: _At, mul: fx.Node) -> _At | None:
        """An elementwise product: by a number it carries the units on; by another channel
        space (silu(W1 x) * (W3 x)) it joins it, unit j of each producer making unit j of
        the product, which is where the units are counted."""
        other = mul.args[1] if mul.args[0] is at.node else mul.args[0]
        if not isinstance(other, fx.Node):  # a function of each unit, but not where to count
            return replace(at, node=mul, acts=(*at.acts, mul))
        sources = [] if other is at.node else _sources(other, at.axis)
        if sources is None or at.block != 1 or _shape(other) != _shape(at.node):
            self.fail(root, f"its output is multiplied by {_describe(other)}, which is not "
                            "the output of a traced layer of the same shape")
            return None
        for source in sources:
            root = self.join(root, self.add(source))
        return replace(at, node=mul, acts=(*at.acts, mul), counted=at.axis)


@dataclass(frozen=True)
class _At:
    """Where a walk is: a node carrying the space's units, `block` columns each, on `axis` of
    its output from `offset` on; the activations passed since the last join, and the axis of
    the units on the last of them, and their offset there (where they are counted)."""

    node: fx.Node
    block: int
    acts: tuple[fx.Node, ...]
    axis: int
    counted: int
    offset: int = 0  # where the units' entries start on `axis` (behind a channel cat)
    count_offset: int = 0  # where they start in the output of the last activation
    behind: bool = False  # behind a channel cat: other layers' channels beside them


LINEAR_OR_CONV = (LINEAR, *CONV)
NORMS_BY_NAME = {name: op for op, name in NORMS.items()}
SDPA = ATTENTION[0]
DROPOUT = torch.ops.aten.dropout.default
BATCH_NORM_OP = torch.ops.aten.batch_norm.default  # what capture leaves of an unfolded one


def _sources(node: object, axis: int) -> list[fx.Node] | None:
    """The producers whose channels `node` carries on `axis` of its output (through
    activations, identity ops, pooling, axis moves, scaling by a number and adds), or None if
    it carries anything else."""
    if not isinstance(node, fx.Node):
        return None
    if node.target is LINEAR:
        return [node] if axis == _ndim(node) - 1 else None
    if node.target in CONV:
        return [node] if axis == 1 else None
    if node.target in ADD or (node.target in CAT and _cat_dim(node) != axis):
        operands = node.args[:2] if node.target in ADD else node.args[0]
        found = [_sources(a, axis) if _ndim(a) == _ndim(node) else None for a in operands]
        return None if any(f is None for f in found) else [s for f in found for s in f]
    if not node.args or not isinstance(node.args[0], fx.Node):
        return None
    source = node.args[0]
    if node.target in ACTIVATIONS or node.target in IDENTITY or \
            (node.target in POOL and axis == 1) or \
            (node.target in MUL and not isinstance(node.args[1], fx.Node)):
        return _sources(source, axis)
    for before in range(_ndim(source)):
        if _moved_axis(source, node, before) == axis:
            return _sources(source, before)
    return None


def _moved_axis(node: fx.Node, user: fx.Node, axis: int) -> int | None:
    """Where the channels on `axis` of `node` are in `user`'s output, if `user` moves axes
    without mixing channels: a transpose or permute, a mean over axes other than the batch and
    the channels, or a reshape that keeps every axis up to the channels (regrouping those
    after) or every axis from the channels on (regrouping those before)."""
    if not user.args or user.args[0] is not node:
        return None
    ndim = _ndim(node)
    if user.target is torch.ops.aten.t.default:
        return 1 - axis if ndim == 2 else None
    if user.target is torch.ops.aten.transpose.int:
        a, b = (int(d) % ndim for d in user.args[1:3])
        return b if axis == a else a if axis == b else axis
    if user.target is torch.ops.aten.permute.default:
        return [int(d) % ndim for d in user.args[1]].index(axis)
    if user.target is MEAN:
        dims = {int(d) % ndim for d in user.args[1]} if len(user.args) > 1 else set()
        if not dims or 0 in dims or axis in dims:
            return None
        keep = len(user.args) > 2 and user.args[2]
        return axis if keep else axis - sum(d < axis for d in dims)
    if user.target in FLATTEN:
        before, after = _dims(node), _dims(user)
        if before is None or after is None:
            return None
        if after[:axis + 1] == before[:axis + 1]:
            return axis
        tail = before[axis:]
        if len(after) >= len(tail) and after[len(after) - len(tail):] == tail:
            return len(after) - len(tail)
    return None


def _after_cat(user: fx.Node, at: _At) -> bool:
    """Whether the walk can go on from a channel cat's output `node` to `user`: ops that act
    on each channel alone or read them as columns (activations, identity, pooling, Flatten,
    axis moves, scaling by a number, Linear and ungrouped convolutions, further channel cats)."""
    if user.op == "output" or user.target in ACTIVATIONS or user.target in IDENTITY or \
            user.target in POOL or user.target in FLATTEN or user.target in TRANSPOSE or \
            user.target is MEAN or (user.target in CAT and _cat_dim(user) == at.axis) or \
            user.target is BATCH_NORM_OP:
        return True
    if user.target in MUL:
        return not any(isinstance(a, fx.Node) for a in user.args if a is not at.node)
    return (user.target is LINEAR or user.target in CONV) and not (
        user.target in CONV and _groups(user) != 1)


def _width(node: object, axis: int) -> int | None:
    """The size of `axis` of a node's output, if known and not symbolic."""
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    try:
        return None if val is None else int(val.shape[axis])
    except (TypeError, ValueError):
        return None


def _normalised(norm: fx.Node, axis: int) -> bool:
    """Whether a normalisation mixes the units on `axis`: LayerNorm and RMSNorm normalise
    their last len(normalized_shape) axes (tokens on another axis stay apart), GroupNorm
    the channels."""
    if norm.target is NORMS_BY_NAME["GroupNorm"]:
        return True
    return axis >= _ndim(norm) - len(norm.args[1])


def _cat_dim(cat: fx.Node) -> int:
    dim = cat.args[1] if len(cat.args) > 1 else cat.kwargs.get("dim", 0)
    return int(dim) % _ndim(cat)


def _positions(out: torch.Tensor | None, batch: object, conv: bool) -> int:
    """Output positions per sample (pixels of a conv, tokens of a Linear): the output's size
    over the batch and the channels, wherever reshapes moved the batch ([T, B, F], [T*B, F])."""
    if out is None:
        return 1
    channels = out.shape[1] if conv else out.shape[-1]
    total = math.prod(out.shape) // channels
    ratio = sympy.simplify(_expr(total) / _expr(batch))  # sympy comes with torch
    return int(ratio) if ratio.is_Integer else 1  # else the batch is not a factor of it


def _expr(size: object) -> sympy.Expr:
    return size.node.expr if isinstance(size, torch.SymInt) else sympy.Integer(int(size))


def _dims(node: fx.Node) -> list[str] | None:
    val = node.meta.get("val")
    return None if val is None else [str(d) for d in val.shape]


def _ndim(node: object) -> int:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return 2 if val is None else val.ndim


def _scaling(node: fx.Node) -> bool:
    """A product with a number: applied to each unit, but no activation to count at."""
    return node.target in MUL and not isinstance(node.args[1], fx.Node)


def _kind(node: fx.Node) -> str:
    """The activation a unit passes through at `node`: an elementwise function, or the gate
    of a product of two spaces."""
    return "gated" if node.target in MUL else ACTIVATIONS[node.target]


def _attention_inputs(gm: fx.GraphModule) -> set[str]:
    """Nodes on the way from a layer's output to attention (scaled_dot_product_attention, or
    a softmax whose output multiplies another tensor): where a layer's output is split into
    heads."""
    found: set[str] = set()
    todo = [n for n in gm.graph.nodes if n.target is SDPA]
    for softmax in [n for n in gm.graph.nodes if n.target in ATTENTION and n.target is not SDPA]:
        products, later = [], list(softmax.users)  # attention is softmax(q kᵀ) times v
        while later:
            node = later.pop()
            if node.target in MATMUL:
                products.append(node)
            elif node.op == "call_function" and node.target is not LINEAR:
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
    counted = {c.activation: (c.axis, c.count_offset) for c in consumers}
    chains = {tuple(_signature(nodes[a]) for a in c.functions) for c in consumers}
    gated = any(nodes[a].target in MUL and not _scaling(nodes[a])
                for c in consumers for a in c.functions)  # its value needs the other factor
    exact = len(filters) == 1 and len(chains) == 1 and not gated and not space.carried and all(
        c.node.target is LINEAR or not any(_padding(c.node)) for c in consumers)
    members.sort(key=lambda layer: list(nodes).index(layer.node))
    return PrunableGroup(
        name=members[0].name,
        size=int(get_tensor(gm, producers[0].args[1].target).shape[0]),
        weights=weights,
        biases=biases,
        activations=tuple(counted),
        axes=tuple(axis for axis, _ in counted.values()),
        offsets=tuple(offset for _, offset in counted.values()),
        carried=tuple(space.carried.values()),
        consumers=tuple(Slice(c.node.args[1].target, 1, c.block, c.offset) for c in consumers),
        consumer_biases=tuple(consumer_biases),
        consumer_nodes=tuple(c.node.name for c in consumers),
        exact_constants=exact,
        grouped_nodes=tuple(space.depthwise),
        functions=consumers[0].functions if len(chains) == 1 else (),
        kinds=tuple(_kind(nodes[a]) for a in counted),
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
        origin = node
        while origin.target in IDENTITY or str(origin.target).startswith("aten.to."):
            origin = origin.args[0]  # a copy or a dtype conversion says nothing
        return "the model's input" if origin.op == "placeholder" else f"{_op_name(origin)} " \
                                                                       f"({origin.name})"
    return repr(node)
