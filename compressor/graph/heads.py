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
from .head_paths import head_columns, head_rows
from .head_reuses import head_count_size, reuses_of, same_for_every_head
from .head_sharing import units_of
from .head_tables import constant_tables, head_ids, own_tables, per_head_tables, sdpa_head_ids
from .ops import ACTIVATIONS, ATTENTION, IDENTITY, LINEAR, MATMUL
from .replay import MOVES, RESHAPES, SCALES, SHIFTS, slice_of, values_on, written_sizes

aten = torch.ops.aten
SDPA = ATTENTION[0]
CARRY = set(IDENTITY)  # the probabilities as they are


@dataclass(frozen=True)
class Heads:
    """One attention's heads as a group, and the reshapes that write their count."""

    group: PrunableGroup
    layers: tuple[str, ...]  # the Linear nodes whose rows or columns it prunes
    products: tuple[str, ...] = ()  # the nodes that multiply activations per head
    whole: tuple[str, ...] = ()  # the Linears of the one k/v head every q head reads


def find_heads(gm: fx.GraphModule, sample: torch.Tensor) -> list[Heads]:
    """Every attention of `gm` whose heads can be pruned, run on `sample` (one input) to read
    the layout of its q, k, v and output."""
    constant_tables(gm)
    own_tables(gm)
    cores = [((n,), tuple(n.args[:3]), n, ()) for n in gm.graph.nodes if n.target is SDPA] + \
        _explicit_cores(gm)
    if not cores:
        return []
    values = values_on(gm, sample[:1])
    found = []
    for products, (q, k, v), out, path in cores:
        heads = _heads(gm, q, k, v, out, path, values)
        if heads is not None:
            found.append(replace(heads, products=tuple(n.name for n in products) +
                                 heads.products))
    return found


def _explicit_cores(gm: fx.GraphModule) -> list[tuple[tuple, tuple, fx.Node, tuple]]:
    """softmax(q @ kᵀ ...) @ v written out: ((q @ kᵀ, its product with v), (q, k, v),
    output, the ops from q @ kᵀ to the softmax: scales, biases, masks and the views between
    them, as Swin's shifted windows add their mask per window, and functions of each score,
    as Gemma-2 caps its scores by c · tanh(s / c))."""
    found = []
    for soft in (n for n in gm.graph.nodes if n.target in ATTENTION and n.target is not SDPA):
        path = _path_back(soft.args[0], SCALES | SHIFTS | RESHAPES | set(ACTIVATIONS))
        scores = path[0] if path else None
        probs = soft  # through dropout at eval, copies, casts (BERT, GPT-2) and views
        while len(probs.users) == 1 and next(iter(probs.users)).target in CARRY | RESHAPES:
            probs = next(iter(probs.users))  # (DeBERTa's [batch x heads, queries, keys])
        outs = [u for u in probs.users if u.target in MATMUL and u.args[0] is probs]
        if scores is None or scores.target not in MATMUL or len(outs) != 1:
            continue
        q, kt = scores.args[:2]
        while isinstance(kt, fx.Node) and (kt.target in SCALES or kt.target in CARRY):
            kt = kt.args[0]  # kᵀ / √d (DeBERTa), kᵀ made contiguous (GCViT)
        if isinstance(kt, fx.Node) and kt.target is aten.permute.default:
            kt = _as_transpose(gm, kt)  # LeViT's k.permute(0, 2, 3, 1): heads moved, then ᵀ
        k = kt.args[0] if isinstance(kt, fx.Node) and kt.target in (aten.transpose.int,) else None
        if k is not None:
            found.append(((scores, outs[0]), (q, k, outs[0].args[1]), outs[0], tuple(path)))
    return found


def _probabilities(out: fx.Node) -> tuple[fx.Node, list[fx.Node]]:
    """The softmax whose probabilities AV (`out`) reads, and the ops between them (dropout,
    casts, views)."""
    chain, node = [], out.args[0]
    while node.target in CARRY | RESHAPES:
        chain.insert(0, node)
        node = node.args[0]
    return node, chain


def _as_transpose(gm: fx.GraphModule, permute: fx.Node) -> fx.Node:
    """A permute whose last two axes come out swapped, rewritten as the permute that keeps
    them in order followed by a transpose of the last two (the same values), so that the
    tensor before the transpose is k laid out [batch, heads, tokens, d]; `permute` itself
    where it is not so."""
    dims = list(permute.args[1])
    if len(dims) < 2 or len(permute.users) != 1 or dims[-1] % len(dims) > dims[-2] % len(dims):
        return permute
    dims[-2], dims[-1] = dims[-1], dims[-2]
    with gm.graph.inserting_before(permute):
        kept = gm.graph.call_function(aten.permute.default, (permute.args[0], dims))
        swapped = gm.graph.call_function(aten.transpose.int, (kept, -2, -1))
    for node, val in ((kept, permute.meta.get("val")), (swapped, permute.meta.get("val"))):
        if val is not None:
            node.meta["val"] = val.transpose(-2, -1) if node is kept else val
    permute.replace_all_uses_with(swapped)
    gm.graph.erase_node(permute)
    gm.recompile()
    return swapped


def _path_back(node: object, ops: set) -> list[fx.Node]:
    """The node `node` is computed from through `ops` (each followed by its first tensor
    argument), then those ops in order; empty if that is not a node."""
    path = []
    while isinstance(node, fx.Node) and node.target in ops:
        path.append(node)
        node = next((a for a in node.args if isinstance(a, fx.Node)), None)
    return [node, *path[::-1]] if isinstance(node, fx.Node) else []


def _chain_forward(node: fx.Node) -> tuple[fx.Node, list[fx.Node]] | None:
    """The Linear that reads `node` through ops that only move entries or act on each entry
    alone (an activation), and those ops."""
    chain = []
    while True:
        users = list(node.users)
        if len(users) != 1:
            return None
        user = users[0]
        if user.target is LINEAR and user.args[0] is node:
            return user, chain
        if user.target not in MOVES and user.target not in ACTIVATIONS or \
                user.args[0] is not node:  # (LeViT's hardswish before its projection)
            return None
        chain.append(user)
        node = user


def _heads(gm, q, k, v, out, path, values) -> Heads | None:
    """The heads of one attention; `path` runs from q @ kᵀ to the softmax (empty for SDPA)."""
    found = [head_rows(t, values) for t in (q, k, v)]
    if any(f is None for f in found):
        return None
    after = _chain_forward(out)
    if after is None:
        return None
    proj, out_chain = after
    (pq, rq), (pk, rk), (pv, rv) = found
    lq, lk, lv = pq.linear, pk.linear, pv.linear
    on_paths = [*pq.nodes, *pk.nodes, *pv.nodes]
    h = rq.shape[0]
    if rk.shape[0] < h:  # SDPA's enable_gqa repeats each k/v head for its query heads
        if h % rk.shape[0] or rv.shape != rk.shape:
            return None
        rk, rv = (r.repeat_interleave(h // r.shape[0], 0) for r in (rk, rv))
    shared = units_of(h, (pq, rq), (pk, rk), (pv, rv), (k, v), values)
    if shared is None:
        return None
    units, g, pruned_rows, repeats = shared
    d = rv.shape[1]  # v's head size, which may differ from q's and k's (LeViT's)
    found_columns = head_columns(out, out_chain, h, d, values)
    if found_columns is None:
        return None
    by_head, ids = found_columns  # proj input column -> h*d + e; the ids that show it
    order = torch.argsort(by_head)
    if not torch.equal(by_head[order], torch.arange(h * d)):
        return None
    reuses = [r for linear, rows in ((lq, rq), (lk, rk)) for r in reuses_of(linear, rows, values)]
    if any(r is None for r in reuses):
        return None
    if any(len(linear.args[1].users) != 1 + sum(r.owner is linear for r in reuses)
           for linear in (lq, lk, lv, proj)):
        return None  # a weight another layer shares
    extras = _read_only_by_attention((q, k, v), out, on_paths)
    if extras is None:
        return None
    read = {(r.end, r.product) for r in reuses}
    if any(r.product.args[0] not in (q, k) or (r.end, r.product) not in extras for r in reuses):
        return None  # a position term multiplies something other than this attention's q, k
    extras = [(a, node) for a, node in extras if (a, node) not in read]
    same = [(a, node) for a, node in extras if same_for_every_head(a, h, values)]
    index_sizes = {head_count_size(a, h, len(units)) for a, _ in same}
    if None in index_sizes:
        return None  # its size is the head count, written where it cannot be followed
    extras = [e for e in extras if e not in same]
    heads_at = head_ids(path, h, values) if path else \
        sdpa_head_ids(out, values[q.name], values[k.name])
    found_tables = per_head_tables(extras, heads_at, len(units), values)
    if found_tables is None:
        return None  # a per-head mask or bias computed from the input
    tables, table_sizes, table_chains = found_tables
    firsts = {p.runs[0][1][0].name for p in (pq, pk, pv)}
    pieces = _pieces(pruned_rows, len(units))
    if pieces is None or any(u.name not in firsts for linear, _ in pieces for u in linear.users):
        return None  # its rows are laid out otherwise, or read by something else too
    proj_piece = slice_of(proj.args[1].target, order.reshape(len(units), -1), axis=1)
    if proj_piece is None or len(proj.args) < 2:
        return None
    unit_of = {}  # per Linear: the unit each output feature belongs to (-1: none)
    for linear, piece in pieces:
        owner = unit_of.setdefault(linear.name, torch.full((values[linear.name].shape[-1],), -1))
        owner[piece.entries(torch.arange(len(units)))] = \
            torch.arange(len(units)).repeat_interleave(piece.block)
    reshapes = set()
    for p in (p for p in (pq, pk, pv) if p.linear.name in unit_of):
        out_size = values[p.linear.name].shape
        index = torch.arange(out_size[-1], dtype=torch.float64).expand(out_size).contiguous()
        reshapes |= p.written_sizes(index, values, unit_of[p.linear.name], len(units))
    reshapes |= written_sizes(out_chain, out, ids, values,
                              torch.arange(h * d) // (g * d), len(units))
    if path:  # views of the scores that write the head count (Swin's per-window mask), and
        # of the probabilities (BLOOM's [batch x heads, queries, keys] before AV)
        reshapes |= written_sizes(list(path[1:]), path[0], heads_at[path[0].name], values,
                                  torch.arange(h) // g, len(units))
        soft, probs = _probabilities(out)
        reshapes |= written_sizes(probs, soft, heads_at[path[-1].name], values,
                                  torch.arange(h) // g, len(units))
        path = (*path, *probs)
    for r in reuses:  # the same rows run on positions: their views write the head count too
        out_size = values[r.linear.name].shape
        index = torch.arange(out_size[-1], dtype=torch.float64).expand(out_size).contiguous()
        reshapes |= written_sizes(r.chain, r.linear, index, values, unit_of[r.owner.name],
                                  len(units))
    reshapes |= table_sizes | {found for found in index_sizes if found} | repeats
    on_the_way = {n.name for n in on_paths + out_chain + list(path) + table_chains +
                  [n for r in reuses for n in (r.linear, *r.chain)] + [a for a, _ in same]}
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
                   for linear, piece in pieces
                   if len(linear.args) > 2 and linear.args[2] is not None)
    reader = proj.args[0]
    group = PrunableGroup(
        name=lq.name,  # the node; `trace` names it after the layer
        size=len(units), weights=weights, biases=biases, activations=(reader.name,),
        consumers=(proj_piece,), consumer_biases=(), consumer_nodes=(proj.name,),
        exact_constants=False, kinds=("heads",), axes=(_ndim(reader) - 1,),
        offsets=(proj_piece.offset,), blocks=(proj_piece.block,), carried=tuple(tables),
        reshapes=tuple(sorted(reshapes)))
    pruned = [linear for linear, _ in pruned_rows]  # q's first: the group is named after it
    return Heads(group, tuple(dict.fromkeys([*(linear.name for linear in pruned),
                                             *(r.linear.name for r in reuses), proj.name])),
                 tuple(r.product.name for r in reuses),
                 tuple(dict.fromkeys(n.name for n in (lk, lv) if n not in pruned)))


def _pieces(rows: tuple[tuple[fx.Node, torch.Tensor], ...],
            units: int) -> list[tuple[fx.Node, Slice]] | None:
    """Per Linear, the rows each head owns as a Slice: q's, k's and v's apart (a fused qkv
    laid out [q | k | v], each by head), or one block per head where one Linear makes several
    of them with each head's rows side by side (TinyViT's and LeViT's qkv, viewed as
    [heads, q k v] and split; LeViT's downsampling kv beside its own q Linear); None if they
    are laid out otherwise."""
    by_linear: dict[fx.Node, list[torch.Tensor]] = {}
    for linear, r in rows:
        by_linear.setdefault(linear, []).append(r.reshape(units, -1))
    pieces = []
    for linear, owned in by_linear.items():
        apart = [slice_of(linear.args[1].target, r) for r in owned]
        if all(piece is not None for piece in apart):
            pieces += [(linear, piece) for piece in apart]
            continue
        side_by_side = torch.cat(owned, dim=1).sort(dim=1).values
        piece = slice_of(linear.args[1].target, side_by_side)
        if piece is None:
            return None
        pieces.append((linear, piece))
    return pieces


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


def _ndim(node: fx.Node) -> int:
    val = node.meta.get("val")
    return 2 if val is None else val.ndim


