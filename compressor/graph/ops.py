"""The aten ops the graph steps recognise, by role."""

from __future__ import annotations

import torch

aten = torch.ops.aten

LINEAR = aten.linear.default
EMBEDDING = aten.embedding.default  # a token table: its columns are the stream's units
CONV = (aten.conv2d.default, aten.conv1d.default)
BATCH_NORM = (aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default)
RELU = (aten.relu.default, aten.relu_.default)
# Elementwise activations a unit can be read through, by name. Positively homogeneous ones
# (f(s*z) = s*f(z) for s > 0) are those neuron merging is exact for.
ACTIVATIONS = {
    **{op: "relu" for op in RELU},
    aten.leaky_relu.default: "leaky_relu", aten.leaky_relu_.default: "leaky_relu",
    aten.gelu.default: "gelu", aten.gelu_.default: "gelu",
    aten.silu.default: "silu", aten.silu_.default: "silu",
    aten.tanh.default: "tanh", aten.tanh_.default: "tanh",
    aten.sigmoid.default: "sigmoid", aten.sigmoid_.default: "sigmoid",
    aten.elu.default: "elu", aten.elu_.default: "elu",
    aten.hardswish.default: "hardswish", aten.hardswish_.default: "hardswish",
    aten.hardsigmoid.default: "hardsigmoid", aten.hardsigmoid_.default: "hardsigmoid",
    aten.hardtanh.default: "hardtanh", aten.hardtanh_.default: "hardtanh",  # ReLU6
    aten.mish.default: "mish", aten.mish_.default: "mish",
    aten.softplus.default: "softplus", aten.selu.default: "selu", aten.selu_.default: "selu",
    aten.celu.default: "celu", aten.celu_.default: "celu",
    aten.relu6.default: "hardtanh", aten.relu6_.default: "hardtanh",
    # elementwise functions an activation may be written out with (GPT-2's gelu_new)
    aten.pow.Tensor_Scalar: "pow", aten.exp.default: "exp", aten.erf.default: "erf",
    aten.neg.default: "neg", aten.abs.default: "abs", aten.sqrt.default: "sqrt",
    aten.rsqrt.default: "rsqrt", aten.reciprocal.default: "reciprocal",
    aten.square.default: "square",  # (Persimmon's and Primer's squared ReLU)
    aten.log.default: "log", aten.log1p.default: "log1p", aten.expm1.default: "expm1",
    aten.sin.default: "sin", aten.cos.default: "cos",
    aten.clamp.default: "clamp", aten.clamp_min.default: "clamp",  # bounds that are numbers
    aten.clamp_max.default: "clamp",
}
HOMOGENEOUS = ("relu", "leaky_relu", "identity")  # identity: a unit read as it is made
# Ops that carry every channel through unchanged in number and order (elementwise per channel
# or per position), given as they appear in a captured graph.
IDENTITY = (aten.clone.default, aten.alias.default, aten.detach.default,
            aten.contiguous.default, aten.dropout.default, aten.dropout_.default,
            aten.to.dtype, aten.to.dtype_layout, aten._to_copy.default)  # and dtype casts
# Resizes over the positions, each channel alone (GhostNetV2's gate brought back to the
# feature map's size; BEiT's position bias table resized to the patches).
RESIZE = (aten.upsample_nearest2d.vec, aten.upsample_nearest2d.default,
          aten.upsample_bilinear2d.vec, aten.upsample_bilinear2d.default,
          aten.upsample_bicubic2d.vec, aten.upsample_bicubic2d.default)
POOL = (aten.max_pool2d.default, aten.max_pool1d.default, aten.avg_pool2d.default,
        aten.avg_pool1d.default, aten.adaptive_avg_pool2d.default,
        aten.adaptive_avg_pool1d.default, aten.adaptive_max_pool2d.default)
FLATTEN = (aten.flatten.using_ints, aten.view.default, aten.reshape.default,
           aten._unsafe_view.default)
ADD = (aten.add.Tensor, aten.add_.Tensor, aten.sub.Tensor, aten.sub_.Tensor)
# An elementwise product of two channel spaces joins them (a gated FFN's silu(W1 x) * (W3 x));
# by a number it carries the channels on.
MUL = (aten.mul.Tensor, aten.mul_.Tensor, aten.div.Tensor, aten.div_.Tensor)
# Normalisations over the feature axis: every output feature depends on every input feature.
NORMS = {aten.layer_norm.default: "LayerNorm", aten.rms_norm.default: "RMSNorm",
         aten.group_norm.default: "GroupNorm"}
# Axis moves that keep every channel intact.
TRANSPOSE = (aten.transpose.int, aten.permute.default, aten.t.default)
# What attention mixes tokens with; a layer whose output reaches one of these only through
# reshapes splits into heads.
ATTENTION = (aten.scaled_dot_product_attention.default, aten.softmax.int, aten._softmax.default)
MATMUL = (aten.matmul.default, aten.bmm.default, aten.einsum.default)
CAT = (aten.cat.default,)
MEAN = aten.mean.dim  # a global average pool when it averages every spatial axis
VECTOR_NORM = aten.linalg_vector_norm.default  # over positions: a per-channel reduction
SUM = aten.sum.dim_IntList
ADDCMUL = aten.addcmul.default  # input + t1 · t2 (ConvNeXt-V2's response norm: β + γ · x)
