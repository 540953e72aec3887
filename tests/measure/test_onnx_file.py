from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from compressor.errors import DataError, ModelError
from compressor.export import formats
from compressor.export.to_onnx import to_onnx
from compressor.measure.onnx_file import fit_input, flops_per_sample, load_onnx, parameter_count
from tests.helpers import graph_of
from tests.nets import TINY, tiny

TINY_WEIGHTS = sum(a * b for a, b in zip(TINY, TINY[1:]))


def export(net: nn.Module, shape: tuple[int, ...]) -> onnx.ModelProto:
    x = torch.randn(2, *shape)
    return onnx.load_from_string(to_onnx(graph_of(net, x), x))


def test_flops_of_an_exported_mlp_are_twice_its_weights_and_parameters_add_biases():
    proto = export(tiny(), (20,))
    assert flops_per_sample(proto) == (2 * TINY_WEIGHTS, ())
    assert parameter_count(proto) == sum(p.numel() for p in tiny().parameters())


def test_zero_weights_cost_dense_flops_and_no_sparse_flops():
    """A dense kernel multiplies zeros too (a zero-initialised BatchNorm folds into zero
    weights); a sparse kernel skips them."""
    proto = export(tiny(), (20,))
    weight = next(t for t in proto.graph.initializer if t.name == "0.weight")
    array = numpy_helper.to_array(weight).copy()
    array[:5] = 0  # five rows of 20 inputs
    weight.CopyFrom(numpy_helper.from_array(array, weight.name))
    assert flops_per_sample(proto)[0] == 2 * TINY_WEIGHTS
    assert flops_per_sample(proto, nonzero=True)[0] == 2 * (TINY_WEIGHTS - 5 * 20)
    assert parameter_count(proto) == sum(p.numel() for p in tiny().parameters())


def test_conv_flops_count_each_weight_at_every_output_position():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 5))
    flops, uncounted = flops_per_sample(export(net, (1, 28, 28)))
    assert uncounted == ()
    assert flops == 2 * (4 * 9 * 26 * 26) + 2 * (4 * 26 * 26 * 5)


def test_a_matmul_of_two_computed_tensors_counts_its_multiply_adds_where_shapes_are_known():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    w = numpy_helper.from_array(np.ones((3, 3), np.float32), "w")
    nodes = [helper.make_node("Relu", ["w"], ["rw"]), helper.make_node("MatMul", ["x", "rw"], ["y"])]
    proto = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]))
    assert flops_per_sample(proto) == (2 * 3 * 3, ())
    unknown = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "F"])
    proto2 = helper.make_model(helper.make_graph(nodes, "g", [unknown], [y], [w]))
    assert flops_per_sample(proto2) == (0, ("MatMul",))  # how many multiply-adds: unknown
    assert parameter_count(proto) == 9


@pytest.mark.parametrize("rows", [["T", "N"], ["4*N"]], ids=["tokens first", "windows"])
def test_weights_count_once_per_row_a_sample_makes_wherever_the_batch_sits(rows):
    """[T, N, F] after nn.MultiheadAttention (T = 5 here) and [4*N, F] for four windows
    per sample (Swin): a weight is applied 5 and 4 times per sample."""
    shape = [5, "N"] if rows[0] == "T" else rows
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [*shape, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [*shape, 2])
    w = numpy_helper.from_array(np.ones((3, 2), np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    batch = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 1])  # the input
    graph = helper.make_graph([helper.make_node("Identity", ["b"], ["unused"]), *nodes], "g",
                              [batch, x], [y], [w])
    per_sample = 5 if rows[0] == "T" else 4
    assert flops_per_sample(helper.make_model(graph)) == (2 * 3 * 2 * per_sample, ())


def test_sparse_initializers_count_their_stored_values_and_their_dense_flops():
    proto = export(tiny(), (20,))
    weight = next(t for t in proto.graph.initializer if t.name == "0.weight")
    dense = numpy_helper.to_array(weight)
    flat = np.flatnonzero(np.abs(dense) > 0.1)
    values = numpy_helper.from_array(dense.reshape(-1)[flat].astype(np.float32), weight.name)
    indices = numpy_helper.from_array(flat.astype(np.int64), weight.name + "_indices")
    sparse = helper.make_sparse_tensor(values, indices, list(dense.shape))
    proto.graph.initializer.remove(weight)
    for info in [v for v in proto.graph.value_info if v.name == weight.name]:
        proto.graph.value_info.remove(info)
    proto.graph.sparse_initializer.append(sparse)
    onnx.checker.check_model(proto)
    expected = sum(p.numel() for p in tiny().parameters()) - dense.size + flat.size
    assert parameter_count(proto) == expected
    assert flops_per_sample(proto)[0] == 2 * TINY_WEIGHTS
    assert flops_per_sample(proto, nonzero=True)[0] == 2 * (TINY_WEIGHTS - dense.size + flat.size)


def test_load_onnx_reads_the_input_shape_without_the_batch_axis(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(export(tiny(), (20,)), path)
    model = load_onnx(path)
    assert (model.input_name, model.input_dims, len(model)) == ("input", (20,), path.stat().st_size)


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"), (b"\x08\x07garbage" * 10, "not a valid ONNX model"),
    (b"PK\x03\x04 a zip, not onnx", "is a PyTorch file, not ONNX")])
def test_load_onnx_refuses_damaged_files_in_one_sentence(tmp_path, content, message):
    path = tmp_path / "m.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        load_onnx(path)


def test_load_onnx_refuses_external_data_and_runs_only_one_input_models(tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save(export(tiny(), (20,)), path, save_as_external_data=True,
              all_tensors_to_one_file=True, location="ext.data", size_threshold=0)
    with pytest.raises(ModelError, match="external data"):
        load_onnx(path)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    graph = helper.make_graph([helper.make_node("Add", ["x", "z"], ["y"])], "g", [x, z], [y])
    onnx.save(helper.make_model(graph), tmp_path / "two.onnx")
    two = load_onnx(tmp_path / "two.onnx")  # its size and FLOPs can be checked, not its outputs
    assert flops_per_sample(two.proto) == (0, ())
    with pytest.raises(ModelError, match="does not have one input and one output"):
        fit_input(two, torch.zeros(4, 3), source="d")


def test_fit_input_reshapes_flat_data_to_the_models_input_shape(tmp_path):
    path = tmp_path / "img.onnx"
    torch.manual_seed(0)
    onnx.save(export(nn.Sequential(nn.Flatten(), nn.Linear(784, 3)), (1, 28, 28)), path)
    model = load_onnx(path)
    assert fit_input(model, torch.zeros(5, 784), source="d").shape == (5, 1, 28, 28)
    assert fit_input(model, torch.zeros(5, 28, 28), source="d").shape == (5, 1, 28, 28)
    with pytest.raises(DataError, match=r"\[N, 13\] but .* takes \[N, 1, 28, 28\]"):
        fit_input(model, torch.zeros(5, 13), source="d")


def test_flops_and_parameters_do_not_depend_on_storage(sparse_model):
    for proto in (onnx.load_from_string(sparse_model),
                  formats.quantize(onnx.load_from_string(sparse_model))):
        stored = formats.store_sparse(proto)
        assert stored.graph.sparse_initializer
        assert flops_per_sample(stored) == flops_per_sample(proto)
        assert flops_per_sample(proto)[1] == ()


def test_a_layer_over_constants_alone_costs_no_flops_per_sample_in_the_graph_or_the_file():
    """A position encoding computed from a fixed grid by a 1x1 convolution (XCiT's) is the same
    at every batch size: the export folds it into a constant, and the working graph's count
    (what `--target` and the report count) leaves it out as the file's count does."""
    from compressor.graph import count
    from compressor.graph.trace import trace

    class Encoded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.encode = nn.Conv2d(1, 8, 4, stride=4), nn.Conv2d(2, 8, 1)
            self.register_buffer("grid", torch.rand(1, 2, 4, 4))
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            tokens = self.embed(x) + self.encode(self.grid)
            return self.head(tokens.flatten(2).mean(2))

    x = torch.randn(4, 1, 16, 16)
    gm = graph_of(Encoded().eval(), x[:2])
    expected = 2 * (8 * 16) * 16 + 2 * 8 * 3  # the patch convolution at 16 positions, the head
    assert count.flops(gm, trace(gm)) == expected
    assert flops_per_sample(onnx.load_from_string(to_onnx(gm, x[:2]))) == (expected, ())


def test_a_layer_over_a_normalized_table_counts_nothing_per_sample_in_the_file():
    """DeBERTa-v3 runs its key and query Linears on its LayerNorm'ed relative position
    embeddings: the export keeps the product, which onnxruntime computes once when it loads
    the file; neither count charges it per sample."""
    from compressor.graph import count
    from compressor.graph.trace import trace

    class Table(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.norm = nn.Linear(4, 8), nn.LayerNorm(8)
            self.table = nn.Parameter(torch.randn(5, 8))
            self.project, self.head = nn.Linear(8, 8), nn.Linear(8, 3)

        def forward(self, x):
            tokens = self.embed(x) + self.project(self.norm(self.table))
            return self.head(tokens.mean(1))

    x = torch.randn(4, 5, 4)
    gm = graph_of(Table().eval(), x[:2])
    proto = onnx.load_from_string(to_onnx(gm, x[:2]))
    assert len([n for n in proto.graph.node if n.op_type in ("Gemm", "MatMul")]) == 3  # kept
    expected = 2 * (4 * 8) * 5 + 2 * 8 * 3  # the embedding at 5 tokens, the head
    assert count.flops(gm, trace(gm)) == expected
    assert flops_per_sample(proto) == (expected, ())
