"""Layers written otherwise, rewritten as `linear`: GPT-2's `Conv1D` (`addmm(bias, x, W)` with W
stored [in, out]) and a `matmul`/`mm` of activations by a constant weight. The weight is
transposed once into Linear's [out, in] layout, so the tracer, the pruning stages and the
export see one kind of layer."""

from __future__ import annotations

import torch
from torch import fx, nn

from .ops import LINEAR

aten = torch.ops.aten
ADDMM, MM, MATMUL = aten.addmm.default, aten.mm.default, aten.matmul.default


def as_linear(gm: fx.GraphModule) -> list[str]:
    """Rewrite, in place, every `addmm(bias, x, W)`, `mm(x, W)` and `matmul(x, W)` whose W is
    a 2-D parameter or buffer used by nothing else (and whose bias, if any, is one with a
    value per output) as `linear(x, Wᵀ, bias)`. Returns the names of the new nodes."""
    done = []
    for node in list(gm.graph.nodes):
        found = _parts(gm, node)
        if found is None:
            continue
        x, weight, bias = found
        transposed = getattr(gm, weight.target).detach().t().contiguous()
        trainable(gm, weight.target, transposed)
        if bias is not None:
            trainable(gm, bias.target, getattr(gm, bias.target).detach())
        meta = weight.meta.get("val")
        if meta is not None:
            weight.meta["val"] = meta.new_empty(tuple(reversed(meta.shape)))
        with gm.graph.inserting_before(node):
            linear = gm.graph.call_function(LINEAR, (x, weight) + ((bias,) if bias else ()))
        linear.meta = dict(node.meta)
        node.replace_all_uses_with(linear)
        gm.graph.erase_node(node)
        done.append(linear.name)
    if done:
        gm.graph.lint()
        gm.recompile()
    return done


def _parts(gm: fx.GraphModule, node: fx.Node) -> tuple[fx.Node, fx.Node, fx.Node | None] | None:
    """(input, weight, bias) of a node that is a Linear written otherwise, else None."""
    if node.op != "call_function" or node.target not in (ADDMM, MM, MATMUL) or node.kwargs:
        return None
    if node.target is ADDMM:
        if len(node.args) != 3:
            return None
        bias, x, weight = node.args
    else:
        (x, weight), bias = node.args[:2], None
    if not _constant(weight, ndim=2) or len(weight.users) != 1 or \
            not isinstance(x, fx.Node) or x.op == "get_attr":
        return None
    if bias is not None and not (_constant(bias, ndim=1) and len(bias.users) == 1 and
                                 _shape(bias)[0] == _shape(weight)[1]):
        return None
    return x, weight, bias


def _constant(node: object, *, ndim: int) -> bool:
    return isinstance(node, fx.Node) and node.op == "get_attr" and len(_shape(node)) == ndim


def _shape(node: fx.Node) -> tuple[int, ...]:
    val = node.meta.get("val")
    return () if val is None else tuple(int(d) for d in val.shape)


def trainable(gm: fx.GraphModule, name: str, value: torch.Tensor) -> None:
    """Replace `name` by `value` as a trainable parameter (a Linear's weight or bias)."""
    if name in gm._buffers:
        del gm._buffers[name]
    gm._parameters[name] = nn.Parameter(value)
