"""The working model: one clean, trainable aten-level `torch.fx.GraphModule` for every input
format. Parameters live flat on the root (`fc1_weight`), so any step can read or replace them
by name; the graph has no guards or pytree plumbing, takes one tensor and returns one tensor."""

from __future__ import annotations

import copy
import itertools
import operator
import re
from contextlib import contextmanager

import torch
from torch import fx, nn
from torch.fx.graph import CodeGen

from ..errors import ModelError, first_line
from ..io.cores import batch_starts
from ..io.load import LoadedModel, ModelFormat, output_tensor
from ..io.quiet import quiet
from .batchnorm import fold_batchnorm
from .constants import fold_constant_operands
from .linears import as_linear, split_gated
from .norms import as_rms_norm
from .ops import CONV, LINEAR
from .pieces import split_gate_over_cat
from .plain_forms import (drop_empty_cats, drop_same_type_casts, numeric_padding, plain_baddbmm,
                          plain_selective_kernel)
from .sizes import samples_per_forward
from .split_layers import split_at_pieces
from .through_cats import through_cats


def export_program(module: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """torch.export with a dynamic batch axis."""
    batch = torch.export.Dim("batch")
    with quiet():
        return torch.export.export(module, (example,), dynamic_shapes=({0: batch},), strict=False)


def capture(model: LoadedModel, example: torch.Tensor | None = None) -> fx.GraphModule:
    """Turn any loaded model into the clean working graph (parameters copied, input untouched).

    Args:
        model: the loaded model.
        example: a batch (>= 2 samples) in the layout the model takes; not needed for `.pt2`
            programs, which are already captured.
    """
    if _is_clean(model.run):  # a .pt2 program captured when it was loaded
        return copy.deepcopy(model.run)
    try:
        if model.program is not None:
            program = model.program
        elif model.format is ModelFormat.TORCHSCRIPT:
            from torch._export.converter import TS2EPConverter

            with quiet():
                program = TS2EPConverter(model.run, (example,)).convert()
        else:
            program = export_program(model.run, example)
        with quiet():
            gm = program.module()
    except Exception as e:  # tracing user code can fail in many ways
        raise ModelError(f"cannot trace the model with torch.export ({first_line(e)}): "
                         "compressor needs a model torch.export can capture") from e
    return _clean(gm)


def clean_graph(model: LoadedModel, example: torch.Tensor | None = None) -> fx.GraphModule:
    """`model`'s clean working graph, to be read and copied, never changed: `model.run` itself
    where it already is one (a `.pt2` program is captured when it is loaded), else a capture.
    A large model's weights are then held once less."""
    return model.run if _is_clean(model.run) else capture(model, example)


def _is_clean(run: object) -> bool:
    return isinstance(run, fx.GraphModule) and "original_names" in run.meta


def _clean(gm: fx.GraphModule) -> fx.GraphModule:
    """One tensor in, one tensor out, no guards, and tensors owned by a fresh flat root."""
    _inline_regions(gm)
    _strip_plumbing(gm.graph)
    drop_empty_cats(gm.graph)
    drop_same_type_casts(gm.graph)
    plain_baddbmm(gm.graph)
    plain_selective_kernel(gm.graph)
    numeric_padding(gm.graph)
    root, original_names = _own_tensors(gm)
    if any(n.op == "call_module" for n in gm.graph.nodes):
        raise ModelError("the traced model still calls submodules; compressor needs a flat graph")
    clean = fx.GraphModule(root, gm.graph)
    clean.graph.lint()
    clean.meta["original_names"] = original_names
    as_linear(clean)
    split_gated(clean)
    split_gate_over_cat(clean)
    fold_constant_operands(clean, _flat_name)
    as_rms_norm(clean, _flat_name)
    through_cats(clean)
    fold_batchnorm(clean)
    split_at_pieces(clean)
    for name, tensor in [*clean.named_parameters(), *clean.named_buffers()]:
        if tensor.ndim == 4:
            set_tensor(clean, name, tensor)  # channels-last, see set_tensor
    return clean


# Higher-order ops torch.export keeps a region of the model in, by name: the position of the
# sub-graph among their arguments (its operands follow it).
REGIONS = {"wrap_with_set_grad_enabled": 1, "wrap_with_autocast": 4}


def _inline_regions(gm: fx.GraphModule) -> None:
    """Inline the sub-graphs torch.export keeps for `torch.no_grad()`-style regions and for
    disabled autocast regions (Hugging Face's rotary embeddings are both): float32 maths on
    the CPU is the same inside them. A no-grad region's outputs are detached, so fine-tuning
    still trains nothing inside it. An enabled autocast region is left (and refused)."""
    graph = gm.graph
    for node in list(graph.nodes):
        kind = getattr(node.target, "__name__", "")
        if node.op != "call_function" or kind not in REGIONS:
            continue
        at = REGIONS[kind]
        if kind == "wrap_with_autocast" and node.args[2]:  # enabled: other maths inside
            continue
        sub = _get_attr(gm, node.args[at].target)
        if not isinstance(sub, fx.GraphModule):
            continue
        inputs = [n for n in sub.graph.nodes if n.op == "placeholder"]
        values: dict[fx.Node, fx.Node] = dict(zip(inputs, node.args[at + 1:]))
        with graph.inserting_before(node):
            for inner in sub.graph.find_nodes(op="get_attr"):  # its own constants
                name = _flat_name(f"{node.args[at].target}_{inner.target}", gm)
                setattr(gm, name, _get_attr(sub, inner.target))
                values[inner] = graph.get_attr(name)
            outputs = graph.graph_copy(sub.graph, values)
            if kind == "wrap_with_set_grad_enabled" and not node.args[0]:
                outputs = tuple(_detached(graph, o) for o in outputs)
        for user in list(node.users):
            if user.target is not operator.getitem:
                raise ModelError(f"cannot read the outputs of {kind} ({node.name}); "
                                 "compressor needs a flat graph")
            user.replace_all_uses_with(outputs[user.args[1]])
            graph.erase_node(user)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    gm.recompile()


def _detached(graph: fx.Graph, node: fx.Node) -> fx.Node:
    out = graph.call_function(torch.ops.aten.detach.default, (node,))
    out.meta = dict(node.meta)
    return out


def _strip_plumbing(graph: fx.Graph) -> None:
    for node in list(graph.nodes):
        if node.op == "call_module" or \
                (node.op == "call_function" and "_assert" in str(node.target)):
            if not node.users:
                graph.erase_node(node)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ModelError(f"the model takes {len(placeholders)} inputs; compressor supports models "
                         "with one input tensor")
    graph._codegen = CodeGen()
    out = next(n for n in graph.nodes if n.op == "output")
    result = out.args[0]
    if isinstance(result, (tuple, list)):
        if len(result) != 1:
            raise ModelError(f"the model returns {len(result)} outputs; compressor needs one "
                             "tensor of logits")
        out.args = (result[0],)


def _own_tensors(gm: fx.GraphModule) -> tuple[nn.Module, dict[str, str]]:
    """Copy every tensor the graph reads onto a new root under a flat name; Linear weights and
    biases become trainable parameters. Returns the root and {flat name: original name}."""
    graph = gm.graph
    trainable = {a.target for n in graph.nodes if n.target in (LINEAR, *CONV)
                 for a in n.args[1:3] if isinstance(a, fx.Node)}
    root = nn.Module()
    original_names: dict[str, str] = {}
    renamed: dict[str, str] = {}  # one tensor per original name, so tied weights stay tied
    for node in graph.nodes:
        if node.op != "get_attr":
            continue
        if node.target in renamed:
            node.target = renamed[node.target]
            continue
        value = _get_attr(gm, node.target)
        if isinstance(value, fx.GraphModule):
            ops = sorted({getattr(u.target, "__name__", str(u.target)) for u in node.users})
            raise ModelError(f"the model runs a region torch.export keeps as a sub-graph "
                             f"({', '.join(ops)} at {node.target}: an enabled torch.autocast, "
                             "torch.cond or similar); compressor needs one flat float32 graph: "
                             "run that part outside the region")
        if not isinstance(value, torch.Tensor):
            raise ModelError(f"the model holds a {type(value).__name__} at {node.target}; "
                             "compressor supports tensor attributes only")
        name = _flat_name(node.target, root)
        tensor = value.detach().clone()
        if node.target in trainable and tensor.is_floating_point():
            root.register_parameter(name, nn.Parameter(tensor))
        else:
            root.register_buffer(name, tensor)
        original_names[name], renamed[node.target] = node.target, name
        node.target = name
    return root, original_names


def outputs_of(gm: fx.GraphModule, names: list[str]) -> fx.GraphModule:
    """A view of `gm` (sharing its parameters) that returns the named nodes as a tuple and
    computes nothing else (later layers are dropped)."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    graph.graph_copy(gm.graph, env)
    nodes = {n.name: n for n in gm.graph.nodes}
    graph.output(tuple(env[nodes[name]] for name in names))
    graph.eliminate_dead_code()
    return fx.GraphModule(gm, graph)


def sharing_tensors(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of `gm` that shares its tensors: it keeps computing what `gm` computes now while
    `gm`'s tensors are only ever replaced (`set_tensor`), never changed in place. A reference
    that costs no second copy of a large model's weights."""
    graph = fx.Graph()
    graph.output(graph.graph_copy(gm.graph, {}))
    view = fx.GraphModule(gm, graph)
    view.meta.update(gm.meta)
    return view


def get_tensor(gm: fx.GraphModule, name: str) -> torch.Tensor:
    return getattr(gm, name)


def set_tensor(gm: fx.GraphModule, name: str, value: torch.Tensor) -> None:
    """Replace a parameter or buffer by a new tensor (of any shape).

    Conv kernels are kept channels-last: torch's CPU convolutions then run in NHWC whatever the
    input's layout, which is faster on the CPU for counting, refits and fine-tuning."""
    value = value.detach()
    value = value.contiguous(memory_format=torch.channels_last) if value.ndim == 4 else \
        value.contiguous()
    if name in gm._parameters:
        gm._parameters[name] = nn.Parameter(value)
    else:
        gm._buffers[name] = value


def add_zero_bias(gm: fx.GraphModule, layer: fx.Node) -> str:
    """Give a bias-free linear or conv node a zero bias parameter (so constants can be folded
    into it)."""
    weight = get_tensor(gm, layer.args[1].target)
    name = _flat_name(f"{layer.args[1].target}_bias", gm)
    gm.register_parameter(name, nn.Parameter(torch.zeros(weight.shape[0], dtype=weight.dtype)))
    with gm.graph.inserting_before(layer):
        bias = gm.graph.get_attr(name)
    args = list(layer.args) + [None] * max(0, 3 - len(layer.args))
    args[2] = bias
    layer.args = tuple(args)
    gm.recompile()
    return name


def run_batched(gm: nn.Module, x: torch.Tensor, batch_size: int = 1024, *,
                device: str = "cpu") -> torch.Tensor:
    """Outputs of `gm` on `x` (on the CPU), computed on `device` in batches without
    gradients (of fewer samples where a graph's activations would not fit:
    `samples_per_forward`)."""
    if isinstance(gm, fx.GraphModule):
        batch_size = samples_per_forward(gm, batch_size)
    with torch.no_grad(), on_device(gm, device):
        return torch.cat([output_tensor(gm(x[i:i + batch_size].to(device))).cpu()
                          for i in batch_starts(x.shape[0], batch_size)])


@contextmanager
def on_device(module: nn.Module, device: str):
    """`module` on `device` inside the block and back where it was after (a no-op when it is
    there already: blocks nest). Parameters move in place, so views sharing them follow."""
    target = torch.device(device)
    first = next(itertools.chain(module.parameters(), module.buffers()), None)
    if first is None or first.device.type == target.type:
        yield module
        return
    before = first.device
    module.to(target)
    try:
        yield module
    finally:
        module.to(before)


def _get_attr(gm: nn.Module, target: str) -> object:
    value: object = gm
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _flat_name(target: str, owner: nn.Module) -> str:
    name = re.sub(r"\W", "_", target)
    name = name if name[:1].isalpha() else f"p_{name}"
    base, i = name, 1
    while hasattr(owner, name):
        name, i = f"{base}_{i}", i + 1
    return name
