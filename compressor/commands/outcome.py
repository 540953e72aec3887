"""What one `compress` run produced, from the input model to the file that is written."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from ..export.pack import Packed
from ..graph.trace import Trace
from ..io.cores import ThreadUse
from ..io.data import DataSplits
from ..io.inputs import InputLayout
from ..plan import Plan
from ..prune.cycles import Pruned
from ..prune.factor import Factored


@dataclass(frozen=True)
class Outcome:
    """What one run produced, from the input model to the file that is written."""

    model_format: str
    splits: DataSplits | None
    probe: torch.Tensor  # inputs for parity and latency: held-back data, or random
    layout: InputLayout  # how the data was shaped for the model
    plan: Plan
    dense: fx.GraphModule
    dense_found: Trace  # the input model's trace
    onnx_dense: bytes | None  # kept for the latency and the variants (None without them,
    #                           and on ranks but 0 of a torch.distributed group)
    pruned_gm: fx.GraphModule
    found: Trace  # the pruned model's (its layers changed where factoring split some)
    pruned: Pruned
    onnx_pruned: bytes | None  # float32, zeros kept (None on ranks but 0)
    packed: Packed | None  # what is written (None on ranks but 0)
    parity: tuple[float, int, float, float | None] | None  # max |onnxruntime - pytorch| of
    # the float32 export, samples, max |pytorch output|, max |pytorch float32 - float64| where
    # the first exceeded the tolerance as rounding (None on ranks but 0)
    packed_diff: float | None = None  # max |packed - float32| (int8 and low-rank files)
    factored: tuple[Factored, ...] = ()  # layers factored before pruning
    threads: ThreadUse | None = None  # torch's threads during the run
    processes: int = 1  # of the torch.distributed group that pruned it (1: none)
    onnx_dense_size: int = 0  # bytes of the dense export (rank 0)
