"""The working graph keeps conv kernels channels-last (torch's fast CPU layout) through every
replacement, and computes what the model computes."""

from __future__ import annotations

import operator

import pytest
import torch
from torch.fx.passes.shape_prop import ShapeProp

from compressor.errors import ModelError
from compressor.graph.capture import _clean, get_tensor, set_tensor
from compressor.graph.trace import trace
from tests.helpers import graph_of
from tests.nets import SmallCNN, tiny


def _kernels(gm) -> dict[str, torch.Tensor]:
    return {name: p for name, p in gm.named_parameters() if p.ndim == 4}


def test_conv_kernels_are_channels_last_and_stay_so_when_replaced():
    net = SmallCNN().eval()
    x = torch.randn(8, 1, 12, 12)
    gm = graph_of(net, x[:2])
    kernels = _kernels(gm)
    assert kernels and all(k.is_contiguous(memory_format=torch.channels_last)
                           for k in kernels.values())
    name = next(iter(kernels))
    set_tensor(gm, name, get_tensor(gm, name).contiguous() * 1.0)  # handed a plain tensor
    assert get_tensor(gm, name).is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), net(x), rtol=1e-5, atol=1e-5)


def test_linear_weights_stay_plainly_contiguous():
    gm = graph_of(tiny(), torch.randn(2, 20))
    assert all(p.is_contiguous() for p in gm.parameters())


def _with_region(kind: str) -> torch.fx.GraphModule:
    """What torch.export makes of Hugging Face's rotary embedding (a `@torch.no_grad()`
    forward) or of a disabled autocast region: fc1 -> relu -> fc2, where the input first gets
    sin(frequencies * 2) added inside the region, kept as a sub-graph called by a higher-order
    op."""
    torch.manual_seed(0)
    inner = torch.fx.Graph()
    frequencies = inner.placeholder("frequencies")
    table = inner.call_function(torch.ops.aten.sin.default,
                                (inner.call_function(torch.ops.aten.mul.Tensor, (frequencies, 2.0)),))
    inner.output((table,))
    root = torch.nn.Module()
    root.fc1, root.fc2 = torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)
    root.register_buffer("frequencies", torch.linspace(0.1, 1.0, 8))
    root.region = torch.fx.GraphModule(torch.nn.Module(), inner)
    outer = torch.fx.Graph()
    x = outer.placeholder("x")
    hop = getattr(torch.ops.higher_order, kind)
    flags = (False,) if kind == "wrap_with_set_grad_enabled" else ("cpu", None, False, None)
    region = outer.call_function(hop, (*flags, outer.get_attr("region"),
                                       outer.get_attr("frequencies")))
    offset = outer.call_function(operator.getitem, (region, 0))
    h = outer.call_function(torch.ops.aten.add.Tensor, (x, offset))
    h = outer.call_function(torch.ops.aten.linear.default,
                            (h, outer.get_attr("fc1.weight"), outer.get_attr("fc1.bias")))
    h = outer.call_function(torch.ops.aten.relu.default, (h,))
    outer.output(outer.call_function(torch.ops.aten.linear.default,
                                     (h, outer.get_attr("fc2.weight"), outer.get_attr("fc2.bias"))))
    gm = torch.fx.GraphModule(root, outer)
    ShapeProp(gm).propagate(torch.randn(2, 8))
    for node in gm.graph.nodes:  # shapes where export records them
        shape = getattr(node.meta.get("tensor_meta"), "shape", None)
        if shape is not None:
            node.meta["val"] = torch.empty(shape)
    return gm


@pytest.mark.parametrize("kind", ["wrap_with_set_grad_enabled", "wrap_with_autocast"])
def test_no_grad_and_disabled_autocast_regions_are_inlined(kind):
    gm = _with_region(kind)
    x = torch.randn(5, 8)
    with torch.no_grad():
        expected = gm(x)
    clean = _clean(gm)
    assert not any(isinstance(m, torch.fx.GraphModule) for m in clean.children())
    with torch.no_grad():
        torch.testing.assert_close(clean(x), expected)
    assert [g.name for g in trace(clean).groups] == ["fc1"]
    sine = next(n for n in clean.graph.nodes if n.target is torch.ops.aten.sin.default)
    detached = [u.target for u in sine.users] == [torch.ops.aten.detach.default]
    assert detached == (kind == "wrap_with_set_grad_enabled")  # no grad stays no grad


def test_an_enabled_autocast_region_is_refused_with_its_name():
    gm = _with_region("wrap_with_autocast")
    hop = next(n for n in gm.graph.nodes if "autocast" in str(n.target))
    hop.args = (*hop.args[:2], True, *hop.args[3:])  # enabled: other maths inside
    with pytest.raises(ModelError, match="wrap_with_autocast at region"):
        _clean(gm)


def test_a_graph_sharing_tensors_computes_what_the_original_did_after_replacements():
    """The lsq reference: no second copy of the weights, and what `gm` computed before its
    tensors were replaced (set_tensor never writes into a tensor)."""
    from compressor.graph.capture import sharing_tensors

    x = torch.randn(8, 20)
    gm = graph_of(tiny(), x[:2])
    with torch.no_grad():
        before = gm(x)
    view = sharing_tensors(gm)
    name = next(n for n, p in gm.named_parameters() if p.ndim == 2)
    assert get_tensor(view, name) is get_tensor(gm, name)
    set_tensor(gm, name, torch.zeros_like(get_tensor(gm, name)))
    with torch.no_grad():
        torch.testing.assert_close(view(x), before)
        assert not torch.allclose(gm(x), before)


def test_a_loaded_program_lets_its_weights_go_and_captures_stay_equal(tmp_path):
    """A `.pt2` program's own weights are dropped once its clean graph is made (the graph
    owns a copy); every later capture copies that graph and computes the model."""
    from compressor.commands.compress import prepared
    from compressor.graph.capture import capture, clean_graph
    from compressor.io.load import load_model

    net, x = SmallCNN().eval(), torch.randn(6, 1, 12, 12)
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(net, (x[:2],)), str(path))
    model = prepared(load_model(path), owned=True)
    assert not model.program.state_dict
    assert clean_graph(model) is model.run
    copied = capture(model)
    assert copied is not model.run
    with torch.no_grad():
        torch.testing.assert_close(copied(x), net(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.run(x), net(x), rtol=1e-5, atol=1e-5)


def test_a_forward_takes_no_more_samples_than_four_of_its_largest_activations_fit(monkeypatch):
    from compressor.graph import capture, sizes

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3))
    x = torch.randn(10, 16, 8)  # the widest activation: 16 tokens x 64 a sample
    gm = graph_of(net, x[:2])
    whole = capture.run_batched(gm, x)
    assert sizes.samples_per_forward(gm, 1024) == 1024
    monkeypatch.setattr(sizes, "PROBE_BYTES", 4 * 4 * 16 * 64 * 3)
    assert sizes.samples_per_forward(gm, 1024) == 3
    seen = []
    monkeypatch.setattr(capture, "batch_starts",
                        lambda n, size: seen.append(size) or range(0, n, size))
    torch.testing.assert_close(capture.run_batched(gm, x), whole)
    assert seen == [3]
