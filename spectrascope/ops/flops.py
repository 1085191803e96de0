"""FLOP counting rules: pure functions from operator arguments (shapes) to counts.

The conventions are fvcore's (the counter the papers used):

* convolution, linear, matmul, bmm, einsum: one FLOP per multiply-accumulate (MAC); bias
  additions are free; a transposed convolution counts ``N * prod(w) * prod(x spatial)``;
* LayerNorm / GroupNorm / InstanceNorm: 5 per element with an affine weight, 4 without;
  BatchNorm at inference 2 per element with an affine weight, 1 without (5/4 in training);
* ``adaptive_avg_pool2d``: 1 per input element; nearest upsampling 1 and bilinear 4 per output
  element; every other element-wise op (activations, additions, complex multiplications,
  fixed pooling) is free;
* FFTs are free under ``fft="none"`` (as fvcore and the papers count them) and cost
  ``N * C * ceil(log2 N)`` per transform under ``fft="nlogn"``, with ``N`` the number of points
  of the transformed axes (the real-signal side for ``rfft``/``irfft``) and ``C`` every other
  element (batch and channels), for real and complex transforms alike.

``scaled_dot_product_attention`` counts its two products (``q k^T`` and ``attn v``), as fvcore
counts the explicit ``q @ k.T`` / ``attn @ v`` form the papers' models used; stock fvcore skips
the fused operator (registering an fvcore handler with this formula gives equal counts).

One more difference from fvcore, on purpose: fvcore's ``matmul`` rule multiplies the *first*
operand's size by the last output axis, which under-counts a product whose first operand is
broadcast over a batch (``D @ x`` with ``D`` of shape ``(H, H)`` and ``x`` of shape
``(B, C, H, W)`` counts ``H*H*W`` instead of ``B*C*H*H*W``). The rules here count the MACs
actually performed (see ``matmul_macs``).

Each rule takes the operator's positional arguments with tensors replaced by their shapes
(tuples) and the output shape(s), and returns ``(kind, count)``; ``RULES`` maps an ATen
operator name (``"aten.mm"``) to its rule. Nothing here runs a model.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

__all__ = ["KINDS", "RULES", "FUNCTION_RULES", "ceil_log2", "numel", "matmul_macs", "conv_macs", "norm_flops",
           "fft_nlogn", "rule_for"]

#: the kinds a count belongs to (``fft`` is kept apart from the others)
#: (``matmul`` holds linear layers, matmuls and einsums alike: after PyTorch's decomposition they
#: are the same ``mm``/``bmm`` operators)
KINDS = ("conv", "matmul", "norm", "pool", "upsample", "attention", "fft")

Shape = tuple


def numel(shape: Sequence[int] | None) -> int:
    if shape is None:
        return 0
    n = 1
    for s in shape:
        n *= int(s)
    return n


def ceil_log2(n: int) -> int:
    """``ceil(log2 n)`` for ``n >= 1`` (0 for a single point)."""
    n = int(n)
    return 0 if n <= 1 else (n - 1).bit_length()


def matmul_macs(a: Shape, b: Shape) -> int:
    """MACs of ``a @ b`` with numpy broadcasting of the batch axes (1-D operands as in torch)."""
    a, b = tuple(a), tuple(b)
    if len(a) == 1 and len(b) == 1:
        return a[0]
    if len(a) == 1:
        a = (1,) + a
    if len(b) == 1:
        b = b + (1,)
    n, k, m = a[-2], a[-1], b[-1]
    batch_a, batch_b = a[:-2], b[:-2]
    depth = max(len(batch_a), len(batch_b))
    batch_a = (1,) * (depth - len(batch_a)) + batch_a
    batch_b = (1,) * (depth - len(batch_b)) + batch_b
    batch = numel(max(x, y) for x, y in zip(batch_a, batch_b))
    return batch * n * k * m


def conv_macs(x: Shape, w: Shape, out: Shape, transposed: bool = False) -> int:
    """fvcore's convolution rule: ``N * prod(w) * prod(spatial)`` (output side, input side if transposed)."""
    spatial = (x if transposed else out)[2:]
    return int(x[0]) * numel(w) * numel(spatial)


def norm_flops(shape: Shape, affine: bool, per_affine: int = 5, per_plain: int = 4) -> int:
    return numel(shape) * (per_affine if affine else per_plain)


def fft_nlogn(shape: Shape, dims: Sequence[int]) -> int:
    """``N * C * ceil(log2 N)`` for a transform of the signal ``shape`` over ``dims``."""
    nd = len(shape)
    axes = sorted({int(d) % nd for d in dims}) if nd else []
    n = numel(shape[d] for d in axes)
    c = numel(shape) // n if n else 0
    return n * c * ceil_log2(n)


# ----------------------------------------------------------------------------- rules on ATen operators
# each rule: (args, outs) -> (kind, count); args are the positional arguments with tensors as shapes


def _mm(args, outs):
    return "matmul", matmul_macs(args[0], args[1])


def _addmm(args, outs):
    return "matmul", matmul_macs(args[1], args[2])


def _bmm(args, outs):
    return "matmul", matmul_macs(args[0], args[1])


def _baddbmm(args, outs):
    return "matmul", matmul_macs(args[1], args[2])


def _mv(args, outs):
    return "matmul", numel(args[0])


def _addmv(args, outs):
    return "matmul", numel(args[1])


def _convolution(args, outs):
    transposed = bool(args[6]) if len(args) > 6 else False
    return "conv", conv_macs(args[0], args[1], outs[0], transposed)


def _layer_norm(args, outs):       # native_layer_norm(input, normalized_shape, weight, bias, eps)
    return "norm", norm_flops(args[0], args[2] is not None)


def _group_norm(args, outs):       # native_group_norm(input, weight, bias, N, C, HxW, group, eps)
    return "norm", norm_flops(args[0], args[1] is not None)


def _bn_flagged(args, outs):
    """(input, weight, bias, [running_mean, running_var,] training, momentum, eps): the first bool is the flag."""
    training = next((bool(a) for a in args[3:] if isinstance(a, bool)), False)
    if training:
        return "norm", norm_flops(args[0], args[1] is not None)
    return "norm", norm_flops(args[0], args[1] is not None, 2, 1)


def _bn_eval(args, outs):
    return "norm", norm_flops(args[0], args[1] is not None, 2, 1)


def _bn_train(args, outs):
    return "norm", norm_flops(args[0], args[1] is not None)


def _adaptive_avg_pool(args, outs):
    return "pool", numel(args[0])


def _upsample(per_output):
    def rule(args, outs):
        return "upsample", per_output * numel(outs[0])
    return rule


def _grid_sampler(args, outs):
    return "upsample", 4 * numel(outs[0])


def _sdpa(args, outs):
    """Both products of attention: ``q k^T`` and ``softmax(.) v`` (query ``(..., L, E)``, key ``(..., S, E)``,
    value ``(..., S, Ev)``)."""
    q, k, v = args[0], args[1], args[2]
    batch = numel(q[:-2])
    return "attention", batch * q[-2] * k[-2] * (q[-1] + v[-1])


def _fft_r2c(args, outs):          # _fft_r2c(self, dim, normalization, onesided): real input
    return "fft", fft_nlogn(args[0], args[1])


def _fft_c2r(args, outs):          # _fft_c2r(self, dim, normalization, last_dim_size): real output
    return "fft", fft_nlogn(outs[0], args[1])


def _fft_c2c(args, outs):          # _fft_c2c(self, dim, normalization, forward)
    return "fft", fft_nlogn(args[0], args[1])


RULES: dict[str, Callable] = {
    "aten.mm": _mm, "aten.addmm": _addmm, "aten.bmm": _bmm, "aten.baddbmm": _baddbmm,
    "aten.mv": _mv, "aten.addmv": _addmv,
    "aten.convolution": _convolution, "aten._convolution": _convolution,
    "aten.native_layer_norm": _layer_norm, "aten.native_group_norm": _group_norm,
    "aten.native_batch_norm": _bn_flagged, "aten._native_batch_norm_legit": _bn_flagged,
    "aten._native_batch_norm_legit_no_training": _bn_eval, "aten._batch_norm_with_update": _bn_train,
    "aten._batch_norm_no_update": _bn_eval,
    "aten._adaptive_avg_pool2d": _adaptive_avg_pool,
    "aten.upsample_nearest2d": _upsample(1), "aten.upsample_bilinear2d": _upsample(4),
    "aten.grid_sampler_2d": _grid_sampler,
    "aten._scaled_dot_product_flash_attention_for_cpu": _sdpa,
    "aten._scaled_dot_product_flash_attention": _sdpa,
    "aten._scaled_dot_product_efficient_attention": _sdpa,
    "aten._scaled_dot_product_cudnn_attention": _sdpa,
    "aten._fft_r2c": _fft_r2c, "aten._fft_c2r": _fft_c2r, "aten._fft_c2c": _fft_c2c,
}

#: rules applied at the functional level, where the ATen level cannot tell the op apart
#: (``adaptive_avg_pool2d`` to 1x1 runs as a plain ``mean``, which fvcore does not count)
FUNCTION_RULES: dict[str, Callable] = {
    "adaptive_avg_pool2d": _adaptive_avg_pool,
}


def rule_for(op_name: str) -> Callable | None:
    """The rule of an ATen operator (``"aten.mm.default"`` or ``"aten.mm"``), or None when it is free."""
    if op_name in RULES:
        return RULES[op_name]
    base = op_name.rsplit(".", 1)[0] if op_name.count(".") >= 2 else op_name
    return RULES.get(base)
