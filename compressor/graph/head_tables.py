"""Per-head biases on attention scores: a parameter with a value per head (a relative position
table [positions, heads] read by position pairs, T5's or ALiBi's biases) that is added to the
scores or given to `scaled_dot_product_attention` as its `attn_mask`. Which of its entries
each head reads is found by replaying the ops between it and the scores on its own indices
(`graph.replay`), so that removing a head removes its entries."""

from __future__ import annotations

import torch
from torch import fx

from .constants import drop_unread, fold_operand, value_of
from .groups import Slice
from .ops import ATTENTION, CAT
from .replay import (GATHERS, MASKED, MOVES, RESAMPLES, RESHAPES, SCALES, SHIFTS, replayed,
                     slice_of, written_sizes)

SDPA = ATTENTION[0]
TABLE_MOVES = MOVES | {torch.ops.aten.repeat.default}  # a table repeated over the batch


def per_head_tables(extras: list[tuple[fx.Node, fx.Node]], heads_at: dict[str, torch.Tensor],
                    units: int, values: dict) -> tuple[list[Slice], set, list[fx.Node]] | None:
    """Of what an attention reads besides q, k and v (`extras`, each with the node that reads
    it; `heads_at`: each entry's head at the nodes that add to the scores), the slices of the
    parameters with a value per head, the sizes on their way that write the head count and
    those ops; None where something with a value per head is not such a parameter."""
    tables, sizes, chains = [], set(), []
    merged = any(ids.ndim == 3 for ids in heads_at.values())  # [batch x heads, T, T]
    for extra, reader in extras:
        value = values.get(extra.name)
        if reader.name not in heads_at:  # read elsewhere: per head if [..., heads, T, T]
            shape = getattr(value, "shape", ())  # (or, heads in the batch axis of the one
            if len(shape) >= 4 and shape[-3] != 1 or \
                    merged and len(shape) == 3 and shape[0] != 1:  # input, [heads, ., .])
                return None
        elif isinstance(value, torch.Tensor) and varies_by_head(value, heads_at[reader.name]):
            found = table_slice(extra, heads_at[reader.name], units, values)
            if found is None:
                return None
            tables.append(found[0])
            sizes |= found[1]
            chains += found[2]
    return tables, sizes, chains


def constant_tables(gm: fx.GraphModule) -> list[str]:
    """Make a bias on the attention scores that the graph computes from numbers alone (BLOOM's
    ALiBi: a slope per head times each key's position, then repeated over the batch) a buffer,
    so that it reads as a table with a value per head. Returns the new buffers' names."""
    made = []
    for reader in [n for n in gm.graph.nodes if n.target in SHIFTS]:
        for operand in [a for a in reader.args[:2] if isinstance(a, fx.Node)]:
            node = operand
            while node.target in TABLE_MOVES and isinstance(node.args[0], fx.Node) and \
                    not _from_numbers(node):
                node = node.args[0]
            if not _from_numbers(node) or not _adds_to_scores(reader, operand) or \
                    not _by_head(value_of(gm, node)):
                continue
            name = f"{node.name}_table"
            while hasattr(gm, name):
                name += "_"
            for user in list(node.users):
                if fold_operand(gm, user, node, lambda: name, buffer=True):
                    made.append(name)
                    break
    if made:
        drop_unread(gm)
    return made


def _by_head(value: object) -> bool:
    """Whether a bias on the scores may hold a value per head: it has an axis before the
    queries and keys longer than 1 (a causal mask [1, 1, T, T] has none, and stays as the
    graph computes it rather than a table of T² numbers in the file)."""
    return isinstance(value, torch.Tensor) and value.ndim >= 3 and \
        any(n > 1 for n in value.shape[:-2])


def _from_numbers(node: fx.Node) -> bool:
    """Whether `node` is computed from numbers alone: no input, no tensor of the model."""
    todo, seen = [node], set()
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op != "call_function" or not isinstance(n.target, torch._ops.OpOverload):
            return False
        todo += n.all_input_nodes
    return True


def own_tables(gm: fx.GraphModule) -> list[str]:
    """Give each attention its own copy of a table it shares with others (MPNet computes its
    relative position bias [heads, T, T] once from one table and adds it to every layer's
    scores), so that each attention's heads can go alone: the table and the moves and
    gathers from it to the scores are copied for every reader but the first (the copies are
    trained apart by fine-tuning). Returns the new tables' names."""
    names = gm.meta.setdefault("original_names", {})
    made = []
    for table in [n for n in gm.graph.nodes if n.op == "get_attr"]:
        chain, node = [], table
        while len(node.users) == 1:
            user = next(iter(node.users))
            if (user.target in TABLE_MOVES or user.target in GATHERS) and user.args[0] is node or \
                    user.target is MASKED and user.args[1] is node:
                chain.append(user)
                node = user
                continue
            break
        readers = list(node.users)
        if not chain or len(readers) < 2 or not all(_adds_to_scores(r, node) for r in readers):
            continue
        value = getattr(gm, table.target)
        for k, reader in enumerate(readers[1:], start=1):
            name = f"{table.target}_{k}"
            while hasattr(gm, name):
                name += "_"
            copy = value.detach().clone()
            if table.target in gm._parameters:
                gm.register_parameter(name, torch.nn.Parameter(copy))
            else:
                gm.register_buffer(name, copy)
            names[name] = f"{names.get(table.target, table.target)}.{k}"
            with gm.graph.inserting_before(reader):
                mapping = {table: gm.graph.get_attr(name)}
                mapping[table].meta = dict(table.meta)
                for op in chain:
                    mapping[op] = gm.graph.node_copy(op, lambda n: mapping.get(n, n))
            reader.replace_input_with(node, mapping[node])
            made.append(name)
    if made:
        gm.graph.lint()
        gm.recompile()
    return made


def _adds_to_scores(reader: fx.Node, value: fx.Node) -> bool:
    """Whether `reader` adds `value` to attention scores on their way to the softmax (or is
    the attention, reading it as its mask)."""
    node = reader
    while node.target is not SDPA and len(node.users) == 1 and (
            node.target in SHIFTS | SCALES | RESHAPES or node.target in MOVES or
            node.target is MASKED):
        value, node = node, next(iter(node.users))
    if node.target is SDPA:  # as its mask
        return len(node.args) > 3 and node.args[3] is value or \
            node.kwargs.get("attn_mask") is value
    return node.target in ATTENTION and node is not reader


def head_ids(path: tuple[fx.Node, ...], h: int, values: dict) -> dict[str, torch.Tensor]:
    """Per node of `path` (q @ kᵀ, [batch, heads, queries, keys] or, for the one input it is
    run on, [heads, queries, keys], then the ops to the softmax), the head of each of its
    entries; empty if there is no such path."""
    scores = values[path[0].name] if path else None
    if scores is None or scores.ndim not in (3, 4) or scores.shape[-3] != h:
        return {}  # 3 axes: heads in the batch axis, [batch x heads, queries, keys]
    ids = torch.arange(h, dtype=torch.float64).reshape(h, 1, 1).expand(scores.shape)
    ids = ids.contiguous()
    return {node.name: replayed(list(path[1:i + 1]), path[0], ids, values)
            for i, node in enumerate(path)}


def sdpa_head_ids(sdpa: fx.Node, q: object, k: object) -> dict[str, torch.Tensor]:
    """For `scaled_dot_product_attention`, the head of each entry of its scores [batch, heads,
    queries, keys], where its `attn_mask` is added; empty for any other node."""
    if sdpa.target is not SDPA or not isinstance(q, torch.Tensor) or q.ndim != 4:
        return {}
    h = q.shape[1]
    ids = torch.arange(h, dtype=torch.float64).reshape(1, h, 1, 1)
    return {sdpa.name: ids.expand(q.shape[0], h, q.shape[2], k.shape[-2]).contiguous()}


def varies_by_head(extra: torch.Tensor, heads: torch.Tensor) -> bool:
    """Whether `extra`, broadcast to the shape of `heads` (each entry's head), differs along
    an axis the heads change along."""
    if extra.ndim > heads.ndim:
        return True
    shape = (1,) * (heads.ndim - extra.ndim) + tuple(extra.shape)
    return any(shape[a] > 1 and bool((heads.movedim(a, 0) != heads.movedim(a, 0)[:1]).any())
               for a in range(heads.ndim))


def table_slice(extra: fx.Node, heads: torch.Tensor, units: int, values: dict
                ) -> tuple[Slice, set, list[fx.Node]] | None:
    """The entries each unit owns of the parameter `extra` is read from through moves and
    gathers (a relative position bias table [positions, heads], indexed by position pairs),
    if every head reads its own entries along one axis of it, with the sizes on the way that
    write the head count and those ops; else None."""
    found = _from_table(extra, heads, values)
    if found is None:
        return None
    node, chain = found
    table = values[node.name]
    for axis in range(table.ndim):
        shape = [-1 if i == axis else 1 for i in range(table.ndim)]
        index = torch.arange(table.shape[axis], dtype=torch.float64).reshape(shape)
        start = index.expand(table.shape).contiguous()
        laid = replayed(chain, node, start, values)
        if laid.ndim > heads.ndim:
            return None
        laid = torch.broadcast_to(laid, heads.shape).round()  # a resize's weights sum to 1
        owned = [laid[heads == j] for j in range(int(heads.max()) + 1)]
        if not all(bool((e == e[:1]).all()) for e in owned):
            continue
        rows = torch.stack([e[0] for e in owned]).long().reshape(units, -1)
        found = slice_of(node.target, rows, axis)
        if found is None:
            continue
        unit_of = torch.full((table.shape[axis],), -1)
        unit_of[found.entries(torch.arange(units))] = \
            torch.arange(units).repeat_interleave(found.block)
        return found, written_sizes(chain, node, start, values, unit_of, units), chain
    return None


def _from_table(extra: fx.Node, heads: torch.Tensor, values: dict
                ) -> tuple[fx.Node, list[fx.Node]] | None:
    """The parameter `extra` is read from and the ops between them, in graph order: moves,
    gathers, resizes over positions and masks, a `cat` of pieces of the table (HF's BEiT
    resizes the positions of its table and joins back the class token's rows), a sum with
    something the same for every head (a padding mask). None if `extra` reads no parameter
    or another value that varies by head, or if anything else reads the table or the ops."""
    ops, tables, seen = [], [], set()
    todo = [extra]
    while todo:
        node = todo.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        if node.op == "get_attr":
            tables.append(node)
            continue
        if node.op != "call_function":
            return None
        if node.target in TABLE_MOVES or node.target in GATHERS or node.target in RESAMPLES:
            carried = [node.args[0]]
        elif node.target is MASKED:
            carried = [node.args[1]]
        elif node.target in CAT:
            carried = list(node.args[0])
        elif node.target in SHIFTS:  # the table's side; the other the same for every head
            operands = [a for a in node.args[:2] if isinstance(a, fx.Node)]
            carried = [a for a in operands if varies_by_head(values[a.name], heads)]
            if len(carried) != 1:
                return None
        else:
            return None
        if not all(isinstance(a, fx.Node) for a in carried):
            return None
        ops.append(node)
        todo += carried
    if len(tables) != 1 or len(extra.users) != 1 or any(
            u.name not in seen for n in [*tables, *ops] if n is not extra for u in n.users):
        return None  # computed from the input, or read by something else too
    order = {n.name: i for i, n in enumerate(extra.graph.nodes)}
    return tables[0], sorted(ops, key=lambda n: order[n.name])
