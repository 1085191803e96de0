"""CKA engine: closed forms, invariances, fixtures (float64 reference and torch-cka), streaming
and capture semantics, torch-cka compatibility engine, report files."""
from __future__ import annotations

import csv
import functools
import json
import math
import warnings
from fractions import Fraction

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from conftest import fixtures_dir

import spectrascope
from spectrascope.ops.cka import MinibatchCKA, hsic, linear_cka, u_centre
from spectrascope.analyses.cka import (TorchCKACompat, compare_models, make_engine, resolve_taps)
from spectrascope.probe import TapError, TapSpec

F64 = torch.float64


# ---------------------------------------------------------------------------- helpers
def song_hsic1(K: torch.Tensor, L: torch.Tensor) -> float:
    """Song et al. 2012 closed form (independent of the U-centring used by the engine)."""
    n = K.shape[0]
    Kt, Lt = K.clone(), L.clone()
    Kt.fill_diagonal_(0)
    Lt.fill_diagonal_(0)
    one = torch.ones(n, 1, dtype=K.dtype)
    val = torch.trace(Kt @ Lt) + (one.T @ Kt @ one) * (one.T @ Lt @ one) / ((n - 1) * (n - 2)) \
        - 2 * (one.T @ Kt @ Lt @ one) / (n - 2)
    return float(val / (n * (n - 3)))


def biased_cka_plain(X, Y) -> float:
    """Kornblith et al. feature-space form ‖YcᵀXc‖² / (‖XcᵀXc‖ ‖YcᵀYc‖)."""
    X = X.reshape(X.shape[0], -1).double()
    Y = Y.reshape(Y.shape[0], -1).double()
    X = X - X.mean(0)
    Y = Y - Y.mean(0)
    return float((Y.T @ X).square().sum() / (torch.linalg.norm(X.T @ X) * torch.linalg.norm(Y.T @ Y)))


def paths_taps(model: nn.Module, names=None):
    names = names if names is not None else [n for n, _ in model.named_modules() if n]
    return [TapSpec(name=n, role="path", path=n, layout="raw") for n in names]


F64_FIXTURE_ATOL = 1e-6


@functools.lru_cache(maxsize=None)
def fixture_result(case, pair, dtype=torch.float64):
    """Our matrix for a fixture case and pair (cached: several tests read the same run)."""
    meta, d = cka_fixture(case)
    A, B = fixture_models(case, d)
    m2 = A if pair == "AA" else B
    return compare_models(A, m2, list(d["data"].split(meta["batch_size"])), taps_a=paths_taps(A),
                          taps_b=paths_taps(m2), dtype=dtype)


@functools.lru_cache(maxsize=None)
def cka_fixture(case):
    folder = fixtures_dir("methods/cka")
    return json.loads((folder / f"{case}.json").read_text()), load_file(str(folder / f"{case}.safetensors"))


def fixture_models(case, d):
    if case == "wellcond_tanh":
        def mk(w, k):
            return nn.Sequential(nn.Conv2d(3, w, k, 1, k // 2, bias=False), nn.Tanh(),
                                 nn.Conv2d(w, w, 3, 2, 1, bias=False), nn.Tanh(), nn.Flatten(),
                                 nn.Linear(w * 64, 10, bias=False))
        A, B = mk(8, 3), mk(12, 5)
    else:
        def mk(w):
            return nn.Sequential(nn.Conv2d(3, w, 3, 1, 1), nn.ReLU(), nn.Conv2d(w, w, 3, 2, 1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w, 10))
        A, B = mk(8), mk(12)
    A.load_state_dict({k[7:]: v for k, v in d.items() if k.startswith("modelA.")})
    B.load_state_dict({k[7:]: v for k, v in d.items() if k.startswith("modelB.")})
    return A.eval(), B.eval()


# ---------------------------------------------------------------------------- closed forms
def test_public_api_exported():
    assert spectrascope.linear_cka is linear_cka
    assert spectrascope.MinibatchCKA is MinibatchCKA


@pytest.mark.parametrize("ex, unbiased, biased, hsics", [
    ("ex1", (Fraction(107, 6), Fraction(13, 6), Fraction(889, 6)), Fraction(25) / (Fraction(25, 9) * Fraction(2401, 9))
     ** 0.5, None),
    ("ex2", (Fraction(-38, 45), Fraction(88, 45), Fraction(98, 45)), None, None),
])
def test_closed_forms(ex, unbiased, biased, hsics):
    _, d = cka_fixture("closed_form")
    meta = json.loads((fixtures_dir("methods/cka") / "closed_form.json").read_text())["examples"][ex]
    X, Y = d[f"{ex}.X"], d[f"{ex}.Y"]
    xy, xx, yy = (float(v) for v in unbiased)
    # HSIC terms, float64 path
    assert abs(hsic(X, Y) - xy) < 1e-12
    assert abs(hsic(X, X) - xx) < 1e-12
    assert abs(hsic(Y, Y) - yy) < 1e-12
    exact = xy / math.sqrt(xx * yy)
    assert abs(exact - meta["unbiased"]["CKA"]) < 1e-15
    assert abs(linear_cka(X, Y) - exact) < 1e-12
    assert abs(linear_cka(X.double(), Y.double()) - exact) < 1e-12
    assert abs(linear_cka(X, Y, "biased") - meta["biased_linear_CKA"]["CKA"]) < 1e-12
    # float32 path
    assert abs(linear_cka(X, Y, dtype=torch.float32) - exact) < 1e-6
    assert abs(linear_cka(X, Y, "biased", dtype=torch.float32) - meta["biased_linear_CKA"]["CKA"]) < 1e-6


def test_ex1_biased_is_squared_pearson():
    x = torch.tensor([[0.], [1.], [2.], [3.]])
    y = x ** 2
    assert abs(linear_cka(x, y, "biased") - 45 / 49) < 1e-12
    assert abs(linear_cka(x, y) - 107 / math.sqrt(13 * 889)) < 1e-12


def test_negative_unbiased_value_is_returned_not_clamped():
    _, d = cka_fixture("closed_form")
    v = linear_cka(d["ex2.X"], d["ex2.Y"])
    assert v < 0 and abs(v - (-38 / math.sqrt(8624))) < 1e-12


def test_song_closed_form_equals_u_centred_inner_product():
    g = torch.Generator().manual_seed(5)
    for n in (4, 5, 9, 33):
        X = torch.randn(n, 7, generator=g, dtype=F64) + 3.0
        Y = torch.randn(n, 4, generator=g, dtype=F64) - 1.0
        K, L = X @ X.T, Y @ Y.T
        ref = song_hsic1(K, L)
        uc = float((u_centre(K) * u_centre(L)).sum()) / (n * (n - 3))
        assert abs(uc - ref) < 1e-12 * max(1.0, abs(ref))
        assert abs(hsic(X, Y) - ref) < 1e-10 * max(1.0, abs(ref))
        assert song_hsic1(K, K) >= 0


def test_self_symmetry_and_biased_matches_feature_space_form():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(50, 12, generator=g, dtype=F64)
    Y = torch.tanh(X @ torch.randn(12, 9, generator=g, dtype=F64)) + 0.3 * torch.randn(50, 9, generator=g, dtype=F64)
    for est in ("unbiased", "biased"):
        assert abs(linear_cka(X, X, est) - 1.0) < 1e-12
        assert abs(linear_cka(X, Y, est) - linear_cka(Y, X, est)) < 1e-12
    assert abs(linear_cka(X, Y, "biased") - biased_cka_plain(X, Y)) < 1e-12


def test_invariances_orthogonal_scale_shift_permutation_layout():
    g = torch.Generator().manual_seed(2)
    X = torch.randn(50, 10, generator=g, dtype=F64)
    Y = X @ torch.randn(10, 6, generator=g, dtype=F64) + 0.5 * torch.randn(50, 6, generator=g, dtype=F64)
    Q, _ = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=F64))
    for est in ("unbiased", "biased"):
        ref = linear_cka(X, Y, est)
        assert abs(linear_cka(3.7 * X @ Q + 5, Y, est) - ref) < 1e-10
        assert abs(linear_cka(X[:, torch.randperm(10, generator=g)], Y, est) - ref) < 1e-12
    # not invariant to a general invertible map
    A = torch.diag(torch.linspace(0.1, 10, 10, dtype=F64))
    assert abs(linear_cka(X @ A, Y) - linear_cka(X, Y)) > 1e-3
    # NHWC vs NCHW flattening of the same maps
    m = torch.randn(20, 4, 5, 6, generator=g)
    z = torch.randn(20, 3, generator=g)
    assert abs(linear_cka(m, z, dtype=F64) - linear_cka(m.permute(0, 2, 3, 1), z, dtype=F64)) < 1e-12
    # float32 features take float32 Gram products by default: same value to float32 rounding
    assert abs(linear_cka(m, z) - linear_cka(m.permute(0, 2, 3, 1), z, dtype=F64)) < 1e-6


def test_debiasing_on_independent_gaussians():
    unb, bia = [], []
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        X = torch.randn(32, 64, generator=g, dtype=F64)
        Y = torch.randn(32, 64, generator=g, dtype=F64)
        unb.append(linear_cka(X, Y))
        bia.append(linear_cka(X, Y, "biased"))
    assert 0.6 < sum(bia) / 20 < 0.75
    assert abs(sum(unb) / 20) < 0.05


@pytest.mark.parametrize("n, p, chunk", [(64, 30000, 64 * 10000), (40, 9000, 1 << 20), (8, 20000, 1 << 20),
                                         (64, 5000, 64 * 700)])
def test_shifted_gram_equals_the_product_of_shifted_features(n, p, chunk):
    """The chunked (and, for large products on CPUs, block-halved) Gram product is exactly the
    Gram matrix of the features shifted by the first example, symmetric, whatever the chunking."""
    from spectrascope.ops.cka import Workspace, shifted_gram
    g = torch.Generator().manual_seed(11)
    x = torch.randn(n, p, generator=g, dtype=F64) * 2 + 7
    xs = x - x[:1]
    ref = xs @ xs.T
    for ws in (None, Workspace()):
        got = shifted_gram(x, chunk_elems=chunk, workspace=ws)
        assert torch.equal(got.matrix, got.matrix.T)
        assert (got.matrix - ref).abs().max() < 1e-12 * ref.abs().max()
        assert abs(float(got.ref_energy) - float(x[0].square().sum())) < 1e-9 * float(x[0].square().sum())
    # float32 features: float32 products by default, float64 on request
    assert shifted_gram(x.float()).matrix.dtype == torch.float32
    assert shifted_gram(x.float(), F64).matrix.dtype == F64
    assert shifted_gram(x.half()).matrix.dtype == torch.float32
    # features that require grad (e.g. taken straight from a training step) work without a graph
    xr = x.float().requires_grad_()
    assert torch.equal(shifted_gram(xr).matrix, shifted_gram(x.float()).matrix)


def test_offset_float32_matches_float64_centred():
    """Regression for torch-cka's uncentred float32 Gram: a +100 offset must not matter."""
    g = torch.Generator().manual_seed(3)
    X = torch.randn(64, 200, generator=g)
    Y = torch.tanh(X[:, :50]) + 0.5 * torch.randn(64, 50, generator=g)
    ref = linear_cka(X.double(), Y.double())
    assert abs(linear_cka(X + 100, Y + 100, dtype=torch.float32) - ref) < 1e-4
    assert abs(linear_cka(X + 100, Y + 100) - ref) < 1e-6


# ---------------------------------------------------------------------------- streaming
def test_minibatch_streaming_properties():
    g = torch.Generator().manual_seed(4)
    X = torch.randn(64, 30, generator=g, dtype=F64)
    Y = X[:, :10] ** 2 + 0.3 * torch.randn(64, 10, generator=g, dtype=F64)
    Z = torch.randn(64, 5, generator=g, dtype=F64)
    one = MinibatchCKA(2, 2)
    one.update([X, Z], [Y, Z])
    m = one.compute()
    assert abs(m[0, 0] - linear_cka(X, Y)) < 1e-12 and abs(m[1, 1] - 1) < 1e-12
    # identical data split into equal batches gives the single-batch value
    rep = MinibatchCKA(1, 1)
    for _ in range(3):
        rep.update([X], [Y])
    assert abs(rep.compute()[0, 0] - linear_cka(X, Y)) < 1e-12
    # order independence and equality with the definition Σ HSIC / sqrt(Σ Σ)
    parts = list(zip(X.split(16), Y.split(16)))
    fwd, bwd = MinibatchCKA(1, 1), MinibatchCKA(1, 1)
    for x, y in parts:
        fwd.update([x], [y])
    for x, y in reversed(parts):
        bwd.update([x], [y])
    xy = sum(hsic(x, y) for x, y in parts)
    xx = sum(hsic(x, x) for x, _ in parts)
    yy = sum(hsic(y, y) for _, y in parts)
    assert abs(fwd.compute()[0, 0] - xy / math.sqrt(xx * yy)) < 1e-12
    assert abs(fwd.compute()[0, 0] - bwd.compute()[0, 0]) < 1e-12
    assert fwd.batches == 4 and fwd.examples == 64


def test_small_batches_are_skipped_with_a_warning():
    g = torch.Generator().manual_seed(6)
    X = torch.randn(20, 8, generator=g)
    Y = torch.randn(20, 8, generator=g) + X
    m = MinibatchCKA(1, 1)
    m.update([X[:16]], [Y[:16]])
    with pytest.warns(RuntimeWarning, match="skipped a batch of 3"):
        assert m.update([X[16:19]], [Y[16:19]]) is False
    assert m.skipped_batches == 1 and m.skipped_examples == 3 and m.batches == 1
    assert abs(m.compute()[0, 0] - linear_cka(X[:16], Y[:16])) < 1e-12
    with pytest.raises(ValueError, match="at least 4"), pytest.warns(RuntimeWarning):
        linear_cka(X[:3], Y[:3])


def test_constant_tap_gives_nan_with_diagnostic_not_abort():
    g = torch.Generator().manual_seed(7)
    X = torch.randn(16, 8, generator=g)
    dead = torch.full((16, 3, 2, 2), 0.25)
    base = torch.full((16, 50), 1000.0)
    flip = torch.rand(16, 50, generator=g) < 0.5
    almost = torch.where(flip, torch.nextafter(base, torch.tensor(2000.0)), base)  # varies by one float32 ulp only
    m = MinibatchCKA(3, 2, labels_a=["x", "dead", "almost"], labels_b=["x", "dead"])
    m.update([X, dead, almost], [X, dead])
    out = m.compute()
    assert abs(out[0, 0] - 1) < 1e-12
    assert torch.isnan(out[1]).all() and torch.isnan(out[:, 1]).all() and torch.isnan(out[2]).all()
    assert torch.isfinite(out[0, 0])
    text = " | ".join(m.diagnostics)
    assert "'dead' of model A" in text and "'dead' of model B" in text and "'almost' of model A" in text
    assert "zero variance" in text and "rounding" in text
    with pytest.warns(RuntimeWarning, match="constant"):
        assert math.isnan(linear_cka(dead, X))


def test_minibatch_validates_inputs():
    m = MinibatchCKA(1, 1)
    with pytest.raises(ValueError, match="same examples"):
        m.update([torch.randn(8, 3)], [torch.randn(9, 3)])
    with pytest.raises(ValueError, match="expected 1 \\+ 1"):
        m.update([torch.randn(8, 3)] * 2, [torch.randn(8, 3)])
    with pytest.raises(ValueError, match="estimator"):
        MinibatchCKA(1, 1, estimator="rbf")
    assert torch.isnan(MinibatchCKA(1, 1).compute()).all()


# ---------------------------------------------------------------------------- fixtures
@pytest.mark.parametrize("case", ["wellcond_tanh", "illcond_relu_gap", "illcond_relu_gap_unnormalised"])
def test_fixture_float64_reference(case):
    meta, d = cka_fixture(case)
    for pair in ("AB", "AA"):
        r = fixture_result(case, pair)
        assert r.labels_a == meta["runs"][pair]["firing_order_rows"]
        assert r.labels_b == meta["runs"][pair]["firing_order_cols"]
        ref = d[f"f64_{pair}"]
        # the fixture's tolerance for a float64 engine (fixtures/methods/README.md, 2a): the models' float32
        # forward passes round differently on other CPUs (observed 7e-8 here against the generating machine)
        assert (r.matrix - ref).abs().max() < F64_FIXTURE_ATOL
        for k in ("xy", "xx", "yy"):
            want = d[f"f64_{pair}_hsic_{k}"]
            got = getattr(r, f"hsic_{k}")
            assert ((got - want).abs() <= F64_FIXTURE_ATOL * want.abs().max()).all()
        if pair == "AA":
            assert (r.matrix - r.matrix.T).abs().max() < 1e-12
            assert (torch.diagonal(r.matrix) - 1).abs().max() < 1e-12
        assert r.matrix.abs().max() <= 1 + 1e-12
    # float32 Gram products (centred first) stay within 1e-6 of the float64 reference
    r32 = fixture_result(case, "AB", torch.float32)
    assert (r32.matrix - d["f64_AB"]).abs().max() < 1e-6


def test_fixture_torch_cka_agreement_and_where_ours_stays_right():
    _, d = cka_fixture("wellcond_tanh")
    assert (fixture_result("wellcond_tanh", "AB").matrix - d["torchcka_AB"].double()).abs().max() < 1e-4
    assert (fixture_result("wellcond_tanh", "AA").matrix - d["torchcka_AA"].double()).abs().max() < 1e-4
    # ill-conditioned: torch-cka's stored numbers are wrong (sign flip, > 1, asymmetric), ours are the f64 ones
    _, d2 = cka_fixture("illcond_relu_gap_unnormalised")
    ab = fixture_result("illcond_relu_gap_unnormalised", "AB").matrix
    aa = fixture_result("illcond_relu_gap_unnormalised", "AA").matrix
    tc_ab, tc_aa = d2["torchcka_AB"].double(), d2["torchcka_AA"].double()
    assert (tc_ab - d2["f64_AB"]).abs().max() > 0.5          # torch-cka is far off
    assert tc_ab.min() < -0.5 and d2["f64_AB"].min() > -0.1  # ... with a spurious strong negative value
    assert (ab - d2["f64_AB"]).abs().max() < F64_FIXTURE_ATOL  # we are not
    assert (tc_aa - tc_aa.T).abs().max() > 0.1 and (aa - aa.T).abs().max() < 1e-12
    assert tc_aa.max() > 1.0 and aa.max() <= 1 + 1e-12


def test_layer_order_regression_labels_follow_execution():
    meta, d = cka_fixture("layer_order_regression")

    class StagedNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.downsample_layers = nn.ModuleList([nn.Conv2d(3, 8, 3, 2, 1, bias=False),
                                                    nn.Conv2d(8, 16, 3, 2, 1, bias=False)])
            self.stages = nn.ModuleList([nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, bias=False), nn.Tanh()),
                                         nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.Tanh())])
            self.head = nn.Linear(16, 10, bias=False)

        def forward(self, x):
            for i in range(2):
                x = self.stages[i](self.downsample_layers[i](x))
            return self.head(x.mean(dim=(2, 3)))

    class OrderNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(256, 10, bias=False)
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1, bias=False), nn.Tanh(),
                                      nn.Conv2d(4, 4, 3, 1, 1, bias=False))
            self.flatten = nn.Flatten()

        def forward(self, x):
            return self.head(self.flatten(self.body(x)))

    A, B = StagedNet(), OrderNet()
    A.load_state_dict({k[7:]: v for k, v in d.items() if k.startswith("modelA.")})
    B.load_state_dict({k[7:]: v for k, v in d.items() if k.startswith("modelB.")})
    # taps given in registration order (torch-cka's label order), the root module included
    ta = paths_taps(A, meta["export_model1_layers"])
    tb = paths_taps(B, meta["export_model2_layers"])
    # the float64 path to the fixture tolerance (1e-6, see above), the default path (float32 Gram products of
    # centred features) to 1e-6,
    # the torch-cka engine to 1e-6
    for engine, dtype, tol in (("spectrascope", F64, F64_FIXTURE_ATOL), ("spectrascope", None, 1e-6), ("torch-cka", None, 1e-6)):
        r = compare_models(A.eval(), B.eval(), list(d["data"].split(16)), taps_a=ta, taps_b=tb, engine=engine,
                           num_batches=4, dtype=dtype)
        assert r.labels_a == meta["firing_order_rows (what torchcka_matrix rows really are)"]
        assert r.labels_b == meta["firing_order_cols (what torchcka_matrix columns really are)"]
        assert (r.matrix - d["f64_matrix_firing_order"]).abs().max() < tol
        assert (r.matrix - d["torchcka_matrix"].double()).abs().max() < 1e-4


# ---------------------------------------------------------------------------- torch-cka engine
def _live_torch_cka(A, B, data, batch):
    import torch_cka
    from torch.utils.data import DataLoader, TensorDataset
    layers_a = [n for n, _ in A.named_modules() if n]
    layers_b = [n for n, _ in B.named_modules() if n]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = torch_cka.CKA(A, B, model1_name="A", model2_name="B", model1_layers=layers_a, model2_layers=layers_b,
                          device="cpu")
        dl = DataLoader(TensorDataset(data), batch_size=batch, shuffle=False)
        from unittest import mock
        with mock.patch("torch_cka.cka.tqdm", lambda it, **_: it):
            c.compare(dl, dl)
    return c.export()["CKA"].double()


def test_torch_cka_engine_reproduces_torch_cka_on_the_fixture():
    meta, d = cka_fixture("wellcond_tanh")
    A, B = fixture_models("wellcond_tanh", d)
    r = compare_models(A, B, list(d["data"].split(32)), taps_a=paths_taps(A), taps_b=paths_taps(B),
                       engine="torch-cka", num_batches=8)
    assert r.engine == "torch-cka" and r.labels_a == meta["runs"]["AB"]["firing_order_rows"]
    assert (r.matrix - d["torchcka_AB"].double()).abs().max() < 1e-4
    assert (r.matrix - d["f64_AB"]).abs().max() < 1e-4


def test_torch_cka_engine_runs_the_original_computation_where_it_fails():
    """On ill-conditioned features our torch-cka engine gives torch-cka's (wrong) numbers, run live here."""
    _, d = cka_fixture("illcond_relu_gap")
    A, B = fixture_models("illcond_relu_gap", d)
    data = d["data"][:128]
    ours = compare_models(A, B, list(data.split(32)), taps_a=paths_taps(A), taps_b=paths_taps(B),
                          engine="torch-cka", num_batches=4).matrix
    A2, B2 = fixture_models("illcond_relu_gap", d)  # fresh objects: torch-cka never removes its hooks
    live = _live_torch_cka(A2, B2, data, 32)
    assert (ours - live).abs().max() < 1e-6
    right = compare_models(A, B, list(data.split(32)), taps_a=paths_taps(A), taps_b=paths_taps(B)).matrix
    assert (right - live).abs().max() > 1e-2               # and those differ from the float64 engine


def test_torch_cka_engine_limits():
    with pytest.raises(ValueError, match="only the unbiased"):
        TorchCKACompat(1, 1, "biased")
    with pytest.raises(ValueError, match="--engine"):
        make_engine("other", 1, 1)
    eng = TorchCKACompat(2, 1, labels_a=["x", "dead"], labels_b=["y"])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 5, generator=g)
    assert eng.update([x, torch.zeros(8, 5)], [x * 2])
    out = eng.compute()
    assert abs(out[0, 0] - 1) < 1e-5 and torch.isnan(out[1, 0])
    assert "'dead'" in eng.diagnostics[0]


# ---------------------------------------------------------------------------- capture semantics
def test_inplace_op_after_tap_does_not_change_the_capture():
    torch.manual_seed(0)
    lin = nn.Linear(6, 12)
    A = nn.Sequential(lin, nn.ReLU(inplace=True))
    B = nn.Sequential(nn.Linear(6, 12))
    B[0].load_state_dict(lin.state_dict())
    x = torch.randn(32, 6)
    r = compare_models(A, B, [x], taps_a=paths_taps(A, ["0", "1"]), taps_b=paths_taps(B, ["0"]))
    assert abs(r.matrix[0, 0] - 1) < 1e-12           # pre-activation, not the post-ReLU overwrite
    assert abs(r.matrix[1, 0] - linear_cka(torch.relu(lin(x)).detach(), lin(x).detach())) < 1e-10


def test_module_called_twice_is_an_error_and_unfired_tap_too():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = nn.Tanh()
            self.lin = nn.Linear(4, 4)
            self.unused = nn.Linear(4, 4)

        def forward(self, x):
            return self.act(self.lin(self.act(x)))

    m = Twice()
    x = torch.randn(8, 4)
    with pytest.raises(TapError, match="fired twice"):
        compare_models(m, m, [x], taps_a=paths_taps(m, ["act"]), taps_b=paths_taps(m, ["lin"]))
    with pytest.raises(TapError, match="never fired"):
        compare_models(m, m, [x], taps_a=paths_taps(m, ["lin", "unused"]), taps_b=paths_taps(m, ["lin"]))
    assert not m.lin._forward_hooks and not m.act._forward_hooks   # hooks removed after errors


def test_self_comparison_same_object_unit_diagonal_and_pre_hook_taps():
    m = spectrascope.create_model("dfformer_s18", img_size=32, depths=[1, 1, 1, 1], dims=[8, 8, 16, 16],
                                  num_classes=10).eval()
    taps = resolve_taps(m, "fig7")
    assert [t.role for t in taps] == ["stem", "residual", "block", "downsample", "residual", "block",
                                      "downsample", "residual", "block", "downsample", "residual", "block"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 32, 32, generator=g)
    r = compare_models(m, m, [x[:4], x[4:]], taps_a=taps, taps_b=taps)
    assert r.labels_a == [t.name for t in taps] == r.labels_b
    assert (torch.diagonal(r.matrix) - 1).abs().max() < 1e-12
    assert (r.matrix - r.matrix.T).abs().max() < 1e-12
    assert r.shapes_a["s1.b0.residual"] == [8, 8, 8]      # NHWC at 32 px / 4
    assert not any(mod._forward_hooks or mod._forward_pre_hooks for mod in m.modules())


def test_resolve_taps_specs():
    m = spectrascope.create_model("convformer_s18", img_size=32, depths=[1, 1, 2, 1], dims=[8, 8, 16, 16],
                                  num_classes=10)
    assert len(resolve_taps(m, "fig7")) == 4 + 5 + 5
    t = resolve_taps(m, "stem,s3.b1.mixer,path:stages.3")
    assert [x.name for x in t] == ["stem", "s3.b1.mixer", "stage4"]
    t = resolve_taps(m, "path:head.fc1")
    assert t[0].name == "head.fc1" and t[0].layout == "raw"
    with pytest.raises(TapError, match="unknown tap 'nope'"):
        resolve_taps(m, "fig7,nope")


# ---------------------------------------------------------------------------- report
def test_report_files_heatmap_conventions_and_best_matches(tmp_path):
    from spectrascope.analyses.cka import CKAResult
    from spectrascope.analyses.cka import write_report
    from spectrascope.report.cka import FILES, best_matches, plot_heatmap
    ta = [TapSpec(f"a{i}", "block", f"a{i}", "NCHW", stage=1 + i // 2) for i in range(4)]
    tb = [TapSpec(f"b{j}", "block", f"b{j}", "NCHW", stage=1 + j // 2) for j in range(3)]
    mat = torch.tensor([[0.9, 0.2, 0.1], [0.3, 0.8, float("nan")], [-0.1, 0.4, 0.7], [0.2, 0.95, 0.6]], dtype=F64)
    res = CKAResult(matrix=mat, labels_a=[t.name for t in ta], labels_b=[t.name for t in tb], taps_a=ta, taps_b=tb,
                    shapes_a={t.name: [4] for t in ta}, shapes_b={t.name: [3] for t in tb}, estimator="unbiased",
                    engine="spectrascope", batches=2, examples=16,
                    meta={"model_a": {"name": "mA", "random_weights": True}, "model_b": {"name": "mB",
                                                                                      "random_weights": False}})
    best = best_matches(res)
    a_rows = [r for r in best if r["side"] == "a"]
    assert [r["best_match"] for r in a_rows] == ["b0", "b1", "b2", "b1"]
    b_rows = [r for r in best if r["side"] == "b"]
    assert [r["best_match"] for r in b_rows] == ["a0", "a3", "a2"] and b_rows[2]["cka"] == 0.7
    fig = plot_heatmap(res)
    ax = fig.axes[0]
    im = ax.images[0]
    assert im.origin == "lower" and im.get_clim() == (0.0, 1.0)
    assert "mB" in ax.get_xlabel() and "mA" in ax.get_ylabel() and "random weights" in ax.get_title()
    dashed = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 + 1                           # one row boundary (stage 1|2), one column boundary
    out = write_report(res, tmp_path / "rep")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(FILES)
    assert (out / "cka.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "cka.pdf").read_bytes()[:5] == b"%PDF-"
    rows = list(csv.reader(open(out / "cka_matrix.csv")))
    assert rows[0][1:] == ["b0", "b1", "b2"] and rows[2][0] == "a1" and rows[2][3] == "nan"
    assert float(rows[4][2]) == 0.95
    js = json.loads((out / "results.json").read_text())
    assert js["labels_a"] == res.labels_a and js["matrix"][1][2] is None and js["provenance"]["random_weights"]
    assert js["shapes_b"]["b0"] == [3] and js["best_match"][0]["best_match"] == "b0"
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "Random weights" in page and "src='http" not in page
    with pytest.raises(FileExistsError):
        write_report(res, out)
