"""FLOP counting: equal to fvcore itself on every family (square and non-square inputs), closed
forms for the FFT term and broadcast matmuls, PyTorch's own counter as a second oracle, the
``spectrascope flops`` command."""
from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

import spectrascope
from spectrascope.engine.flops import count_flops
from spectrascope.cli import main
from spectrascope.ops.flops import ceil_log2, fft_nlogn, matmul_macs

fvcore = pytest.importorskip("fvcore.nn")


def _sdpa_handle(inputs, outputs):
    """fvcore's handler form for ``scaled_dot_product_attention`` (stock fvcore skips the op): the two
    products it replaces, ``q k^T`` and ``attn v``, as fvcore's matmul rule counts them."""
    from fvcore.nn.jit_handles import get_shape
    q, k, v = (get_shape(inputs[i]) for i in range(3))
    return math.prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])


def fvcore_total(model: nn.Module, size) -> int:
    """fvcore on the official computation (``official_graph``: LayerNormGeneral's element-wise ops,
    not the fused fast path the zoo takes at run time)."""
    from spectrascope.engine.flops import official_graph
    model.eval()
    with warnings.catch_warnings(), official_graph():
        warnings.simplefilter("ignore")
        a = fvcore.FlopCountAnalysis(model, torch.randn(1, *size))
        a.set_op_handle("aten::scaled_dot_product_attention", _sdpa_handle)
        a.unsupported_ops_warnings(False)
        a.uncalled_modules_warnings(False)
        return int(a.total())


#: one model per family (and the complex-einsum ablation mixers), shrunk by the constructors' own
#: arguments so fvcore's traced forward stays fast, at square and non-square sizes
_T = dict(depths=[1, 1, 1, 1], dims=[16, 32, 48, 64])
FAMILY_CASES = [
    ("dfformer_s18", dict(depths=[1, 1, 2, 1], dims=[16, 32, 48, 64]), (3, 64, 96)),
    ("cdfformer_s18", _T, (3, 96, 64)), ("gfformer_s18", _T, (3, 64, 64)), ("dfformer_s18_afno", _T, (3, 64, 96)),
    ("caformer_s18", dict(depths=[1, 1, 1, 1], dims=[16, 32, 64, 64]), (3, 64, 96)),
    ("poolformer_s12", dict(layers=[1, 1, 1, 1], embed_dims=[16, 32, 48, 64]), (3, 64, 96)),
    ("gfnet_ti", dict(depth=2, embed_dim=64), (3, 64, 96)),
    ("gfnet_h_ti", dict(depth=[1, 1, 1, 1], embed_dim=[16, 32, 48, 64]), (3, 64, 96)),
    ("spanet_s", dict(layers=[1, 1, 1, 1], embed_dims=[16, 32, 48, 64]), (3, 64, 96)),
    ("affnet_et", {}, (3, 64, 96)), ("affnet_fno", {}, (3, 64, 64)),
]


@pytest.mark.parametrize("name,overrides,size", FAMILY_CASES, ids=[f"{n}-{s[1]}x{s[2]}" for n, _, s in FAMILY_CASES])
def test_equals_fvcore_on_every_family(name, overrides, size):
    torch.manual_seed(0)
    model = spectrascope.create_model(name, img_size=size[1:], **overrides)
    ours = count_flops(model, size)
    assert ours.flops == pytest.approx(fvcore_total(model, size), rel=5e-3)
    assert ours.input_size == size and ours.params == sum(p.numel() for p in model.parameters())


def test_meta_build_equals_the_real_model():
    """A zoo name is counted on the meta device; the CPU model built alike gives the same counts."""
    model = spectrascope.create_model("dfformer_s18", img_size=(64, 96))
    real, meta = count_flops(model, (64, 96), fft="nlogn"), count_flops("dfformer_s18", (64, 96), fft="nlogn")
    assert (real.flops, real.flops_fft, real.params) == (meta.flops, meta.flops_fft, meta.params)


class _FFT(nn.Module):
    def forward(self, x):
        X = torch.fft.rfft2(x, dim=(2, 3), norm="ortho")
        y = torch.fft.irfft2(X, s=x.shape[2:], dim=(2, 3), norm="ortho")
        z = torch.fft.fft2(y.to(torch.complex64), dim=(1, 2))     # over (C, H): N = C*H
        return y + z.real


def test_fft_term_closed_form():
    x = (2, 8, 16, 12)
    c = count_flops(_FFT(), x[1:])
    n = 16 * 12
    per = n * 8 * math.ceil(math.log2(n))            # N * C * ceil(log2 N), batch of one
    n2 = 8 * 16
    assert c.flops == 0
    assert c.flops_fft == 2 * per + n2 * 12 * math.ceil(math.log2(n2))
    assert c.flops_total == 0 and count_flops(_FFT(), x[1:], fft="nlogn").flops_total == c.flops_fft
    assert fft_nlogn((1, 8, 16, 12), (-2, -1)) == per and ceil_log2(1) == 0 and ceil_log2(5) == 3


class _DCT(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.d = nn.Parameter(torch.randn(h, h))

    def forward(self, x):
        return self.d @ x


def test_broadcast_matmul_counts_every_mac():
    """``D @ x`` with D (H, H) and x (B=1, C, H, W): C*H*H*W MACs; fvcore's rule takes only the
    first operand (H*H*W) -- the one place the counts part on purpose."""
    m = _DCT(8)
    c = count_flops(m, (4, 8, 6))
    assert c.flops == 4 * 8 * 8 * 6 == matmul_macs((8, 8), (1, 4, 8, 6))
    assert fvcore_total(m, (4, 8, 6)) == 8 * 8 * 6


def test_torch_flop_counter_is_twice_ours_for_macs():
    """torch.utils.flop_counter counts 2 FLOPs per MAC for conv/linear/bmm."""
    from torch.utils.flop_counter import FlopCounterMode
    m = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, groups=1), nn.Flatten(2), nn.Linear(15 * 15, 7)).eval()
    x = torch.randn(1, 3, 32, 32)
    fc = FlopCounterMode(display=False)
    with torch.no_grad(), fc:
        m(x)
    assert 2 * count_flops(m, (3, 32, 32)).flops == fc.get_total_flops()


def test_attention_counts_both_products():
    """F.scaled_dot_product_attention = q k^T and attn v, as the explicit form counts them (stock fvcore
    does not see inside the fused op; CAFormer's 4.1 G in the papers includes them)."""
    class Explicit(nn.Module):
        def forward(self, x):
            q = k = v = x.reshape(1, 2, 12, 8)
            return (q @ k.transpose(-2, -1)).softmax(-1) @ v

    class Fused(nn.Module):
        def forward(self, x):
            q = k = v = x.reshape(1, 2, 12, 8)
            return nn.functional.scaled_dot_product_attention(q, k, v)
    a, b = count_flops(Explicit(), (2, 12, 8)), count_flops(Fused(), (2, 12, 8))
    assert a.flops == b.flops == 2 * 12 * 12 * (8 + 8) == fvcore_total(Explicit(), (2, 12, 8))
    assert round(count_flops("caformer_s18").flops / 1e9, 1) == 4.1


def test_norm_and_pool_rules_are_fvcore():
    m = nn.Sequential(nn.Conv2d(3, 8, 1, bias=False), nn.BatchNorm2d(8), nn.GroupNorm(2, 8),
                      nn.GroupNorm(2, 8, affine=False), nn.Upsample(scale_factor=2, mode="bilinear"),
                      nn.Upsample(scale_factor=2, mode="nearest"), nn.AdaptiveAvgPool2d(1)).eval()
    c = count_flops(m, (3, 5, 7))
    e = 5 * 7 * 8
    expected = e * 3 + 2 * e + 5 * e + 4 * e + 4 * (4 * e) + 16 * e + 16 * e
    assert c.flops == expected == fvcore_total(m, (3, 5, 7))


def test_breakdowns_add_up():
    c = count_flops("spanet_s", 64, fft="nlogn")
    total = c.flops + c.flops_fft
    for by in ("module", "op", "stage"):
        assert sum(sum(k.values()) for k in c.breakdown(by).values()) == total
    stages = c.by_stage()
    assert {"stage 1", "stage 2", "stage 3", "stage 4"} <= set(stages)
    assert all(k.get("fft", 0) > 0 for s, k in stages.items() if s.startswith("stage"))


def test_cli_json_plain_ints_and_table():
    r = CliRunner().invoke(main, ["flops", "--model", "dfformer_s18", "--model", "affnet_et", "--json",
                                  "--fft", "nlogn"])
    assert r.exit_code == 0, r.output
    docs = json.loads(r.output)
    assert [d["model"] for d in docs] == ["dfformer_s18", "affnet_et"]
    for d in docs:
        for key in ("params", "flops", "flops_fft", "flops_total"):
            assert type(d[key]) is int
        assert d["flops_total"] == d["flops"] + d["flops_fft"]
    assert docs[0]["input_size"] == [3, 224, 224] and docs[1]["input_size"] == [3, 256, 256]
    t = CliRunner().invoke(main, ["flops", "--model", "dfformer_s18", "--img-size", "64x96", "--by", "stage"])
    assert t.exit_code == 0 and "3x64x96" in t.output and "stage 3" in t.output
    ref = count_flops("dfformer_s18", (64, 96))
    assert f"{ref.flops / 1e9:.3f}" in t.output


def test_cli_unknown_model_is_one_line():
    r = CliRunner().invoke(main, ["flops", "--model", "dfformer_s19"])
    assert r.exit_code == 2 and "dfformer_s18" in r.output and "Traceback" not in r.output


def test_public_api():
    c = spectrascope.count_flops("gfnet_h_s", (3, 224, 224))
    assert round(c.flops / 1e9, 1) == 4.6 and set(c.as_dict()) >= {"model", "input_size", "params", "flops",
                                                                   "flops_fft", "flops_total"}
