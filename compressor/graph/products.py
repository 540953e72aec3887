"""Products of two activations: attention's q·kᵀ and its probabilities times v.

They have no weights, but their multiply-adds grow with the square of the tokens and count in
FLOPs like a layer's. Each is counted as a tensor that has no entries in the graph, one entry
per attention unit (a k/v head with its query heads) at `macs / units` multiply-adds each, so
that removing heads removes its share where layers' weights are counted (`groups.weight_count`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import sympy
import torch
from torch import fx

from .capture import get_tensor
from .ops import ATTENTION, MATMUL

SDPA = ATTENTION[0]


@dataclass(frozen=True)
class Product:
    """One product node and what it costs per sample.

    `weight`, `rows` and `fixed` say how many units it is computed for now (after heads were
    removed): the rows `weight` (the layer that makes q) has beyond `fixed`, over `rows` per
    unit. Without a `weight` its units never change."""

    name: str  # the tensor it is counted as (no entries in the graph)
    node: str
    macs: int  # multiply-adds per sample, as traced
    units: int = 1  # as traced
    weight: str = ""
    rows: int = 0
    fixed: int = 0

    def now(self, gm: fx.GraphModule) -> int:
        """The units it is computed for in `gm` now."""
        if not self.weight:
            return self.units
        return (int(get_tensor(gm, self.weight).shape[0]) - self.fixed) // self.rows

    def per_unit(self) -> int:
        return self.macs // self.units

    def of_heads(self, units: int, weight: str, rows: int, total_rows: int) -> Product:
        """This product computed per unit of a heads group of `units`, whose q layer's weight
        `weight` has `rows` rows per unit of its `total_rows`."""
        return replace(self, units=units, weight=weight, rows=rows,
                       fixed=total_rows - units * rows)


def find_products(gm: fx.GraphModule) -> tuple[Product, ...]:
    """Every matmul of two activations and every scaled_dot_product_attention, with its
    multiply-adds per sample read from the traced shapes."""
    batch = next((n.meta["val"].shape[0] for n in gm.graph.nodes
                  if n.op == "placeholder" and "val" in n.meta), 1)
    found = []
    for node in gm.graph.nodes:
        macs = None
        if node.target is SDPA:
            q, k, v = (a.meta.get("val") for a in node.args[:3])
            if q is not None and k is not None and v is not None:
                heads, tq, tk = q.shape[-3], q.shape[-2], k.shape[-2]
                lead = _numel(q.shape[:-3])
                macs = lead * heads * tq * tk * (q.shape[-1] + v.shape[-1])
        elif node.target in MATMUL[:2] and all(
                isinstance(a, fx.Node) and a.op != "get_attr" for a in node.args[:2]):
            a, out = node.args[0].meta.get("val"), node.meta.get("val")
            if a is not None and out is not None:
                macs = _numel(out.shape) * a.shape[-1]
        if macs is not None:
            per_sample = sympy.simplify(as_expr(macs) / as_expr(batch))
            if per_sample.is_Integer and int(per_sample) > 0:
                found.append(Product(f"{node.name} (activations)", node.name, int(per_sample)))
    return tuple(found)


def _numel(shape) -> object:
    total = 1
    for size in shape:
        total = total * size
    return total


def as_expr(size: object) -> sympy.Expr:
    """A size of a traced shape (a number, or a symbol of the batch) as a sympy expression."""
    return size.node.expr if isinstance(size, torch.SymInt) else sympy.Integer(int(size))
