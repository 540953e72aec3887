"""Ops torch.export writes in a form the tracer and the refit do not read, rewritten at capture
into the plain form of the same computation: a `cat` with empty tensors (an empty cache), a
cast to the dtype a tensor already has, a convolution padded by name, a batched product added
to a bias in one op."""

from __future__ import annotations

import torch
from torch import fx


def drop_empty_cats(graph: fx.Graph) -> None:
    """`cat([empty, x])` is `x`: Hugging Face's key/value cache, empty on a model's one call,
    is concatenated with each layer's keys and values (a legacy 1-D empty tensor, which cat
    skips). Removed so that keys and values read as their Linears' outputs."""
    for node in list(graph.nodes):
        if node.target is not torch.ops.aten.cat.default:
            continue
        full = [p for p in node.args[0] if not _empty(p)]
        if len(full) != 1 or len(node.args[0]) == 1:
            continue
        empties = [p for p in node.args[0] if p is not full[0]]
        node.replace_all_uses_with(full[0])
        graph.erase_node(node)
        while empties:  # the empty tensor's own chain, when nothing else reads it
            e = empties.pop()
            if isinstance(e, fx.Node) and not e.users and e.op == "call_function":
                empties += [a for a in e.args if isinstance(a, fx.Node)]
                graph.erase_node(e)


def drop_same_type_casts(graph: fx.Graph) -> None:
    """`a.type_as(b)` or `a.to(dtype)` where a has that dtype already is `a` (Gemma's norms
    end so; BLOOM casts its position biases): only `a` flows on, which the tracer would
    otherwise have to tell from `b`, or follow through the cast."""
    for node in list(graph.nodes):
        if node.target is not torch.ops.aten.type_as.default and not (
                node.target is torch.ops.aten.to.dtype and len(node.args) == 2 and
                not node.kwargs.get("copy", False)):
            continue
        source, val = node.args[0], node.meta.get("val")
        before = source.meta.get("val") if isinstance(source, fx.Node) else None
        if isinstance(val, torch.Tensor) and isinstance(before, torch.Tensor) and \
                before.dtype == val.dtype:
            node.replace_all_uses_with(source)
            graph.erase_node(node)


PADDED_BY_NAME = {torch.ops.aten.conv2d.padding: torch.ops.aten.conv2d.default,
                  torch.ops.aten.conv1d.padding: torch.ops.aten.conv1d.default}


def numeric_padding(graph: fx.Graph) -> None:
    """A convolution padded by name (`padding="same"` or `"valid"`, as Keras ports such as
    Hugging Face's EfficientNet write it) as the same convolution padded by numbers, the one
    form the tracer and the refit read; "same" over an even span (padded more on one side)
    stays as it is."""
    for node in graph.nodes:
        if node.target not in PADDED_BY_NAME:
            continue
        x, weight, bias, stride, padding, dilation, groups = \
            (*node.args, *[None, [1], "valid", [1], 1][len(node.args) - 2:])
        val = weight.meta.get("val") if isinstance(weight, fx.Node) else None
        if val is None:
            continue
        kernel = [int(k) for k in val.shape[2:]]
        stride, dilation = ([int(v) for v in values] * (len(kernel) if len(values) == 1 else 1)
                            for values in (stride, dilation))
        spans = [d * (k - 1) for k, d in zip(kernel, dilation)]
        if padding == "same" and any(span % 2 for span in spans):
            continue
        numbers = [span // 2 for span in spans] if padding == "same" else [0] * len(kernel)
        node.target = PADDED_BY_NAME[node.target]
        node.args = (x, weight, bias, stride, numbers, dilation, groups)


def _empty(node: object) -> bool:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return isinstance(val, torch.Tensor) and val.ndim == 1 and isinstance(val.shape[0], int) \
        and val.shape[0] == 0


def plain_baddbmm(graph: fx.Graph) -> None:
    """`baddbmm(b, x, y, beta=β, alpha=α)` as `α · bmm(x, y) + β · b` (BLOOM adds its ALiBi
    position biases to the attention scores so): the product of q and kᵀ is then one the
    attention finder and the FLOP count read, and the bias one added to the scores."""
    aten = torch.ops.aten
    for node in list(graph.nodes):
        if node.target is not aten.baddbmm.default:
            continue
        bias, x, y = node.args[:3]
        beta, alpha = node.kwargs.get("beta", 1), node.kwargs.get("alpha", 1)
        with graph.inserting_before(node):
            made = [graph.call_function(aten.bmm.default, (x, y))]
            if alpha != 1:
                made.append(graph.call_function(aten.mul.Tensor, (made[-1], alpha)))
            if beta != 1 and beta != 0:
                bias = graph.call_function(aten.mul.Tensor, (bias, beta))
                bias.meta["val"] = bias.args[0].meta.get("val")
            if beta != 0:  # (with β = 0 the bias is not read, as baddbmm ignores it)
                made.append(graph.call_function(aten.add.Tensor, (made[-1], bias)))
        for new in made:  # each of the output's shape and dtype
            new.meta["val"] = node.meta.get("val")
        node.replace_all_uses_with(made[-1])
        graph.erase_node(node)
