"""Layer operands the graph computes from the model's tensors alone, made parameters at capture."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import fx, nn

from .ops import ADDCMUL, CONV, LINEAR


def fold_constant_operands(gm: fx.GraphModule, free_name: Callable[[str, nn.Module], str]
                           ) -> None:
    """Make a layer's weight or bias that the graph computes from tensors alone (BEiT's and
    EVA's qkv bias, `cat(q_bias, zeros, v_bias)`; a weight-normalised weight) a parameter of
    its own (named by `free_name(name, gm)`): it is a constant at inference, and the layer can
    then be pruned and trained. So are the per-channel β and γ of an `addcmul` (ConvNeXt-V2's
    response norm reads them through views), whose entries then go with the channels."""
    changed = False
    for node in [n for n in gm.graph.nodes if n.target in (LINEAR, *CONV, ADDCMUL)]:
        names = {0: "bias", 1: "scale"} if node.target is ADDCMUL else {1: "weight", 2: "bias"}
        for position, role in names.items():
            operand = node.args[position] if len(node.args) > position else None
            name = f"{node.name}_{role}"
            changed |= fold_operand(gm, node, operand, lambda n=name: free_name(n, gm))
    if changed:
        drop_unread(gm)


def fold_operand(gm: fx.GraphModule, node: fx.Node, operand: object,
                 name: Callable[[], str], *, buffer: bool = False) -> bool:
    """Make `operand` of `node` a parameter (named `name()`) if the graph computes it from
    tensors alone that nothing else reads; with `buffer`, a buffer (a constant fine-tuning
    leaves alone, so what it is computed from may be read elsewhere too). Whether it did
    (`drop_unread` afterwards)."""
    if not isinstance(operand, fx.Node) or operand.op == "get_attr":
        return False
    inside: set[fx.Node] = set()
    with torch.no_grad():
        value = _constant(gm, operand, inside)
    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or \
            not buffer and any(not set(n.users) <= inside | {node} for n in inside):
        return False  # computed from the input, or from tensors read elsewhere too (tied)
    parameter = name()
    if buffer:
        gm.register_buffer(parameter, value.detach().clone())
    else:
        gm.register_parameter(parameter, nn.Parameter(value.detach().clone()))
    with gm.graph.inserting_before(node):
        attr = gm.graph.get_attr(parameter)
    attr.meta["val"] = value.detach().new_empty(value.shape)
    node.replace_input_with(operand, attr)
    return True


def drop_unread(gm: fx.GraphModule) -> None:
    """Drop the nodes nothing reads and the tensors only they read."""
    gm.graph.eliminate_dead_code()
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name in [n for n, _ in [*gm.named_parameters(), *gm.named_buffers()]
                 if n not in used and "." not in n]:
        delattr(gm, name)  # what only the folded operands read
    gm.recompile()


def value_of(gm: fx.GraphModule, node: fx.Node) -> object:
    """`node`'s value if the graph computes it from the module's tensors alone, else None."""
    with torch.no_grad():
        return _constant(gm, node, set())


def _constant(gm: fx.GraphModule, node: fx.Node, inside: set[fx.Node]) -> object:
    """`node`'s value if it is computed from the module's tensors alone (no input, nothing
    random), else None; the nodes it is computed from are added to `inside`."""
    inside.add(node)
    if node.op == "get_attr":
        return getattr(gm, node.target)
    if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload) or \
            node.target._schema.is_mutable or "rand" in node.target.__name__:
        return None
    missing = []

    def value(a):
        if not isinstance(a, fx.Node):
            return a
        found = _constant(gm, a, inside)
        if found is None:
            missing.append(a)
        return found

    args = fx.node.map_aggregate(node.args, value)
    kwargs = fx.node.map_aggregate(node.kwargs, value)
    return None if missing else node.target(*args, **kwargs)

