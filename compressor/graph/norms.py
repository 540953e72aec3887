"""RMSNorms written out, rewritten as `rms_norm`: Hugging Face's Llama, Mistral, Qwen and T5
norms compute `w * (x * rsqrt(mean(x², -1) + eps))` op by op (with casts to float32 around
it), which the tracer would read as a product of the stream by a value computed from all its
features. As one `rms_norm` node, the residual stream reads through it as through torch's
own RMSNorm (`--prune-stream`), and the export writes the form onnxruntime fuses."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import fx, nn

from .constants import drop_unread, fold_operand

aten = torch.ops.aten
CASTS = {aten.to.dtype, aten._to_copy.default}


def as_rms_norm(gm: fx.GraphModule, free_name: Callable[[str, nn.Module], str]) -> list[str]:
    """Rewrite, in place, every written-out RMSNorm over the last axis of float32 values
    (its weight, if any, a 1-D parameter or buffer, or computed from one alone: Gemma's
    `1 + w`, made a parameter named by `free_name`) as one `rms_norm` node. Returns the names
    of the new nodes."""
    done = []
    for node in list(gm.graph.nodes):
        if node.target is not aten.rsqrt.default:
            continue
        scaled = _scaled_by(node)
        if scaled is not None:
            product, other = scaled
            fold_operand(gm, product, other, lambda p=product: free_name(f"{p.name}_weight", gm))
        found = _parts(gm, node)
        if found is None:
            continue
        x, weight, eps, last = found
        size = [_val(x).shape[-1]]
        with gm.graph.inserting_after(last):
            norm = gm.graph.call_function(aten.rms_norm.default, (x, size, weight, eps))
        norm.meta = dict(last.meta)
        last.replace_all_uses_with(norm)
        done.append(norm.name)
    if done:
        drop_unread(gm)
    return done


def _scaled_by(rsqrt: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """(the product, its other operand) where the normalized values `x * rsqrt(...)` (past
    casts) are multiplied by something that is not a parameter (a weight the graph computes)."""
    product = _single_user(rsqrt)
    if not _op(product, aten.mul.Tensor):
        return None
    last = _past_casts(product)
    scaled = _single_user(last) if len(last.users) == 1 else None
    if not _op(scaled, aten.mul.Tensor) or list(scaled.args).count(last) != 1:
        return None
    other = next(a for a in scaled.args if a is not last)
    return (scaled, other) if isinstance(other, fx.Node) and other.op != "get_attr" else None


def _parts(gm: fx.GraphModule, rsqrt: fx.Node) -> tuple | None:
    """(x, weight node or None, eps, the pattern's last node) of the RMSNorm around `rsqrt`:
    rsqrt(mean(pow(x, 2), [-1], keepdim) + eps) multiplied into x, then by the weight (casts
    to float32 anywhere between)."""
    add = rsqrt.args[0]
    if not _op(add, aten.add.Tensor) or not isinstance(add.args[1], (int, float)):
        return None
    mean = add.args[0]
    if not _op(mean, aten.mean.dim) or list(mean.args[1]) not in ([-1], [_ndim(mean) - 1]) or \
            not (mean.args[2] if len(mean.args) > 2 else mean.kwargs.get("keepdim", False)):
        return None
    square = mean.args[0]
    if not _op(square, aten.pow.Tensor_Scalar) or square.args[1] != 2:
        return None
    x = square.args[0]
    product = _single_user(rsqrt)
    if not _op(product, aten.mul.Tensor) or set(product.args) != {x, rsqrt}:
        return None
    if any(len(n.users) != 1 for n in (square, mean, add, rsqrt)):
        return None
    last, weight = _past_casts(product), None
    scaled = _single_user(last) if len(last.users) == 1 else None
    if _op(scaled, aten.mul.Tensor):
        other = next((a for a in scaled.args if a is not last), None)
        if isinstance(other, fx.Node) and other.op == "get_attr" and \
                tuple(_val(other).shape) == (_val(x).shape[-1],) and \
                list(scaled.args).count(last) == 1:
            last, weight = scaled, other
    if any(_val(n) is None or _val(n).dtype != torch.float32 for n in (x, last)):
        return None
    return x, weight, float(add.args[1]), last


def _past_casts(node: fx.Node) -> fx.Node:
    """`node`, or the last of the float32 casts that alone read it, one after another."""
    while len(node.users) == 1:
        user = next(iter(node.users))
        if user.target not in CASTS or _val(user) is None or _val(user).dtype != torch.float32:
            break
        node = user
    return node


def _single_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _op(node: object, target) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target is target


def _val(node: fx.Node) -> torch.Tensor | None:
    val = node.meta.get("val")
    return val if isinstance(val, torch.Tensor) else None


def _ndim(node: fx.Node) -> int:
    val = _val(node)
    return val.ndim if val is not None else -1
