"""Attention heads as prunable units.

An attention core (`scaled_dot_product_attention`, or a softmax between two matmuls) reads q,
k and v laid out [batch, heads, tokens, head dim]. Each is followed back through the ops that
only move entries (views, permutes, unbind, split, chunk, a scale) to the Linear that made it,
and the core's output forward to the Linear that reads it. Which rows and columns belong to
which head is found by running those ops on the entries' own indices, so a fused qkv, separate
q/k/v projections, a split or a chunk are all read the same way. A unit is a k/v head with
the q heads that share it (one head each without grouped-query attention): its rows of q, k
and v, its columns of the output projection, and the head count wherever a reshape writes it.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, replace

import torch
from torch import fx

from .groups import PrunableGroup, Slice
from .ops import ATTENTION, IDENTITY, LINEAR, MATMUL

aten = torch.ops.aten
SDPA = ATTENTION[0]
MOVES = {aten.view.default, aten.reshape.default, aten._unsafe_view.default,
         aten.permute.default, aten.transpose.int, aten.t.default, aten.unbind.int,
         aten.select.int, aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default,
         aten.slice.Tensor, aten.contiguous.default, aten.clone.default, aten.alias.default,
         aten.unsqueeze.default, aten.squeeze.dim, aten.expand.default,
         aten.unflatten.int, aten.flatten.using_ints, aten.detach.default}
SCALES = {aten.mul.Tensor, aten.div.Tensor}  # by a number: the entries stay where they are
SHIFTS = {aten.add.Tensor, aten.sub.Tensor}  # a bias or mask on the scores: likewise
GATHERS = {aten.index.Tensor}  # a relative position bias read from its table
CARRY = set(IDENTITY)  # the probabilities as they are
SPLITS = {aten.split.Tensor, aten.split_with_sizes.default}  # sizes, then the axis
RESHAPES = {aten.view.default, aten.reshape.default, aten._unsafe_view.default,
            aten.expand.default}  # a size list second, as unflatten's is third


@dataclass(frozen=True)
class Heads:
    """One attention's heads as a group, and the reshapes that write their count."""

    group: PrunableGroup
    layers: tuple[str, ...]  # the Linear nodes whose rows or columns it prunes
    products: tuple[str, ...] = ()  # the nodes that multiply activations per head


def find_heads(gm: fx.GraphModule, sample: torch.Tensor) -> list[Heads]:
    """Every attention of `gm` whose heads can be pruned, run on `sample` (one input) to read
    the layout of its q, k, v and output."""
    cores = [((n,), tuple(n.args[:3]), n, ()) for n in gm.graph.nodes if n.target is SDPA] + \
        _explicit_cores(gm)
    if not cores:
        return []
    values = _values(gm, sample[:1])
    found = []
    for products, (q, k, v), out, path in cores:
        heads = _heads(gm, q, k, v, out, path, values)
        if heads is not None:
            found.append(replace(heads, products=tuple(n.name for n in products)))
    return found


def _explicit_cores(gm: fx.GraphModule) -> list[tuple[tuple, tuple, fx.Node, tuple]]:
    """softmax(q @ kᵀ ...) @ v written out: ((q @ kᵀ, its product with v), (q, k, v),
    output, the ops from q @ kᵀ to the softmax: scales, biases, masks and the views between
    them, as Swin's shifted windows add their mask per window)."""
    found = []
    for soft in (n for n in gm.graph.nodes if n.target in ATTENTION and n.target is not SDPA):
        path = _path_back(soft.args[0], SCALES | SHIFTS | RESHAPES)
        scores = path[0] if path else None
        probs = soft  # through dropout at eval, copies and casts (BERT, GPT-2)
        while len(probs.users) == 1 and next(iter(probs.users)).target in CARRY:
            probs = next(iter(probs.users))
        outs = [u for u in probs.users if u.target in MATMUL and u.args[0] is probs]
        if scores is None or scores.target not in MATMUL or len(outs) != 1:
            continue
        q, kt = scores.args[:2]
        k = kt.args[0] if isinstance(kt, fx.Node) and kt.target in (aten.transpose.int,) else None
        if k is not None:
            found.append(((scores, outs[0]), (q, k, outs[0].args[1]), outs[0], tuple(path)))
    return found


def _path_back(node: object, ops: set) -> list[fx.Node]:
    """The node `node` is computed from through `ops` (each followed by its first tensor
    argument), then those ops in order; empty if that is not a node."""
    path = []
    while isinstance(node, fx.Node) and node.target in ops:
        path.append(node)
        node = next((a for a in node.args if isinstance(a, fx.Node)), None)
    return [node, *path[::-1]] if isinstance(node, fx.Node) else []


def _values(gm: fx.GraphModule, x: torch.Tensor) -> dict[str, object]:
    """Every node's value on `x`."""
    values: dict[str, object] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            values[n.name] = out
            return out

    with torch.no_grad():
        Recorder(gm).run(x)
    return values


def _chain_back(node: fx.Node) -> tuple[fx.Node, list[fx.Node]] | None:
    """The Linear `node` is made from through ops that only move entries, and those ops (in
    order from the Linear); None if anything else is on the way."""
    chain = []
    while node.op == "call_function" and node.target is not LINEAR:
        moves = node.target in MOVES or getattr(node.target, "__name__", "") == "getitem"
        scales = node.target in SCALES and sum(isinstance(a, fx.Node) for a in node.args) == 1
        if not (moves or scales):
            return None
        chain.append(node)
        node = node.args[0]
        if not isinstance(node, fx.Node):
            return None
    return (node, chain[::-1]) if node.target is LINEAR else None


def _chain_forward(node: fx.Node) -> tuple[fx.Node, list[fx.Node]] | None:
    """The Linear that reads `node` through ops that only move entries, and those ops."""
    chain = []
    while True:
        users = list(node.users)
        if len(users) != 1:
            return None
        user = users[0]
        if user.target is LINEAR and user.args[0] is node:
            return user, chain
        if user.target not in MOVES or user.args[0] is not node:
            return None
        chain.append(user)
        node = user


def _replayed(chain: list[fx.Node], start: fx.Node, value: torch.Tensor,
              values: dict[str, object]) -> torch.Tensor:
    """`chain` run with `start`'s value replaced by `value` (the other arguments as they were
    on the sample); scales, biases and masks leave the entries as they are (broadcast to the
    shape they give)."""
    current = {start.name: value}

    def arg(a):
        if isinstance(a, fx.Node):
            return current.get(a.name, values.get(a.name))
        if isinstance(a, (list, tuple)):
            return type(a)(arg(b) for b in a)
        return a

    for node in chain:
        if node.target in SCALES | SHIFTS:
            source = next(a for a in node.args if isinstance(a, fx.Node) and a.name in current)
            current[node.name] = torch.broadcast_to(current[source.name],
                                                    values[node.name].shape)
            continue
        current[node.name] = node.target(*[arg(a) for a in node.args],
                                         **{k: arg(v) for k, v in node.kwargs.items()})
    return current[chain[-1].name] if chain else value


def _rows(node: fx.Node, values: dict) -> tuple[fx.Node, list, torch.Tensor] | None:
    """(Linear, the ops after it, per head the Linear's output features it owns [H, d])."""
    found = _chain_back(node)
    if found is None:
        return None
    linear, chain = found
    out = values[linear.name]
    index = torch.arange(out.shape[-1], dtype=torch.float64).expand(out.shape).contiguous()
    laid = _replayed(chain, linear, index, values)
    if laid.ndim != 4:
        return None
    heads = laid[0].permute(0, 2, 1)  # [H, d, tokens]
    if not bool((heads == heads[..., :1]).all()):  # every token: the same features
        return None
    return linear, chain, heads[..., 0].long()


def _heads(gm, q, k, v, out, path, values) -> Heads | None:
    """The heads of one attention; `path` runs from q @ kᵀ to the softmax (empty for SDPA)."""
    found = [_rows(t, values) for t in (q, k, v)]
    if any(f is None for f in found):
        return None
    after = _chain_forward(out)
    if after is None:
        return None
    proj, out_chain = after
    (lq, cq, rq), (lk, ck, rk), (lv, cv, rv) = found
    h, d = rq.shape
    if rk.shape[0] < h:  # SDPA's enable_gqa repeats each k/v head for its query heads
        if h % rk.shape[0] or rv.shape != rk.shape:
            return None
        rk, rv = (r.repeat_interleave(h // r.shape[0], 0) for r in (rk, rv))
    # grouped-query attention: q head j*g + r reads k/v head j (k/v rows repeated)
    kv_of = [next(i for i in range(h) if torch.equal(rk[i], rk[j])) for j in range(h)]
    units = sorted(set(kv_of))
    g = h // len(units)
    if any(kv_of[j] != units[j // g] for j in range(h)) or not torch.equal(rk, rk[kv_of]) or \
            not torch.equal(rv, rv[kv_of]):
        return None
    y = values[out.name]
    ids = torch.arange(h * d, dtype=torch.float64).reshape(1, h, 1, d).expand(y.shape)
    ids = ids.contiguous()
    columns = _replayed(out_chain, out, ids, values)
    flat = columns.reshape(-1, columns.shape[-1]) if columns.ndim >= 2 else None
    if flat is None or not bool((flat == flat[:1]).all()):
        return None
    by_head = flat[0].long()  # proj input column -> h*d + e
    order = torch.argsort(by_head)
    if not torch.equal(by_head[order], torch.arange(h * d)):
        return None
    if any(len(linear.args[1].users) != 1 for linear in (lq, lk, lv, proj)):
        return None  # a weight another layer shares
    extras = _read_only_by_attention((q, k, v), out, cq + ck + cv)
    if extras is None:
        return None
    heads_at = _head_ids(path, h, values) if path else \
        _sdpa_head_ids(out, values[q.name], values[k.name])
    tables, table_sizes, table_chains = [], set(), []  # per-head parameters the scores read
    for extra, reader in extras:
        value = values.get(extra.name)
        if reader.name not in heads_at:  # SDPA's own mask: per head if [..., heads, T, T]
            shape = getattr(value, "shape", ())
            if len(shape) >= 4 and shape[-3] != 1:
                return None
        elif isinstance(value, torch.Tensor) and _varies_by_head(value, heads_at[reader.name]):
            table = _table(extra, heads_at[reader.name], len(units), values)
            if table is None:
                return None  # a per-head mask or bias computed from the input
            tables.append(table[0])
            table_sizes |= table[1]
            table_chains += table[2]
    pieces = []
    firsts = {c[0].name for c in (cq, ck, cv) if c}
    for linear, rows in ((lq, rq), (lk, rk[units]), (lv, rv[units])):
        piece = _slice(linear.args[1].target, rows.reshape(len(units), -1))
        if piece is None or any(u.name not in firsts for u in linear.users):
            return None  # its rows are laid out otherwise, or read by something else too
        pieces.append((linear, piece))
    proj_piece = _slice(proj.args[1].target, order.reshape(len(units), -1), axis=1)
    if proj_piece is None or len(proj.args) < 2:
        return None
    unit_of = {}  # per Linear: the unit each output feature belongs to (-1: none)
    for linear, piece in pieces:
        owner = unit_of.setdefault(linear.name, torch.full((values[linear.name].shape[-1],), -1))
        owner[piece.entries(torch.arange(len(units)))] = \
            torch.arange(len(units)).repeat_interleave(piece.block)
    reshapes = set()
    for linear, chain in ((lq, cq), (lk, ck), (lv, cv)):
        out_size = values[linear.name].shape
        index = torch.arange(out_size[-1], dtype=torch.float64).expand(out_size).contiguous()
        reshapes |= _written(chain, linear, index, values, unit_of[linear.name], len(units))
    reshapes |= _written(out_chain, out, ids, values,
                         torch.arange(h * d) // (g * d), len(units))
    if path:  # views of the scores that write the head count (Swin's per-window mask)
        reshapes |= _written(list(path[1:]), path[0], heads_at[path[0].name], values,
                             torch.arange(h) // g, len(units))
    reshapes |= table_sizes
    on_the_way = {n.name for n in cq + ck + cv + out_chain + list(path) + table_chains}
    nodes = {n.name: n for n in gm.graph.nodes}
    shared = {name for name, _, _ in reshapes if nodes[name].target is operator.mul
              and not {u.name for u in nodes[name].users} <= on_the_way}
    if any(u.name not in on_the_way and u.target not in RESHAPES
           for name in shared for u in nodes[name].users):
        return None  # a size with the head count in it is used by more than reshapes
    owned = {name: _own_size(gm, nodes[name], on_the_way) for name in shared}
    reshapes = {(owned.get(name, name), position, per_unit)
                for name, position, per_unit in reshapes}
    weights = tuple(piece for _, piece in pieces)
    biases = tuple(Slice(linear.args[2].target, 0, piece.block, piece.offset)
                   for linear, piece in pieces if len(linear.args) > 2 and linear.args[2] is not None)
    reader = proj.args[0]
    group = PrunableGroup(
        name=lq.name,  # the node; `trace` names it after the layer
        size=len(units), weights=weights, biases=biases, activations=(reader.name,),
        consumers=(proj_piece,), consumer_biases=(), consumer_nodes=(proj.name,),
        exact_constants=False, kinds=("heads",), axes=(_ndim(reader) - 1,),
        offsets=(proj_piece.offset,), blocks=(proj_piece.block,), carried=tuple(tables),
        reshapes=tuple(sorted(reshapes)))
    return Heads(group, tuple(dict.fromkeys([lq.name, lk.name, lv.name, proj.name])))


def _read_only_by_attention(qkv: tuple[fx.Node, ...], out: fx.Node, chains: list[fx.Node]
                            ) -> list[tuple[fx.Node, fx.Node]] | None:
    """If nothing but the attention reads q, k, v, what is computed from them on the way to
    `out` (scores, probabilities), and the ops that carry them from their Linears: what else
    the attention reads (masks, position biases), each with the node that reads it; else
    None."""
    before = set()  # everything `out` is computed from, back to q, k and v
    todo = [out]
    while todo:
        node = todo.pop()
        if node in before:
            continue
        before.add(node)
        if node not in qkv:
            todo += [a for a in node.all_input_nodes]
    inside = set()  # of those, what q, k or v flows into
    todo = list(qkv)
    while todo:
        node = todo.pop()
        if node in inside or node not in before:
            continue
        inside.add(node)
        todo += list(node.users)
    allowed = inside | set(chains)
    if any(not set(node.users) <= allowed for node in (inside - {out}) | set(chains)):
        return None
    return [(a, node) for node in inside - set(qkv) for a in node.all_input_nodes
            if a not in inside]


def _own_size(gm: fx.GraphModule, size: fx.Node, on_the_way: set[str]) -> str:
    """A copy of the size `size` (batch x heads) for the reshapes on one attention's way, where
    torch.export computes it once for every attention of the model: each attention's head
    count then changes alone."""
    with gm.graph.inserting_after(size):
        own = gm.graph.call_function(size.target, size.args, size.kwargs)
    own.meta = dict(size.meta)
    for user in [u for u in size.users if u.name in on_the_way]:
        user.replace_input_with(size, own)
    gm.recompile()
    return own.name


def _head_ids(path: tuple[fx.Node, ...], h: int, values: dict) -> dict[str, torch.Tensor]:
    """Per node of `path` (q @ kᵀ, [batch, heads, queries, keys], then the ops to the
    softmax), the head of each of its entries; empty if there is no such path."""
    scores = values[path[0].name] if path else None
    if scores is None or scores.ndim != 4 or scores.shape[1] != h:
        return {}
    ids = torch.arange(h, dtype=torch.float64).reshape(1, h, 1, 1).expand(scores.shape)
    ids = ids.contiguous()
    return {node.name: _replayed(list(path[1:i + 1]), path[0], ids, values)
            for i, node in enumerate(path)}


def _sdpa_head_ids(sdpa: fx.Node, q: object, k: object) -> dict[str, torch.Tensor]:
    """For `scaled_dot_product_attention`, the head of each entry of its scores [batch, heads,
    queries, keys], where its `attn_mask` is added; empty for any other node."""
    if sdpa.target is not SDPA or not isinstance(q, torch.Tensor) or q.ndim != 4:
        return {}
    h = q.shape[1]
    ids = torch.arange(h, dtype=torch.float64).reshape(1, h, 1, 1)
    return {sdpa.name: ids.expand(q.shape[0], h, q.shape[2], k.shape[-2]).contiguous()}


def _varies_by_head(extra: torch.Tensor, heads: torch.Tensor) -> bool:
    """Whether `extra`, broadcast to the shape of `heads` (each entry's head), differs along
    an axis the heads change along."""
    if extra.ndim > heads.ndim:
        return True
    shape = (1,) * (heads.ndim - extra.ndim) + tuple(extra.shape)
    return any(shape[a] > 1 and bool((heads.movedim(a, 0) != heads.movedim(a, 0)[:1]).any())
               for a in range(heads.ndim))


def _table(extra: fx.Node, heads: torch.Tensor, units: int, values: dict
           ) -> tuple[Slice, set, list[fx.Node]] | None:
    """The entries each unit owns of the parameter `extra` is read from through moves and
    gathers (a relative position bias table [positions, heads], indexed by position pairs),
    if every head reads its own entries along one axis of it, with the sizes on the way that
    write the head count and those ops; else None."""
    chain = []
    node = extra
    while node.op == "call_function" and (node.target in MOVES or node.target in GATHERS):
        chain.append(node)
        node = node.args[0]
        if not isinstance(node, fx.Node):
            return None
    if node.op != "get_attr" or any(len(n.users) != 1 for n in [node, *chain]):
        return None  # computed from the input, or read by something else too
    chain.reverse()
    table = values[node.name]
    for axis in range(table.ndim):
        shape = [-1 if i == axis else 1 for i in range(table.ndim)]
        index = torch.arange(table.shape[axis], dtype=torch.float64).reshape(shape)
        laid = _replayed(chain, node, index.expand(table.shape).contiguous(), values)
        if laid.ndim > heads.ndim:
            return None
        laid = torch.broadcast_to(laid, heads.shape)
        owned = [laid[heads == j] for j in range(int(heads.max()) + 1)]
        if not all(bool((e == e[:1]).all()) for e in owned):
            continue
        rows = torch.stack([e[0] for e in owned]).long().reshape(units, -1)
        found = _slice(node.target, rows, axis)
        if found is None:
            continue
        unit_of = torch.full((table.shape[axis],), -1)
        unit_of[found.entries(torch.arange(units))] = \
            torch.arange(units).repeat_interleave(found.block)
        start = index.expand(table.shape).contiguous()
        return found, _written(chain, node, start, values, unit_of, units), chain
    return None


def _written(chain: list[fx.Node], start: fx.Node, index: torch.Tensor, values: dict,
             unit_of: torch.Tensor, units: int) -> set[tuple[str, int, int]]:
    """(node, position, entries per unit) for every size on `chain` that writes an axis the
    units lie along as a number (the head count, or heads x head dim): a view's or
    unflatten's size list at `position`, or, where the count is multiplied into the batch size
    (`batch * heads`), the number at `position` in that product's arguments."""
    found = set()
    for i, node in enumerate(chain):
        sizes = _sizes(node)
        if sizes is None:
            continue
        split = node.target in SPLITS  # sizes along one axis of its input, not a shape
        laid = _replayed(chain[:i + (not split)], start, index, values)  # a split: its input
        owner = unit_of[laid.long().clamp_min(0)]
        first = 0
        if node.target is aten.unflatten.int:  # its dim counts the axes before it
            first = node.args[1] % (laid.ndim - len(sizes) + 1)
        for position, size in enumerate(sizes):
            written = (node.name, position, size)
            if isinstance(size, fx.Node):
                written = _product(size)
            if written is None or written[2] % units or written[2] <= 1:
                continue
            axis = node.args[2] % laid.ndim if split else first + position
            moved = owner.movedim(axis, 0)
            if not bool((moved != moved[:1]).any()):
                continue  # the units do not change along this axis
            found.add((written[0], written[1], written[2] // units))
    return found


def _sizes(node: fx.Node) -> list | None:
    """The size list a reshape, expand or unflatten writes, or the sizes a split cuts (GPT-2
    splits its fused qkv by width), else None."""
    if node.target is aten.split.Tensor and isinstance(node.args[1], int):
        return [node.args[1]]
    at = 2 if node.target is aten.unflatten.int else \
        1 if node.target in RESHAPES or node.target in SPLITS else None
    if at is None or not isinstance(node.args[at], (list, tuple)):
        return None
    return list(node.args[at])


def _product(node: fx.Node) -> tuple[str, int, int] | None:
    """(node, position, number) for a size computed as `batch * number`; None otherwise."""
    if node.target is not operator.mul:
        return None
    numbers = [(i, a) for i, a in enumerate(node.args) if isinstance(a, int)]
    if len(numbers) != 1 or len(node.args) != 2:
        return None
    return (node.name, *numbers[0])


def _ndim(node: fx.Node) -> int:
    val = node.meta.get("val")
    return 2 if val is None else val.ndim


def _slice(param: str, rows: torch.Tensor, axis: int = 0) -> Slice | None:
    """The Slice whose unit u owns `rows[u]`, if they are consecutive blocks."""
    block, offset = rows.shape[1], int(rows[0, 0])
    expected = offset + torch.arange(rows.numel()).reshape(rows.shape)
    return Slice(param, axis, block, offset) if torch.equal(rows, expected) else None
