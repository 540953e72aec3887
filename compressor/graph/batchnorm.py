"""Fold eval-mode BatchNorm into the conv or linear layer before it (also over a Linear's
output flattened to rows and reshaped back, LeViT's LinearNorm), so that no prunable group
carries BatchNorm statistics and the exported graph has no BatchNorm:

    w' = w * g / s,  b' = (b - mean) * g / s + beta,  s = sqrt(var + eps)

(`torch.nn.utils.fusion.fuse_conv_bn_weights` computes the same). Exact up to float rounding;
computed in float64."""

from __future__ import annotations

import torch
from torch import fx, nn

from .ops import BATCH_NORM, CONV, LINEAR

aten = torch.ops.aten


def fold_batchnorm(gm: fx.GraphModule) -> list[str]:
    """Fold every eval-mode BatchNorm whose input is a conv or linear layer read by nothing
    else into that layer, in place. Returns the names of the folded BatchNorm nodes; the
    others stay in the graph (the tracer names them)."""
    folded = []
    for node in list(gm.graph.nodes):
        flattened = _flattened(node) if node.target is BATCH_NORM[0] else None
        if node.target not in BATCH_NORM or not _foldable(node) and flattened is None:
            continue
        layer = node.args[0] if flattened is None else flattened[0]
        weight, bias, mean, var = (get_tensor(gm, a.target).detach().double()
                                   if isinstance(a, fx.Node) else None for a in node.args[1:5])
        eps = float(node.args[7] if node.target is BATCH_NORM[0] else node.args[6])
        scale = torch.rsqrt(var + eps) * (weight if weight is not None else 1.0)
        shift = (bias if bias is not None else 0.0) - mean * scale
        w = get_tensor(gm, layer.args[1].target)
        shape = (-1,) + (1,) * (w.ndim - 1)
        _set(gm, layer.args[1].target, (w.detach().double() * scale.reshape(shape)).to(w.dtype))
        if len(layer.args) > 2 and layer.args[2] is not None:
            b = get_tensor(gm, layer.args[2].target)
            _set(gm, layer.args[2].target, (b.detach().double() * scale + shift).to(b.dtype))
        else:
            name = _new_parameter(gm, f"{layer.args[1].target}_bias", shift.to(w.dtype),
                                  original=_bias_name(gm, layer.args[1].target))
            with gm.graph.inserting_before(layer):
                getter = gm.graph.get_attr(name)
            args = list(layer.args) + [None] * max(0, 3 - len(layer.args))
            args[2] = getter
            layer.args = tuple(args)
        output = node if node.target is BATCH_NORM[0] else None
        if flattened is not None:  # the Linear's output, as the reshape back gave it
            layer_out, back = flattened
            back.replace_all_uses_with(layer_out)
            gm.graph.erase_node(back)
            flat = node.args[0]
            gm.graph.erase_node(node)
            gm.graph.erase_node(flat)
            folded.append(node.name)
            continue
        if output is None:  # returns (out, mean, invstd): its users take item 0
            for user in list(node.users):
                user.replace_all_uses_with(layer)
                gm.graph.erase_node(user)
        else:
            node.replace_all_uses_with(layer)
        gm.graph.erase_node(node)
        folded.append(node.name)
    if folded:
        gm.graph.eliminate_dead_code()
        _drop_unused_tensors(gm)
        gm.recompile()
    return folded


def _flattened(bn: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """(the Linear, the reshape back) where `bn` normalizes a Linear's output with its leading
    axes flattened into rows and is reshaped back to it, as LeViT writes its LinearNorm:
    `reshape_as(batch_norm(flatten(linear(x), 0, -2)), linear(x))`; None otherwise."""
    flat = bn.args[0]
    if not isinstance(flat, fx.Node) or flat.target is not aten.flatten.using_ints or \
            len(flat.users) != 1 or len(flat.args) < 3:
        return None
    layer, val = flat.args[0], getattr(flat.args[0], "meta", {}).get("val")
    if not isinstance(layer, fx.Node) or layer.target is not LINEAR or val is None or \
            flat.args[1] != 0 or flat.args[2] % val.ndim != val.ndim - 2:
        return None
    users = list(bn.users)
    if len(users) != 1 or users[0].target is not aten.reshape_as.default or \
            users[0].args[1] is not layer or set(layer.users) != {flat, users[0]}:
        return None
    return (layer, users[0]) if _stats_foldable(bn, layer) else None


def _foldable(bn: fx.Node) -> bool:
    layer = bn.args[0]
    if not isinstance(layer, fx.Node) or layer.target not in (*CONV, LINEAR):
        return False
    return len(layer.users) == 1 and _stats_foldable(bn, layer)


def _stats_foldable(bn: fx.Node, layer: fx.Node) -> bool:
    """Whether `bn`'s statistics and affine are tensors of the graph, in eval mode, and the
    layer's weight and bias are its own."""
    if not all(isinstance(a, fx.Node) and a.op == "get_attr"
               for a in bn.args[1:5] if a is not None):
        return False
    if bn.target is BATCH_NORM[0] and bn.args[5]:  # training=True: batch statistics
        return False
    weight = layer.args[1]
    if weight.op != "get_attr" or len(weight.users) != 1:  # shared weights stay as they are
        return False
    bias = layer.args[2] if len(layer.args) > 2 else None
    return bias is None or (bias.op == "get_attr" and len(bias.users) == 1)


def get_tensor(gm: fx.GraphModule, name: str) -> torch.Tensor:
    return getattr(gm, name)


def _new_parameter(gm: fx.GraphModule, base: str, value: torch.Tensor, *, original: str) -> str:
    name, i = base, 1
    while hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    gm.register_parameter(name, nn.Parameter(value.contiguous()))
    gm.meta.setdefault("original_names", {})[name] = original
    return name


def _set(gm: fx.GraphModule, name: str, value: torch.Tensor) -> None:
    if name in gm._parameters:
        gm._parameters[name] = nn.Parameter(value.contiguous())
    else:
        gm._buffers[name] = value.contiguous()


def _bias_name(gm: fx.GraphModule, weight: str) -> str:
    original = gm.meta.get("original_names", {}).get(weight, weight)
    return original.removesuffix("weight") + "bias" if original.endswith("weight") else \
        f"{original}_bias"


def _drop_unused_tensors(gm: fx.GraphModule) -> None:
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    names = gm.meta.get("original_names", {})
    for store in (gm._parameters, gm._buffers):
        for name in [n for n in store if n not in used]:
            del store[name]
            names.pop(name, None)
