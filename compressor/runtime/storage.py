"""What a packed file stores for the runtime: sparse weights (read back dense), and the kernel
`compress` chose for each sparse layer (written into the file's metadata, read at load).
The writer and the reader of that metadata key live here together."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import helper, numpy_helper

KERNELS_KEY = "compressor.kernels"  # metadata: {weight name: kernel} measured by compress


def to_dense(sparse: onnx.SparseTensorProto) -> np.ndarray:
    """The dense array of a sparse tensor (linear or [nnz, rank] indices)."""
    values = numpy_helper.to_array(sparse.values)
    index = numpy_helper.to_array(sparse.indices).astype(np.int64)
    shape = tuple(int(d) for d in sparse.dims)
    dense = np.zeros(int(np.prod(shape)), dtype=values.dtype)
    if index.ndim == 2:
        index = np.ravel_multi_index(tuple(index.T), shape)
    dense[index] = values
    return dense.reshape(shape)


def set_kernels(proto: onnx.ModelProto, kernels: dict[str, str]) -> None:
    """Record in `proto`'s metadata which kernel `compressor.runtime` should run each sparse
    layer with (`SparseModel.load(..., kernels="stored")`)."""
    for prop in [p for p in proto.metadata_props if p.key == KERNELS_KEY]:
        proto.metadata_props.remove(prop)
    helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props},
                                   KERNELS_KEY: json.dumps(kernels, sort_keys=True)})


def stored_kernels(proto: onnx.ModelProto) -> dict[str, str]:
    """The kernel per layer `compress` chose and recorded in the file (empty if none)."""
    for prop in proto.metadata_props:
        if prop.key == KERNELS_KEY:
            return json.loads(prop.value)
    return {}
