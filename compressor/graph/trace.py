"""Find the prunable groups of the working graph; name every layer left dense and why."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from .capture import LINEAR, add_zero_bias, get_tensor
from .groups import PrunableGroup, Slice

RELU = (torch.ops.aten.relu.default, torch.ops.aten.relu_.default)
PASSTHROUGH = (torch.ops.aten.clone.default, torch.ops.aten.alias.default,
               torch.ops.aten.detach.default)


@dataclass(frozen=True)
class Layer:
    """A Linear layer of the model (all of them count towards the weight budget)."""

    name: str
    weight: str
    node: str
    in_features: int
    out_features: int


@dataclass(frozen=True)
class Trace:
    """What the tracer found: prunable groups, all Linear layers, and layers left dense."""

    groups: tuple[PrunableGroup, ...]
    layers: tuple[Layer, ...]
    dense: tuple[tuple[str, str], ...]  # (layer, reason it is not pruned)


def trace(gm: fx.GraphModule) -> Trace:
    """Find every Linear -> ReLU -> Linear chain (Dropout/identity ops allowed in between).

    A bias-free consumer is given a zero bias so that constants can be folded exactly.
    """
    names = gm.meta.get("original_names", {})
    linears = [n for n in gm.graph.nodes if n.target is LINEAR]
    weight_uses: dict[object, int] = {}  # by tensor: two get_attr nodes may name one tensor
    for n in linears:
        weight_uses[_tensor_key(n.args[1])] = weight_uses.get(_tensor_key(n.args[1]), 0) + 1
    layers, groups, dense = [], [], []
    for node in linears:
        weight = node.args[1]
        if weight.op != "get_attr":
            dense.append((node.name, "its weight is computed in the graph, not a parameter"))
            continue
        name = names.get(weight.target, weight.target).removesuffix(".weight")
        shape = get_tensor(gm, weight.target).shape
        if all(layer.weight != weight.target for layer in layers):  # count each tensor once
            layers.append(Layer(name, weight.target, node.name, int(shape[1]), int(shape[0])))
        consumer, reason = _follow(node)
        if consumer is None:
            dense.append((name, reason))
        elif weight_uses[_tensor_key(weight)] > 1 or \
                weight_uses.get(_tensor_key(consumer.args[1]), 0) > 1:
            dense.append((name, "its weights are shared with another layer"))
        elif consumer.args[1].op != "get_attr":
            dense.append((name, "the next layer's weight is computed in the graph"))
        else:
            groups.append(_group(gm, name, node, consumer, reason))
    return Trace(tuple(groups), tuple(layers), tuple(dense))


def _follow(linear: fx.Node) -> tuple[fx.Node | None, str]:
    """The one Linear that reads this layer through a ReLU, or None and why not.

    On success the second item is the name of the ReLU node."""
    node, relu = linear, None
    while True:
        users = list(node.users)
        if len(users) != 1:
            if not users or any(u.op == "output" for u in users):
                return None, "output layer (never pruned)"
            what = "its output" if relu is None else "its ReLU output"
            return None, f"{what} is read by {len(users)} nodes, not by one Linear"
        user = users[0]
        if user.op == "output":
            return None, "output layer (never pruned)" if relu is None else \
                "its ReLU output is the model's output"
        if user.target in PASSTHROUGH or _is_eval_dropout(user):
            node = user
        elif user.target in RELU and relu is None:
            node = relu = user
        elif user.target is LINEAR and relu is not None and user.args[0] is node:
            return user, relu.name
        elif relu is None:
            return None, f"not followed by a ReLU (found {_op_name(user)})"
        else:
            return None, f"its ReLU output feeds {_op_name(user)}, not a Linear"


def _group(gm: fx.GraphModule, name: str, producer: fx.Node, consumer: fx.Node,
           relu: str) -> PrunableGroup:
    has_bias = len(producer.args) > 2 and producer.args[2] is not None
    biases = (Slice(producer.args[2].target, 0),) if has_bias else ()
    if len(consumer.args) < 3 or consumer.args[2] is None:
        consumer_bias = add_zero_bias(gm, consumer)
    else:
        consumer_bias = consumer.args[2].target
    return PrunableGroup(
        name=name,
        size=int(get_tensor(gm, producer.args[1].target).shape[0]),
        weights=(Slice(producer.args[1].target, 0),),
        biases=biases,
        activation=relu,
        consumers=(Slice(consumer.args[1].target, 1),),
        consumer_biases=(consumer_bias,),
    )


def _tensor_key(node: fx.Node) -> object:
    return node.target if node.op == "get_attr" else node


def _is_eval_dropout(node: fx.Node) -> bool:
    return node.target is torch.ops.aten.dropout.default and node.args[2] is False


def _op_name(node: fx.Node) -> str:
    return getattr(node.target, "__name__", str(node.target)).split(".")[0]
