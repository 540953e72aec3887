"""The residual stream in its principal directions (SliceGPT, Ashkboos et al. 2024), so that
removing its last units deletes the directions the stream uses least instead of original
features.

A pre-norm transformer's stream is written by the embedding and every block's output
projections (with the constants added to it: positions, a class token) and read only through
LayerNorms or RMSNorms by the blocks' input projections and the head. `make_invariant` folds
each norm's scale and shift into the layers that read it, makes every writer write vectors of
mean zero (so that a LayerNorm equals an RMSNorm) and turns each LayerNorm into an RMSNorm:
the model computes the same function, and the RMSNorms are invariant to a rotation of the
stream. `rotate` then rotates the stream by the eigenvectors of the covariance of what the
norms read (each token scaled to unit norm: the norm's own view of it), writers by Qᵀ,
readers by Q, most used direction first; the stream's units are then those directions, ranked
by their eigenvalues. Measured against removing original features in docs/method.md."""

from __future__ import annotations

import torch
from torch import fx

from ..graph.capture import get_tensor, outputs_of, set_tensor
from ..graph.groups import PrunableGroup, Slice
from ..graph.ops import (
    ADD,
    CAT,
    CONV,
    EMBEDDING,
    FLATTEN,
    IDENTITY,
    LINEAR,
    MEAN,
    MUL,
    NORMS,
    RESIZE,
    TRANSPOSE,
)
from ..graph.sizes import samples_per_pass
from ..io.cores import batch_starts
from .lsq import add_gram

LAYER_NORM, RMS_NORM = (op for op, name in NORMS.items() if name in ("LayerNorm", "RMSNorm"))
aten = torch.ops.aten
# Ops between a norm and a layer reading it that treat every feature alike (the tracer has
# checked that the features reach the layer as its input features).
READ_THROUGH = {*IDENTITY, *TRANSPOSE, *FLATTEN, MEAN, aten.select.int, aten.slice.Tensor,
                aten.unsqueeze.default, aten.squeeze.dim, aten.expand.default}
# Ops between the stream's writers and a norm that are linear and treat every feature alike, so
# that centring or rotating what the writers write commutes with them (a max pool, an
# activation or a per-feature scale on the way does not).
WRITE_THROUGH = {*READ_THROUGH, *ADD, *CAT, *RESIZE, aten.avg_pool1d.default,
                 aten.avg_pool2d.default, aten.adaptive_avg_pool1d.default,
                 aten.adaptive_avg_pool2d.default}
WRITERS = (LINEAR, *CONV, EMBEDDING)


def norms_of(gm: fx.GraphModule, group: PrunableGroup) -> list[fx.Node]:
    """The LayerNorm and RMSNorm nodes over the stream's units, in graph order."""
    names = {name for name, _, _ in group.reshapes}
    return [n for n in gm.graph.nodes if n.name in names and n.target in (LAYER_NORM, RMS_NORM)]


def why_not(gm: fx.GraphModule, group: PrunableGroup) -> str | None:
    """Why the stream cannot be rotated (None if it can): every layer that reads it must read
    it through a norm over it, directly or through ops that treat each feature alike, and
    every norm's output must go only to such readers (a post-norm block adds it back to the
    stream, where its scale could not be folded away); the stream's other constants must be
    added to it."""
    if group.parts != 1 or group.grouped_nodes:
        return "its channels are filtered or grouped per unit"
    slices = group.weights + group.biases + group.consumers + group.carried
    if any(s.block != 1 or s.offset or s.parts != 1 for s in slices):
        return "some layer reads it flattened or beside other channels"
    nodes = {n.name: n for n in gm.graph.nodes}
    norms = norms_of(gm, group)
    if not norms:
        return "it is read through no LayerNorm or RMSNorm"
    if len({n.target for n in norms}) > 1:
        return "it is read through LayerNorms and RMSNorms both"
    readers = {name: _norm_read(nodes[name]) for name in group.consumer_nodes}
    for name, norm in readers.items():
        if norm is None or norm not in norms or nodes[name].target is not LINEAR:
            return f"{name} reads it without a LayerNorm or RMSNorm"
    for norm in norms:
        if not _reaches_only(norm, set(group.consumer_nodes)):
            return f"the output of {norm.name} goes back into the stream (a post-norm block)"
    owned = {p.target for norm in norms for p in _params(norm)}
    for s in group.carried:
        if s.param not in owned and not _added(gm, s.param):
            return f"{s.param} scales it per unit (a layer scale)"
    written = {s.param for s in group.weights + group.carried}
    seen: set[str] = set()
    for norm in norms:
        op = _written_through(norm.args[0], written, seen)
        if op is not None:
            return f"what its layers write reaches {norm.name} through {op}"
    return None


def make_invariant(gm: fx.GraphModule, group: PrunableGroup) -> None:
    """Fold every norm's scale and shift into its readers and, where they are LayerNorms,
    center what every writer writes and make them RMSNorms with a unit scale (`why_not` must
    be None). The function is unchanged up to rounding; trace again afterwards (the norms'
    shifts are gone)."""
    _fold_scales(gm, group)
    size = group.size
    if any(n.target is LAYER_NORM for n in norms_of(gm, group)):  # an RMSNorm's input stays
        _rotate_writers(gm, group, torch.eye(size, dtype=torch.float64) - 1.0 / size)
    for norm in norms_of(gm, group):
        if norm.target is RMS_NORM:
            continue
        weight, bias = norm.args[2], norm.args[3] if len(norm.args) > 3 else None
        eps = norm.args[4] if len(norm.args) > 4 else 1e-5
        with gm.graph.inserting_before(norm):
            if weight is None:  # a weight to scale as the features go (`resize_reshapes`)
                name = f"{norm.name}_weight"
                gm.register_parameter(name, torch.nn.Parameter(torch.ones(size)))
                weight = gm.graph.get_attr(name)
            rms = gm.graph.call_function(RMS_NORM, (norm.args[0], list(norm.args[1]), weight,
                                                    eps))
        rms.meta = dict(norm.meta)
        norm.replace_all_uses_with(rms)
        gm.graph.erase_node(norm)
        if bias is not None:
            gm.graph.erase_node(bias)
            delattr(gm, bias.target)
    gm.graph.lint()
    gm.recompile()


def rotate(gm: fx.GraphModule, group: PrunableGroup, x: torch.Tensor,
           batch_size: int = 500) -> torch.Tensor:
    """Rotate the stream (made invariant) to the eigenvectors of what its norms read, most
    used first; returns the eigenvalues, one per unit in its new order (the stream's scores:
    its last units are the directions least used)."""
    _fold_scales(gm, group)
    norms = norms_of(gm, group)
    inputs = [n.args[0].name for n in norms]
    probe = outputs_of(gm, list(dict.fromkeys(inputs)))
    batch_size = samples_per_pass(gm, inputs, batch_size)
    size = group.size
    cov = torch.zeros(size, size, dtype=torch.float64)
    rows = dict.fromkeys(inputs, 0)
    sums = {name: torch.zeros(size, size, dtype=torch.float64) for name in rows}
    with torch.no_grad():
        for start in batch_starts(int(x.shape[0]), batch_size):
            outs = probe(x[start:start + batch_size])
            outs = outs if isinstance(outs, (tuple, list)) else (outs,)
            for name, out in zip(rows, outs):
                # rows of unit length, not centred: float32 products lose no digits here
                r = out.reshape(-1, size).float()
                r = r / r.norm(dim=1, keepdim=True).clamp_min(1e-12)
                add_gram(sums[name], r)
                rows[name] += r.shape[0]
    for name in rows:
        cov += sums[name] / max(rows[name], 1)
    values, vectors = torch.linalg.eigh(cov)
    order = values.argsort(descending=True)
    _rotate_writers(gm, group, vectors[:, order].T)
    _rotate_readers(gm, group, vectors[:, order])
    gm.recompile()
    return values[order].clamp_min(0)


def _fold_scales(gm: fx.GraphModule, group: PrunableGroup) -> None:
    """Each norm's weight (and a LayerNorm's bias) into the columns (and biases) of the layers
    that read it; the norm left with a weight of ones (and a bias of zeros)."""
    nodes = {n.name: n for n in gm.graph.nodes}
    readers: dict[str, list[tuple[str, str]]] = {}
    for s, bias, name in zip(group.consumers, group.consumer_biases, group.consumer_nodes):
        readers.setdefault(_norm_read(nodes[name]).name, []).append((s.param, bias))
    for norm in norms_of(gm, group):
        params = _params(norm)
        scale = get_tensor(gm, params[0].target).detach().double() if params else None
        shift = get_tensor(gm, params[1].target).detach().double() if len(params) > 1 else None
        for weight_name, bias_name in readers.get(norm.name, ()):
            w = get_tensor(gm, weight_name).detach()
            bias = get_tensor(gm, bias_name).detach()
            if shift is not None:
                set_tensor(gm, bias_name, (bias.double() + w.double() @ shift).to(bias.dtype))
            if scale is not None:
                set_tensor(gm, weight_name, (w.double() * scale).to(w.dtype))
        if scale is not None:
            set_tensor(gm, params[0].target, torch.ones_like(get_tensor(gm, params[0].target)))
        if shift is not None:
            set_tensor(gm, params[1].target, torch.zeros_like(get_tensor(gm, params[1].target)))


def _rotate_writers(gm: fx.GraphModule, group: PrunableGroup, m: torch.Tensor) -> None:
    """What writes the stream, times `m` on its units' axis: the producers' rows and biases,
    and the constants added to it (not the norms' own parameters)."""
    norms = {p.target for norm in norms_of(gm, group) for p in _params(norm)}
    for s in group.weights + group.biases + tuple(c for c in group.carried
                                                  if c.param not in norms):
        _times(gm, s, m)


def _rotate_readers(gm: fx.GraphModule, group: PrunableGroup, q: torch.Tensor) -> None:
    for s in group.consumers:  # columns: W Q
        _times(gm, s, q.T)


def _times(gm: fx.GraphModule, s: Slice, m: torch.Tensor) -> None:
    """Tensor `s.param` with its units' axis mixed by `m`: entry i becomes sum_j m[i, j] entry j."""
    t = get_tensor(gm, s.param).detach()
    moved = t.double().movedim(s.axis, 0)
    mixed = (m @ moved.reshape(moved.shape[0], -1)).reshape(moved.shape)
    set_tensor(gm, s.param, mixed.movedim(0, s.axis).to(t.dtype))


def _params(norm: fx.Node) -> list[fx.Node]:
    """The norm's weight (and bias) nodes."""
    end = 4 if norm.target is LAYER_NORM else 3
    return [p for p in norm.args[2:end] if isinstance(p, fx.Node)]


def _norm_read(layer: fx.Node) -> fx.Node | None:
    """The norm a layer reads the stream through, past ops that treat each feature alike."""
    node = layer.args[0]
    while isinstance(node, fx.Node) and node.target in READ_THROUGH:
        node = node.args[0]
    return node if isinstance(node, fx.Node) and node.target in (LAYER_NORM, RMS_NORM) else None


def _reaches_only(norm: fx.Node, readers: set[str]) -> bool:
    todo, seen = list(norm.users), set()
    while todo:
        node = todo.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        if node.name in readers:
            continue
        if node.target not in READ_THROUGH:
            return False
        todo += list(node.users)
    return True


def _written_through(node: fx.Node, written: set[str], seen: set[str]) -> str | None:
    """The first node on the way back from `node` to the stream's writers (layers whose weights
    are in `written`, and the constants added to it) that is not in WRITE_THROUGH nor a scale
    by one number: where centring or rotating the writers would change the function (None:
    there is none)."""
    todo = [node]
    while todo:
        node = todo.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        if node.op == "get_attr" and node.target in written:
            continue
        if node.target in WRITERS and any(isinstance(a, fx.Node) and a.target in written
                                          for a in node.args[:2]):  # embedding: weight first
            continue
        scaled = _scaled(node)
        if scaled is not None:  # one scale for every feature (Gemma's embeddings' sqrt(width))
            todo.append(scaled)
            continue
        if node.target not in WRITE_THROUGH or \
                (node.target in ADD and not all(isinstance(a, fx.Node) for a in node.args[:2])):
            return node.name
        data = node.args[0] if node.target in CAT else \
            node.args[:2] if node.target in ADD else node.args[:1]  # not the shapes read
        todo += [a for a in data if isinstance(a, fx.Node)]
    return None


def _scaled(node: fx.Node) -> fx.Node | None:
    """What `node` multiplies or divides by one number, if it does."""
    if node.target not in MUL or len(node.args) != 2:
        return None
    x, factor = node.args
    if node.target in (aten.mul.Tensor, aten.mul_.Tensor) and _scalar(x):
        x, factor = factor, x
    return x if isinstance(x, fx.Node) and _scalar(factor) and not _scalar(x) else None


def _scalar(arg) -> bool:
    """Whether `arg` is one number: a Python one, or a node whose value has one entry."""
    if isinstance(arg, (int, float)):
        return True
    value = arg.meta.get("val") if isinstance(arg, fx.Node) else None
    return isinstance(value, torch.Tensor) and type(value.numel()) is int and value.numel() == 1


def _added(gm: fx.GraphModule, param: str) -> bool:
    """Whether a parameter reaches the stream only by being added to it or concatenated with
    its tokens (through a broadcast or a slice)."""
    node = next(n for n in gm.graph.nodes if n.op == "get_attr" and n.target == param)
    while len(node.users) == 1 and next(iter(node.users)).target in (
            *IDENTITY, aten.expand.default, aten.slice.Tensor):
        node = next(iter(node.users))
    return all(u.target in (aten.add.Tensor, aten.cat.default) for u in node.users)

