"""Ops torch.export writes in a form the tracer and the refit do not read, rewritten at capture
into the plain form of the same computation: a `cat` with empty tensors (an empty cache), a
cast to the dtype a tensor already has, a convolution padded by name."""

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
    """`a.type_as(b)` where a has b's dtype already is `a` (Gemma's norms end so): only `a`
    flows on, which the tracer would otherwise have to tell from `b`."""
    for node in list(graph.nodes):
        if node.target is not torch.ops.aten.type_as.default:
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
