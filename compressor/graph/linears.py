"""Layers written otherwise, rewritten as `linear`: GPT-2's `Conv1D` (`addmm(bias, x, W)` with W
stored [in, out]), a `matmul`/`mm` of activations by a constant weight, and by one stored
[out, in] and transposed in the graph (Falcon's `x @ W.T`). The weight is
transposed once into Linear's [out, in] layout, so the tracer, the pruning stages and the
export see one kind of layer. A gated feed-forward whose two Linears are fused into one
(`split_gated`) is written as two."""

from __future__ import annotations

import torch
from torch import fx, nn

from .ops import LINEAR

aten = torch.ops.aten
ADDMM, MM, MATMUL = aten.addmm.default, aten.mm.default, aten.matmul.default


def as_linear(gm: fx.GraphModule) -> list[str]:
    """Rewrite, in place, every `addmm(bias, x, W)`, `mm(x, W)` and `matmul(x, W)` whose W is
    a 2-D parameter or buffer used by nothing else (and whose bias, if any, is one with a
    value per output) as `linear(x, Wᵀ, bias)`, and `matmul(x, Wᵀ)` as `linear(x, W)`.
    Returns the names of the new nodes."""
    done = []
    for node in list(gm.graph.nodes):
        found = _parts(gm, node)
        if found is None:
            continue
        x, weight, bias = found
        flipped = weight if weight.op == "call_function" else None  # `W.T`: [out, in] already
        weight = flipped.args[0] if flipped is not None else weight
        value = getattr(gm, weight.target).detach()
        trainable(gm, weight.target, value if flipped is not None else value.t().contiguous())
        if bias is not None:
            trainable(gm, bias.target, getattr(gm, bias.target).detach())
        meta = weight.meta.get("val")
        if meta is not None and flipped is None:
            weight.meta["val"] = meta.new_empty(tuple(reversed(meta.shape)))
        with gm.graph.inserting_before(node):
            linear = gm.graph.call_function(LINEAR, (x, weight) + ((bias,) if bias else ()))
        linear.meta = dict(node.meta)
        node.replace_all_uses_with(linear)
        gm.graph.erase_node(node)
        if flipped is not None:
            gm.graph.erase_node(flipped)
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
    if _flipped(weight):  # x @ W.T with W stored [out, in] (Falcon's `FalconLinear`)
        if len(weight.users) != 1 or len(weight.args[0].users) != 1 or \
                not isinstance(x, fx.Node) or x.op == "get_attr" or bias is not None:
            return None
        return x, weight, None
    if not is_constant(weight, ndim=2) or len(weight.users) != 1 or \
            not isinstance(x, fx.Node) or x.op == "get_attr":
        return None
    if bias is not None and not (is_constant(bias, ndim=1) and len(bias.users) == 1 and
                                 _shape(bias)[0] == _shape(weight)[1]):
        return None
    return x, weight, bias


def _flipped(node: object) -> bool:
    """Whether `node` is a 2-D parameter or buffer with its axes swapped."""
    if not isinstance(node, fx.Node) or node.op != "call_function" or not node.args or \
            not is_constant(node.args[0], ndim=2):
        return False
    if node.target in (aten.t.default, aten.numpy_T.default):
        return True
    if node.target is aten.transpose.int:
        return sorted(a % 2 for a in node.args[1:3]) == [0, 1]
    return node.target is aten.permute.default and [a % 2 for a in node.args[1]] == [1, 0]


def is_constant(node: object, *, ndim: int) -> bool:
    return isinstance(node, fx.Node) and node.op == "get_attr" and len(_shape(node)) == ndim


def _shape(node: fx.Node) -> tuple[int, ...]:
    val = node.meta.get("val")
    return () if val is None else tuple(int(d) for d in val.shape)


def trainable(gm: fx.GraphModule, name: str, value: torch.Tensor) -> None:
    """Replace `name` by `value` as a trainable parameter (a Linear's weight or bias)."""
    if name in gm._buffers:
        del gm._buffers[name]
    gm._parameters[name] = nn.Parameter(value)


CHUNKS = {aten.chunk.default, aten.split.Tensor, aten.split_with_sizes.default}
GATE_STEPS = 8  # the most elementwise ops between a half and the product (its activation)


def split_gated(gm: fx.GraphModule) -> list[str]:
    """Rewrite, in place, every Linear whose output is cut into two halves along its features
    that meet again in one product, one of them or both through elementwise ops (a fused
    gated feed-forward: Phi-3's `gate_up_proj`, timm's GluMlp: `a, b = fc1(x).chunk(2, -1);
    a * act(b)`), as two Linears, one per half (named `<layer>[0:n]` and `<layer>[n:2n]`):
    unit j of the gate is then rows j of both, as where the model has two Linears. Returns the
    names of the new nodes."""
    done = []
    names = gm.meta.setdefault("original_names", {})
    for node in list(gm.graph.nodes):
        halves = _gated_halves(gm, node)
        if halves is None:
            continue
        x, weight = node.args[:2]
        bias = node.args[2] if len(node.args) > 2 else None
        w = getattr(gm, weight.target).detach()
        b = getattr(gm, bias.target).detach() if bias is not None else None
        n = w.shape[0] // 2
        base = names.get(weight.target, weight.target).removesuffix(".weight")
        for k, half in enumerate(halves):
            part = f"{base}[{k * n}:{(k + 1) * n}]"
            with gm.graph.inserting_before(half):
                args = [x, new_parameter(gm, f"{weight.target}_{k}", w[k * n:(k + 1) * n],
                                      f"{part}.weight", names)]
                if b is not None:
                    args.append(new_parameter(gm, f"{bias.target}_{k}", b[k * n:(k + 1) * n],
                                           f"{part}.bias", names))
                linear = gm.graph.call_function(LINEAR, tuple(args))
            linear.meta = dict(half.meta)
            half.replace_all_uses_with(linear)
            done.append(linear.name)
        drop_unused(gm, [*halves, *{h.args[0] for h in halves} - {node}, node], (weight, bias))
    if done:
        gm.graph.lint()
        gm.recompile()
    return done


def _gated_halves(gm: fx.GraphModule, node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """The two halves of `node`'s output, if it is a Linear of a weight used once, read only
    by one chunk or split in two equal halves along its last axis (or by two slices that
    make those halves), and the halves meet in one product."""
    if node.op != "call_function" or node.target is not LINEAR or len(node.args) < 2 or \
            not is_constant(node.args[1], ndim=2) or len(node.args[1].users) != 1:
        return None
    out = node.meta.get("val")
    rows = _shape(node.args[1])[0]
    if out is None or rows % 2 or (len(node.args) > 2 and node.args[2] is not None and
                                   len(node.args[2].users) != 1):
        return None
    last = out.ndim - 1
    users = list(node.users)
    if len(users) == 1 and users[0].target in CHUNKS:
        cut = users[0]
        dim = cut.args[2] if len(cut.args) > 2 else cut.kwargs.get("dim", 0)
        pieces = sorted(cut.users, key=lambda u: u.args[1] if len(u.args) > 1 else -1)
        equal = cut.args[1] == 2 if cut.target is aten.chunk.default else \
            cut.args[1] in (rows // 2, [rows // 2, rows // 2])
        if dim not in (-1, last) or not equal or len(pieces) != 2 or \
                any(getattr(p.target, "__name__", "") != "getitem" for p in pieces) or \
                [p.args[1] for p in pieces] != [0, 1]:
            return None
    elif len(users) == 2 and all(u.target is aten.slice.Tensor for u in users):
        bounds = sorted((u.args[2] if len(u.args) > 2 else 0,
                         min(u.args[3] if len(u.args) > 3 else rows, rows), u) for u in users)
        if any(u.args[1] not in (-1, last) or (len(u.args) > 4 and u.args[4] != 1)
               for u in users) or [b[:2] for b in bounds] != [(0, rows // 2),
                                                              (rows // 2, rows)]:
            return None
        pieces = [b[2] for b in bounds]
    else:
        return None
    return tuple(pieces) if _meet_in_a_product(*pieces) else None


def _meet_in_a_product(a: fx.Node, b: fx.Node) -> bool:
    """Whether `a` and `b` reach one product, each through at most GATE_STEPS ops of one
    input that alone read it (its activation)."""
    def reach(node: fx.Node) -> list[fx.Node]:
        found = [node]
        for _ in range(GATE_STEPS):
            if len(node.users) != 1:
                break
            node = next(iter(node.users))
            found.append(node)
            if sum(isinstance(x, fx.Node) for x in node.args) != 1:
                break  # where another tensor joins: the product, or something else
        return found

    ends = set(reach(a)) & set(reach(b))
    return len(ends) == 1 and next(iter(ends)).target is aten.mul.Tensor


def drop_unused(gm: fx.GraphModule, nodes: list[fx.Node], parameters: tuple) -> None:
    """Erase `nodes` that nothing reads any more (in order), then the parameters among
    `parameters` (a Linear's weight and bias, None where absent) with them."""
    names = gm.meta.get("original_names", {})
    for old in nodes:
        if old in gm.graph.nodes and not old.users:
            gm.graph.erase_node(old)
    for old in parameters:
        if old is not None and not old.users:
            gm.graph.erase_node(old)
            delattr(gm, old.target)
            names.pop(old.target, None)


def rewrite_all(gm: fx.GraphModule, find, rewrite) -> list[str]:
    """Run `rewrite(gm, node, *found)` on every node where `find(node)` finds something, then
    check and recompile the graph; the names of the nodes the rewrites made."""
    done = []
    for node in list(gm.graph.nodes):
        found = find(node)
        if found is not None:
            done += rewrite(gm, node, *found)
    if done:
        gm.graph.lint()
        gm.recompile()
    return done


def new_parameter(gm: fx.GraphModule, base: str, value: torch.Tensor, original: str,
               names: dict[str, str]) -> fx.Node:
    name, i = base, 1
    while hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    gm.register_parameter(name, nn.Parameter(value.clone()))
    names[name] = original
    node = gm.graph.get_attr(name)
    node.meta["val"] = value.new_empty(value.shape)
    return node
