from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from compressor.export.layout import fold_layout
from compressor.export.to_onnx import to_onnx
from compressor.graph import count
from compressor.graph.trace import trace
from compressor.measure.onnx_file import flops_per_sample
from tests.export.test_to_onnx import _Attention
from tests.helpers import graph_of


class _Block(torch.nn.Module):
    """A pre-norm transformer block as timm writes it: a fused qkv Linear split into heads,
    attention, a GELU feed-forward, residual sums."""

    def __init__(self, norm=torch.nn.LayerNorm) -> None:
        super().__init__()
        self.norm1, self.norm2 = norm(16), norm(16)
        self.attn = _Attention("none")
        self.fc1, self.fc2 = torch.nn.Linear(16, 32), torch.nn.Linear(32, 16)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm2(x))))


def test_an_exported_block_runs_no_layout_op_that_only_reshapes():
    """q, k and v each read one Slice of the qkv Gemm, reshaped once (no 5-D reshape, split,
    squeezes or transposes); fc1's output reaches fc2 through its GELU with no reshape between;
    the file's outputs are the model's at another batch size than the export's."""
    import onnxruntime as ort

    net, x = _Block().eval(), torch.randn(5, 6, 16)
    proto = onnx.load_from_string(to_onnx(graph_of(net, x[:2]), x[:2]))
    ops = Counter(n.op_type for n in proto.graph.node)
    producer = {o: n for n in proto.graph.node for o in n.output}
    attention = next(n for n in proto.graph.node if n.op_type == "Attention")
    for name in attention.input[:3]:
        reshape = producer[name]
        assert reshape.op_type == "Reshape" and producer[reshape.input[0]].op_type == "Slice"
        assert producer[producer[reshape.input[0]].input[0]].op_type == "Gemm"
    assert not ops.keys() & {"Squeeze", "Transpose", "Split"}
    erf = next(n for n in proto.graph.node if n.op_type == "Erf")
    assert producer[producer[erf.input[0]].input[0]].op_type == "Gemm"  # through x / √2 only
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, net(x).detach().numpy(), rtol=1e-4, atol=1e-5)


class _Encoder(torch.nn.Module):
    """Two pre-norm blocks, a final norm, the mean over tokens and a head."""

    def __init__(self, norm=torch.nn.LayerNorm) -> None:
        super().__init__()
        self.blocks = torch.nn.Sequential(_Block(norm), _Block(norm))
        self.norm, self.head = norm(16), torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.norm(self.blocks(x)).mean(1))


@pytest.mark.parametrize(("norm", "last_op"), [(torch.nn.LayerNorm, "LayerNormalization"),
                                               (torch.nn.RMSNorm, "Mul")])
def test_the_residual_stream_stays_in_the_rows_the_gemms_read_and_write(norm, last_op):
    """Between the first residual sum and the last norm, the sums and norms (a LayerNorm's one
    op, an RMSNorm's mean of squares, root, quotient and product) run on the Gemms' rows: no
    Reshape between a Gemm and the sum it feeds, or between a norm and the Gemm it feeds (but
    the first block's), with the model's outputs at another batch size and the file's FLOPs
    counted as the working graph's."""
    import onnxruntime as ort

    net, x = _Encoder(norm).eval(), torch.randn(5, 6, 16)
    gm = graph_of(net, x[:2])
    proto = onnx.load_from_string(to_onnx(gm, x[:2]))
    assert flops_per_sample(proto) == (count.flops(gm, trace(gm)), ())  # counted as before
    producer = {o: n for n in proto.graph.node for o in n.output}

    def through_reshape(node: onnx.NodeProto, op: str) -> list[str]:
        return [i for i in node.input if i in producer and producer[i].op_type == "Reshape"
                and producer.get(producer[i].input[0], node).op_type == op]

    sums = [n for n in proto.graph.node if n.op_type == "Add" and not through_reshape(n, "Gemm")
            and sum(i in producer and producer[i].op_type == "Gemm" for i in n.input) == 1]
    assert len(sums) == 4  # two residual sums per block read their Gemm directly
    gemms = [n for n in proto.graph.node if n.op_type == "Gemm"]
    assert sum(bool(through_reshape(n, last_op)) for n in gemms) == 1
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, net(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def _model(nodes: list, shape: list, out: str = "y", **constants) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *shape])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(v), k) for k, v in constants.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _node(op: str, inputs: list, outputs: list, **attributes) -> onnx.NodeProto:
    return helper.make_node(op, inputs, outputs, **attributes)


def _moved() -> onnx.ModelProto:
    """[batch, 6, 8] -> [batch, 6, 2, 4] -> transposed to [batch, 2, 6, 4]: a real move."""
    return _model([_node("Reshape", ["x", "heads"], ["h"]),
                   _node("Transpose", ["h"], ["t"], perm=[0, 2, 1, 3]),
                   _node("Relu", ["t"], ["y"])], [6, 8], heads=np.array([-1, 6, 2, 4]))


def _shared() -> onnx.ModelProto:
    """The same transposed back and reshaped: only a reshape, but its middle value is also
    read by another op."""
    return _model([_node("Reshape", ["x", "heads"], ["h"]),
                   _node("Transpose", ["h"], ["t"], perm=[0, 2, 1, 3]),
                   _node("Transpose", ["t"], ["u"], perm=[0, 2, 1, 3]),
                   _node("Reshape", ["u", "back"], ["r"]),
                   _node("ReduceSum", ["t", "axis"], ["s"], keepdims=0),
                   _node("Concat", ["r", "s"], ["y"], axis=-1)], [6, 8],
                  heads=np.array([-1, 6, 2, 4]), back=np.array([-1, 6, 8]), axis=np.array([1]))


def _elsewhere() -> onnx.ModelProto:
    """Flattened for a Relu and restored to another shape than the input's."""
    return _model([_node("Reshape", ["x", "rows"], ["r"]), _node("Relu", ["r"], ["a"]),
                   _node("Reshape", ["a", "other"], ["b"]), _node("Softmax", ["b"], ["y"])],
                  [6, 8], rows=np.array([-1, 8]), other=np.array([-1, 8, 6]))


@pytest.mark.parametrize("build", [_moved, _shared, _elsewhere])
def test_layout_ops_that_do_more_than_reshape_are_left_alone(build):
    model = build()
    before = [n.op_type for n in model.graph.node]
    fold_layout(model)
    assert [n.op_type for n in model.graph.node] == before


def test_a_reshape_undone_around_elementwise_ops_is_not_run():
    """Rows flattened, two elementwise branches with scalar constants joined, and the result
    restored to the input's shape: the ops read the input itself, with the same results."""
    model = _model([_node("Reshape", ["x", "rows"], ["r"]), _node("Mul", ["r", "half"], ["m"]),
                    _node("Erf", ["r"], ["e"]), _node("Add", ["m", "e"], ["a"]),
                    _node("Reshape", ["a", "back"], ["b"]), _node("Softmax", ["b"], ["y"])],
                   [6, 8], rows=np.array([-1, 8]), back=np.array([-1, 6, 8]),
                   half=np.array(0.5, np.float32))
    x = np.random.default_rng(0).standard_normal((3, 6, 8)).astype(np.float32)
    expected = ReferenceEvaluator(model).run(None, {"x": x})[0]
    fold_layout(model)
    assert "Reshape" not in {n.op_type for n in model.graph.node}
    np.testing.assert_allclose(ReferenceEvaluator(model).run(None, {"x": x})[0], expected)
