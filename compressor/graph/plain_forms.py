"""Ops torch.export writes in a form the tracer and the refit do not read, rewritten at capture
into the plain form of the same computation: a `cat` with empty tensors (an empty cache), a
cast to the dtype a tensor already has, a convolution padded by name, a batched product added
to a bias in one op, two paths stacked and weighed by a softmax over them."""

from __future__ import annotations

import operator

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


def plain_selective_kernel(graph: fx.Graph) -> None:
    """Two paths stacked on a new axis 1 (SKNet's selective kernel: `stack([a, b], 1)`), read
    only summed over it and weighed by a softmax over it of a layer's output viewed
    [batch, 2, channels, 1, 1], as the sums `a + b` and
    `a · sigmoid(g_a - g_b) + b · sigmoid(g_b - g_a)`, g_a and g_b the layer's two halves (a
    softmax over two): every op then acts on channels the tracer follows, the paths' channels one
    space with the layer's rows of both halves."""
    aten = torch.ops.aten
    for stack in list(graph.nodes):
        if stack.target is not aten.stack.default or _stack_axis(stack) != 1 or \
                len(stack.args[0]) != 2 or not all(_sum_over(u, 1) or _weighed(u)
                                                    for u in stack.users):
            continue
        a, b = stack.args[0]
        for user in list(stack.users):
            total = user if _sum_over(user, 1) else next(iter(user.users))
            val = total.meta.get("val")
            with graph.inserting_before(total):
                if user is total:
                    made = graph.call_function(aten.add.Tensor, (a, b))
                else:
                    g = user.args[1].args[0].args[0]  # softmax(view(g))
                    half = int(g.meta["val"].shape[1]) // 2
                    split = graph.call_function(aten.split_with_sizes.default,
                                                (g, [half, half], 1))
                    split.meta["val"] = list(g.meta["val"].split([half, half], 1))
                    parts = []
                    for k in range(2):
                        parts.append(graph.call_function(operator.getitem, (split, k)))
                        parts[-1].meta["val"] = split.meta["val"][k]
                    weights = []
                    for first, second in (parts, parts[::-1]):
                        gap = graph.call_function(aten.sub.Tensor, (first, second))
                        gap.meta["val"] = first.meta["val"]
                        weights.append(graph.call_function(aten.sigmoid.default, (gap,)))
                        weights[-1].meta["val"] = first.meta["val"]
                    terms = []
                    for path, weight in zip((a, b), weights):
                        terms.append(graph.call_function(aten.mul.Tensor, (path, weight)))
                        terms[-1].meta["val"] = val
                    made = graph.call_function(aten.add.Tensor, tuple(terms))
            made.meta["val"] = val
            total.replace_all_uses_with(made)
            graph.erase_node(total)
            if user is not total:
                softmax = user.args[1]
                graph.erase_node(user)
                view = softmax.args[0]
                graph.erase_node(softmax)
                if not view.users:
                    graph.erase_node(view)
        graph.erase_node(stack)


def _stack_axis(stack: fx.Node) -> int | None:
    dim = stack.args[1] if len(stack.args) > 1 else stack.kwargs.get("dim", 0)
    val = stack.meta.get("val")
    return None if val is None else dim % val.ndim


def _sum_over(node: fx.Node, axis: int) -> bool:
    """Whether `node` sums its input over `axis` alone, not keeping it."""
    return node.target is torch.ops.aten.sum.dim_IntList and list(node.args[1]) in \
        ([axis], [axis - 5]) and not (len(node.args) > 2 and node.args[2]) and \
        not node.kwargs.get("keepdim", False)


def _weighed(product: fx.Node) -> bool:
    """Whether `product` multiplies the stack by softmax(view(g), 1), g of shape
    [batch, 2 x channels, 1, 1] viewed [batch, 2, channels, 1, 1], and is read only summed
    over the paths."""
    aten = torch.ops.aten
    if product.target is not aten.mul.Tensor or len(product.args) != 2 or \
            len(product.users) != 1 or not _sum_over(next(iter(product.users)), 1):
        return False
    softmax = product.args[1]
    if not isinstance(softmax, fx.Node) or softmax.target is not aten._softmax.default and \
            softmax.target is not aten.softmax.int or softmax.args[1] % 5 != 1 or \
            len(softmax.users) != 1:
        return False
    view = softmax.args[0]
    if not isinstance(view, fx.Node) or view.target not in (aten.view.default,
                                                            aten.reshape.default,
                                                            aten._unsafe_view.default):
        return False
    g, out = view.args[0], view.meta.get("val")
    gval = g.meta.get("val") if isinstance(g, fx.Node) else None
    return gval is not None and out is not None and gval.ndim == 4 and out.ndim == 5 and \
        tuple(out.shape[1:]) == (2, int(gval.shape[1]) // 2, 1, 1) and \
        tuple(gval.shape[2:]) == (1, 1) and len(view.users) == 1
