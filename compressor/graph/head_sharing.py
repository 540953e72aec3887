"""Which query heads share which key/value heads, so what a unit of an attention is: a k/v
head with the q heads that read it (grouped-query attention, k/v repeated or SDPA's
`enable_gqa`), or, where one k/v head serves them all (multi-query attention), each q head
alone, k and v left whole."""

from __future__ import annotations

import torch
from torch import fx

from .replay import RESHAPES

aten = torch.ops.aten


def units_of(h: int, q: tuple, k: tuple, v: tuple, kv: tuple[fx.Node, ...], values: dict
             ) -> tuple[list[int], int, tuple, set[tuple[str, int, int]]] | None:
    """(the units, q heads per unit, the (Linear, rows per head) whose rows the units own,
    the sizes that write the q head count on k's and v's way) for an attention of `h` q
    heads; q, k, v: (path, rows per head, k's and v's repeated for every q head); kv: the
    nodes the attention reads k and v from. None where the heads share k/v heads otherwise."""
    (pq, rq), (pk, rk), (pv, rv) = q, k, v
    lq, lk, lv = pq.linear, pk.linear, pv.linear
    # grouped-query attention: q head j*g + r reads k/v head j (k/v rows repeated)
    kv_of = [next(i for i in range(h) if torch.equal(rk[i], rk[j])) for j in range(h)]
    units = sorted(set(kv_of))
    g = h // len(units)
    if any(kv_of[j] != units[j // g] for j in range(h)) or not torch.equal(rk, rk[kv_of]) or \
            not torch.equal(rv, rv[kv_of]):
        return None
    pruned_rows = ((lq, rq), (lk, rk[units]), (lv, rv[units]))
    repeats = _multi_query(len(units), h, kv, values)
    if repeats is not None:  # a unit is a q head; k and v stay
        return list(range(h)), 1, ((lq, rq),), repeats
    return units, g, pruned_rows, set()


def _multi_query(kv_heads: int, h: int, kv: tuple[fx.Node, ...], values: dict
                 ) -> set[tuple[str, int, int]] | None:
    """Where one k/v head is read by every q head (Gemma-2B's multi-query attention, q made
    by a Linear of its own; Falcon-7B's, q, k and v out of one Linear, viewed [batch, tokens,
    heads + 2, d] and split by head), each q head can go alone: the sizes that write the q
    head count on k's and v's way (LLaMA's
    `repeat_kv`; none where they reach the attention with one head, broadcast or by SDPA's
    `enable_gqa`). None where that is not so."""
    if kv_heads != 1 or h == 1:
        return None
    found = set()
    for t in kv:
        value = values.get(t.name)
        if getattr(value, "ndim", 0) == 4 and value.shape[1] == 1:
            continue
        repeat = _repeat_of_one(t, h, values)
        if repeat is None:
            return None
        found |= repeat
    return found


def _repeat_of_one(node: fx.Node, h: int, values: dict) -> set[tuple[str, int, int]] | None:
    """LLaMA's `repeat_kv` of one k/v head for h q heads, x[:, :, None] expanded to [batch, 1,
    h, T, d] and viewed as [batch, h, T, d]: its two sizes h, one per q head; else None."""
    expand = node.args[0] if node.target in RESHAPES - {aten.expand.default} else None
    if not isinstance(expand, fx.Node) or expand.target is not aten.expand.default or \
            len(expand.users) != 1:
        return None
    unsqueezed = expand.args[0]
    if not isinstance(unsqueezed, fx.Node) or unsqueezed.target is not aten.unsqueeze.default \
            or unsqueezed.args[1] != 2 or len(unsqueezed.users) != 1:
        return None
    one = values.get(unsqueezed.args[0].name)
    sizes, into = expand.args[1], node.args[1]
    if getattr(one, "ndim", 0) != 4 or one.shape[1] != 1 or len(sizes) != 5 or \
            sizes[2] != h or len(into) != 4 or into[1] != h:
        return None
    return {(expand.name, 2, 1), (node.name, 1, 1)}
