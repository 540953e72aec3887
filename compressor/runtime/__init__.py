"""Run an ONNX file with sparse weights on the CPU, with sparse kernels where they are faster.

`compress --format csr` stores weight matrices as ONNX sparse initializers. A plain onnxruntime
session turns those into dense tensors when it loads the file: the file is smaller, the
speed is the dense model's. This module loads such a file and runs each sparse layer
(a Gemm or MatMul whose weight is a sparse initializer) with whichever kernel is fastest on
this CPU, at the batch size and thread count you run it at:

- `dense`: onnxruntime's Gemm, with the weight made dense;
- `ort-sparse`: onnxruntime's com.microsoft SparseToDenseMatMul, the CSR weight fed as a
  run-time input (onnxruntime accepts sparse tensors only as inputs); single-threaded;
- `scipy`: scipy's CSR x dense product, between two onnxruntime sessions (the graph is cut
  at the layer); single-threaded.

Everything else runs in onnxruntime. It needs numpy, scipy, onnx and onnxruntime, not torch::

    from compressor.runtime import SparseModel
    model = SparseModel.load("model.compressed.onnx", batch=32, threads=1)
    logits = model.run(x)           # x: float32 array [N, ...] (int64 ids for a text model)
    for layer in model.layers:      # what was chosen, and the times that chose it
        print(layer.name, layer.kernel, layer.times_ms)
"""

from .kernels import KERNELS, time_kernels
from .model import Layer, SparseModel, example_input, input_dtype
from .session import session
from .storage import KERNELS_KEY, set_kernels, stored_kernels, to_dense
from .timing import latencies_ms, time_ms, timings

__all__ = ["KERNELS", "KERNELS_KEY", "Layer", "SparseModel", "example_input", "input_dtype",
           "latencies_ms", "session",
           "set_kernels", "stored_kernels", "time_kernels", "time_ms", "timings", "to_dense"]
