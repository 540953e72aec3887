"""Channel spaces: the units of a producer followed to every layer that reads them, joined where
they meet another producer's (a residual add, a gate, a cat along another axis). Each op on
the way is decided by its rule (`compressor.graph.rules`); what no rule covers ends the space
with the reason. A space that can be pruned becomes a group (`group_of`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import fx

from .capture import add_zero_bias, get_tensor
from .groups import PrunableGroup, Slice
from .ops import CONV, EMBEDDING, LINEAR, MUL
from .rules.registry import UNKNOWN, At, kind, ndim, op_name, rule_for, scaling, width

OUTPUT_LAYER = "output layer (never pruned)"


@dataclass
class Consumer:
    node: fx.Node  # the Linear or Conv that reads the space
    block: int  # columns each unit owns in its weight
    activation: str  # the node it reads the space through (where units are counted)
    functions: tuple[str, ...]  # every activation node from the last join to it, in order
    axis: int = 1  # the axis of the units in the activation node's output
    offset: int = 0  # where the units' entries start in its input (behind a channel cat)
    count_offset: int = 0  # where they start in the output of `activation`
    parts: int | None = None  # 1: read per group with the same weights; None: as the space


@dataclass
class Space:
    producers: list[str] = field(default_factory=list)
    consumers: dict[str, Consumer] = field(default_factory=dict)
    depthwise: list[str] = field(default_factory=list)  # convs that filter each unit alone
    carried: dict[tuple[str, int], Slice] = field(default_factory=dict)  # per-unit constants
    reshapes: dict[tuple[str, int], int] = field(default_factory=dict)  # (node, axis): entries
    #                                     each unit adds to a reshape's written size
    parts: int = 1  # the producers' outputs hold the units in this many parts (grouped)
    once: int = 0  # behind a cat that doubles the units (`joins.doubled`): their number,
    #                which the layers before it hold once (a tensor of twice as many: twice)
    reason: str = ""
    final: bool = False  # the reason explains the whole space (LayerNorm, attention heads)
    normalized: bool = False  # read through a normalization over the units (the stream)


class Spaces:
    """Channel spaces found so far, joined where producers' units meet (union-find)."""

    def __init__(self, attention: set[str], stream: bool = False) -> None:
        self.parent: dict[str, str] = {}
        self.spaces: dict[str, Space] = {}
        self.attention = attention  # nodes between a layer and the attention it feeds
        self.stream = stream  # follow units through normalizations over them (the stream)

    def find(self, name: str) -> str:
        while self.parent[name] != name:
            self.parent[name] = self.parent[self.parent[name]]
            name = self.parent[name]
        return name

    def add(self, producer: fx.Node) -> str:
        if producer.name not in self.parent:
            self.parent[producer.name] = producer.name
            self.spaces[producer.name] = Space([producer.name])
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
            first.reshapes.update(second.reshapes)
            if 1 < first.parts != second.parts > 1:
                first.reason = first.reason or "its channels are grouped differently where " \
                                                "they meet another layer's"
            if 0 < first.once != second.once > 0:
                first.reason = first.reason or "its channels are doubled by cats of " \
                                                "different widths"
            first.parts = max(first.parts, second.parts)
            first.once = max(first.once, second.once)
            first.normalized = first.normalized or second.normalized
            if second.final and not first.final:
                first.reason, first.final = second.reason, True
            first.reason = first.reason or second.reason
        return a

    def all(self) -> list[Space]:
        return list(self.spaces.values())

    def walk(self, producer: fx.Node, parts: int = 1) -> None:
        """Follow `producer`'s channels to every consumer, joining spaces where they meet."""
        Walk(self, producer, parts).run()


class Walk:
    """One producer's walk through the graph: the rules read and change it."""

    def __init__(self, spaces: Spaces, producer: fx.Node, parts: int) -> None:
        self.spaces, self.producer = spaces, producer
        self.root = spaces.add(producer)
        self.space.parts = max(self.space.parts, parts)
        self.cats: set[str] = set()  # channel cats this walk has passed

    @property
    def space(self) -> Space:
        return self.spaces.spaces[self.spaces.find(self.root)]

    @property
    def attention(self) -> set[str]:
        return self.spaces.attention

    def fail(self, reason: str, final: bool = False) -> None:
        """Mark the space unprunable; the first reason stays, unless a final one comes."""
        space = self.space
        if final and not space.final:
            space.reason, space.final = reason, True
        space.reason = space.reason or reason

    def join(self, producer: fx.Node) -> None:
        """Join `producer`'s space to this one."""
        self.root = self.spaces.join(self.root, self.spaces.add(producer))

    def run(self) -> None:
        axis = 1 if self.producer.target in CONV else ndim(self.producer) - 1
        todo = [At(self.producer, 1, (), axis, axis, source=self.producer)]
        seen: set[str] = set()
        while todo:
            at = todo.pop()
            if at.node.name in seen:
                continue
            seen.add(at.node.name)
            users = list(at.node.users)
            for user in users:
                step = self.step(at, user, len(users))
                if step is not None:
                    todo.append(step)

    def step(self, at: At, user: fx.Node, readers: int) -> At | None:
        found = rule_for(user)
        if at.behind and user.op != "output" and not (found and found.behind_cat(user, at)):
            self.fail(f"its concatenated output feeds {op_name(user)}, which the tracer "
                      "follows only for the output of one layer")
            return None
        if user.op == "output":
            self.fail(OUTPUT_LAYER if not _activations(at) else
                      "its activation is the model's output")
            return None
        if found is not None:
            result = found.forward(self, at, user)
            if result is not UNKNOWN:
                return result
        if user.name in self.attention:
            self.fail("attention: its output is split into heads (not pruned)", final=True)
            return None
        acts = _activations(at)
        what = "its output" if not acts else f"its {kind(acts[-1])} output"
        if not acts and readers == 1 and user.target not in (LINEAR, *CONV):
            self.fail(f"not followed by an elementwise activation (found {op_name(user)})")
        else:
            self.fail(f"{what} feeds {op_name(user)}, which couples channels in a way the "
                      "tracer does not follow")
        return None

    def consume(self, at: At, user: fx.Node, parts: int | None = None) -> None:
        """Record `user` as a layer that reads the units: counted at the last activation on
        the way, or where they were made (or joined) if there is none (`parts`: 1 where it
        reads every group's channels with the same weights, as a grouped convolution does;
        None: as the space holds them)."""
        counted = _activations(at)
        known = self.space.consumers.get(user.name)
        if known is not None and (known.offset, known.block) != (at.offset, at.block):
            self.fail(f"{user.name} reads its channels twice (through a cat)")
            return None
        where = counted[-1].name if counted else (at.source or at.node).name
        self.space.consumers[user.name] = Consumer(user, at.block, where,
                                                   tuple(a.name for a in at.acts), at.counted,
                                                   at.offset, at.count_offset, parts)
        return None


def _activations(at: At) -> list[fx.Node]:
    return [a for a in at.acts if not scaling(a)]


def group_of(gm: fx.GraphModule, space: Space, members: list) -> PrunableGroup:
    """The prunable group of `space`, whose producers are the layers `members`: the entries
    its units own in every tensor the space reaches (a bias-free consumer given a zero bias)."""
    nodes = {n.name: n for n in gm.graph.nodes}
    order = {name: i for i, name in enumerate(nodes)}
    producers = sorted((nodes[p] for p in space.producers), key=lambda n: order[n.name])
    filters = producers + [nodes[d] for d in space.depthwise]
    parts = space.parts
    first, axis = _weight(producers[0])
    size = space.once or int(get_tensor(gm, first).shape[axis]) // parts

    def owned(param: str, axis: int, block: int = 1, offset: int = 0,
              in_parts: int | None = None) -> Slice:
        if in_parts is None:  # behind a doubling cat, a tensor holds the units once or twice
            in_parts = get_tensor(gm, param).shape[axis] // (size * block) if space.once \
                else parts
        return Slice(param, axis, block, offset, in_parts, size * block if in_parts > 1 else 0)

    weights = tuple(owned(*_weight(p)) for p in filters)
    biases = tuple(owned(p.args[2].target, 0) for p in filters
                   if p.target is not EMBEDDING and len(p.args) > 2 and p.args[2] is not None)
    once = tuple(d for d in space.depthwise if get_tensor(gm, _weight(nodes[d])[0]).shape[0]
                 == size) if space.once else ()  # before the doubling cat
    consumers = sorted(space.consumers.values(), key=lambda c: order[c.node.name])
    consumer_biases = []
    for c in consumers:
        if len(c.node.args) < 3 or c.node.args[2] is None:
            consumer_biases.append(add_zero_bias(gm, c.node))
        else:
            consumer_biases.append(c.node.args[2].target)
    counted = {c.activation: (c.axis, c.count_offset) for c in consumers}
    once += tuple(a for a, (ax, _) in counted.items()
                  if space.once and width(nodes[a], ax) == size)
    chains = {tuple(_signature(nodes[a]) for a in c.functions) for c in consumers}
    gated = any(nodes[a].target in MUL and not scaling(nodes[a])
                for c in consumers for a in c.functions)  # its value needs the other factor
    exact = len(filters) == 1 and len(chains) == 1 and not gated and not space.carried and \
        parts == 1 and all(
        c.node.target is LINEAR or not any(_padding(c.node)) for c in consumers)
    members.sort(key=lambda layer: order[layer.node])
    return PrunableGroup(
        name=members[0].name,
        size=size,
        weights=weights,
        biases=biases,
        activations=tuple(counted),
        axes=tuple(axis for axis, _ in counted.values()),
        offsets=tuple(offset for _, offset in counted.values()),
        carried=tuple(owned(s.param, s.axis, s.block, s.offset) for s in space.carried.values()),
        consumers=tuple(owned(c.node.args[1].target, 1, c.block, c.offset,
                              c.parts if c.parts is not None or space.once else parts)
                        for c in consumers),
        consumer_biases=tuple(consumer_biases),
        consumer_nodes=tuple(c.node.name for c in consumers),
        exact_constants=exact,
        grouped_nodes=tuple(space.depthwise),
        functions=consumers[0].functions if len(chains) == 1 else (),
        kinds=tuple(kind(nodes[a]) for a in counted),
        parts=parts,
        once=once,
        reshapes=tuple((name, axis, per_unit * parts)
                       for (name, axis), per_unit in space.reshapes.items()),
        stream=space.normalized,
    )


def _weight(producer: fx.Node) -> tuple[str, int]:
    """A producer's weight tensor and the axis its units are on (an embedding's columns)."""
    if producer.target is EMBEDDING:
        return producer.args[0].target, 1
    return producer.args[1].target, 0


def _signature(node: fx.Node) -> tuple:
    """What an activation node computes: its op and constant arguments."""
    return node.target, tuple(node.args[1:]), tuple(sorted(node.kwargs.items()))


def _padding(conv: fx.Node) -> list[int]:
    padding = conv.args[4] if len(conv.args) > 4 else 0
    if isinstance(padding, str):  # "same" / "valid"
        return [1] if padding == "same" else [0]
    return [int(p) for p in padding] if isinstance(padding, (list, tuple)) else [int(padding)]
