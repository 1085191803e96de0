"""Score-CAM / Grad-CAM / localisation: reference outputs of the three published Score-CAM
flavours (fixtures/methods/scorecam), the region oracle, closed forms and invariances."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from conftest import fixtures_dir

import spectrascope
from spectrascope.engine.cam import default_target_layer, grad_cam, make_cam, resolve_target_layer, score_cam
from spectrascope.ops.cam import (CamError, box_mask, energy_in_box, gradcam_pp_weights, localisation_scores,
                                  normalize_maps, pointing_game, weighted_cam)

MAP_TOL, W_TOL = 1e-5, 1e-6


# ---------------------------------------------------------------------------- fixture models

class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, 1, 1),
                                      nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 16, 3, 1, 1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(16, 10)

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.features(x))))


class IndicatorMaps(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("maps", torch.zeros(16, 4, 4))

    def forward(self, x):
        return self.maps[None].repeat(x.shape[0], 1, 1, 1)


class RegionOracle(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(IndicatorMaps())
        self.head = nn.Linear(3 * 32 * 32, 2, bias=False)

    def forward(self, x):
        self.features(x)
        return self.head(x.flatten(1))


def _load(case, model):
    t = load_file(str(fixtures_dir("methods/scorecam") / f"{case}.safetensors"))
    model.load_state_dict({k[len("model."):]: v for k, v in t.items() if k.startswith("model.")})
    return model.eval(), t


@pytest.fixture(scope="module")
def tiny():
    return _load("tinycnn_32", TinyCNN())


@pytest.fixture(scope="module")
def oracle():
    return _load("region_oracle_32", RegionOracle())


CLASSES = [8, 2]

CASES = [  # flavour, reference map, reference weights, extra kwargs
    ("gradcam-lib", "gradcam_bs16", "gradcam_weights_bs16", {}),
    ("gradcam-lib", "gradcam_bs4", "gradcam_weights_bs4", {}),
    ("gradcam-lib", "gradcam_softmaxtarget_bs16", "gradcam_softmaxtarget_weights", {"score": "softmax"}),
    ("torchcam", "torchcam_bs32", "torchcam_weights_bs32", {"output_size": "layer"}),
    ("torchcam", "torchcam_bs32_upsampled_input_res", "torchcam_weights_bs32", {}),
    ("authors", "authors", None, {}),
]


@pytest.mark.parametrize("flavour,ref,wref,kw", CASES, ids=[c[1] for c in CASES])
@pytest.mark.parametrize("bs", [1, 5, 32])
def test_scorecam_matches_reference_flavours(tiny, flavour, ref, wref, kw, bs):
    model, t = tiny
    cam, w = score_cam(model, "features.7", t["input"], CLASSES, flavour, batch_size=bs, return_weights=True, **kw)
    assert cam.shape == t[ref].shape
    assert (cam - t[ref]).abs().max() <= MAP_TOL
    if wref:
        assert (w - t[wref]).abs().max() <= W_TOL


def test_scorecam_authors_channel_scores(tiny):
    model, t = tiny
    _, w = score_cam(model, model.features[7], t["input"], CLASSES, "authors", return_weights=True)
    for i in range(2):
        ref = t[f"authors_channel_scores.{i}"]
        got = w[i][w[i] != 0]           # constant channels are skipped (weight 0)
        assert got.shape == ref.shape
        assert (got - ref).abs().max() <= W_TOL


@pytest.mark.parametrize("flavour,ref,wref", [("gradcam-lib", "fullres.gradcam_bs16", "fullres.gradcam_weights"),
                                              ("torchcam", "fullres.torchcam_bs32", "fullres.torchcam_weights"),
                                              ("authors", "fullres.authors", None)])
def test_scorecam_full_resolution_target(tiny, flavour, ref, wref):
    model, t = tiny
    cam, w = score_cam(model, "features.1", t["input"], CLASSES, flavour, batch_size=8, return_weights=True)
    assert (cam - t[ref]).abs().max() <= MAP_TOL
    if wref:
        assert (w - t[wref]).abs().max() <= W_TOL


@pytest.mark.parametrize("flavour,ref,kw", [("gradcam-lib", "gradcam_bs16", {}),
                                            ("torchcam", "torchcam_bs32_upsampled_input_res", {}),
                                            ("torchcam", "torchcam_bs32", {"output_size": "layer"}),
                                            ("authors", "authors", {})])
def test_region_oracle(oracle, flavour, ref, kw):
    model, t = oracle
    cam = score_cam(model, "features", t["input"], [0], flavour, batch_size=4, **kw)
    assert (cam - t[ref]).abs().max() <= MAP_TOL
    if kw.get("output_size") == "layer":
        return
    c = cam[0]
    r, col = divmod(int(c.argmax()), c.shape[1])
    assert 8 <= r <= 15 and 16 <= col <= 23
    inside = torch.zeros_like(c, dtype=torch.bool)
    inside[8:16, 16:24] = True
    assert c[inside].mean() > 5 * c[~inside].mean()


def test_region_oracle_logit_temperature(oracle):
    model, t = oracle
    scaled = RegionOracle()
    scaled.load_state_dict(model.state_dict())
    scaled.head.weight.data.mul_(10)
    cam, w = score_cam(scaled.eval(), "features", t["input"], [0], batch_size=16, return_weights=True)
    assert (cam - t["scale10.gradcam_bs16"]).abs().max() <= MAP_TOL
    assert (w - t["scale10.gradcam_weights"]).abs().max() <= W_TOL
    assert w[0, 6] == pytest.approx(0.9725, abs=1e-4)


# ---------------------------------------------------------------------------- behaviour

class CountingForward:
    """Records the batch size of every forward of a model."""

    def __init__(self, model):
        self.sizes = []
        self.h = model.register_forward_pre_hook(lambda _m, args: self.sizes.append(args[0].shape[0]))


def _no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_streaming_and_hook_lifetime(tiny):
    model, t = tiny
    layer = resolve_target_layer(model, "features.7")      # its layout is read in a dry forward, not counted
    counter = CountingForward(model)
    try:
        score_cam(model, layer, t["input"], CLASSES, batch_size=5)
    finally:
        counter.h.remove()
    # one activation pass of 2 images, one forward of a blank image for the 5 constant channels
    # (their masks are all zero), then the other 27 masked inputs in chunks of at most 5
    assert counter.sizes[0] == 2
    assert max(counter.sizes[1:]) <= 5 and sum(counter.sizes[1:]) == 1 + 27
    assert _no_hooks(model)


def test_hooks_removed_on_error(tiny):
    model, t = tiny
    with pytest.raises(CamError):
        score_cam(model, "features.7", t["input"], [3, 99])       # class outside the head
    assert _no_hooks(model)


def test_shift_invariance_and_range(tiny):
    model, t = tiny

    class Shifted(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x) + 7.0

    cam, w = score_cam(model, "features.7", t["input"], CLASSES, return_weights=True)
    cam2, w2 = score_cam(Shifted(model), "m.features.7", t["input"], CLASSES, return_weights=True)
    assert (w - w2).abs().max() <= 1e-6
    assert cam.min() >= 0 and cam.max() <= 1
    assert torch.allclose(cam.flatten(1).max(1).values, torch.ones(2), atol=1e-6)


def test_multiple_layers_mean_before_final_minmax(tiny):
    model, t = tiny
    a = score_cam(model, "features.7", t["input"], CLASSES)
    b = score_cam(model, "features.4", t["input"], CLASSES)
    both = score_cam(model, ["features.7", "features.4"], t["input"], CLASSES)
    assert (both - normalize_maps((a + b) / 2)).abs().max() <= 1e-6


class NHWCNet(nn.Module):
    """TinyCNN whose target layer emits channels-last maps (as MetaFormer stages do)."""

    def __init__(self, base):
        super().__init__()
        self.base = base
        self.last = ToNHWC()

    def forward(self, x):
        f = self.last(self.base.features(x))
        return self.base.classifier(f.mean(dim=(1, 2)))


class ToNHWC(nn.Module):
    def forward(self, x):
        return x.permute(0, 2, 3, 1)


@pytest.mark.parametrize("flavour", ["gradcam-lib", "authors", "torchcam"])
def test_nhwc_target_equals_nchw(tiny, flavour):
    model, t = tiny
    ref = score_cam(model, "features.7", t["input"], CLASSES, flavour)
    got = score_cam(NHWCNet(model).eval(), "last", t["input"], CLASSES, flavour, layout="NHWC")
    assert (got - ref).abs().max() <= 1e-5


def test_constant_channels_give_no_nan(oracle):
    model, t = oracle
    x = t["input"]
    model2 = RegionOracle()
    model2.load_state_dict(model.state_dict())
    model2.features[0].maps[3:] = 0.5                  # 13 constant channels
    for flavour in ("gradcam-lib", "authors", "torchcam"):
        cam = score_cam(model2.eval(), "features", x, [0], flavour)
        assert torch.isfinite(cam).all()


def test_auto_batch_size_from_memory_budget(tiny):
    model, t = tiny
    counter = CountingForward(model)
    try:
        cam = score_cam(model, "features.7", t["input"], CLASSES, batch_size=None, memory_budget=200_000)
    finally:
        counter.h.remove()
    assert (cam - t["gradcam_bs16"]).abs().max() <= MAP_TOL
    assert max(counter.sizes[2:]) < 32          # the budget forced chunks smaller than one image's channels


def test_default_batch_is_capped_on_cpu(tiny):
    """The automatic batch: masked inputs per forward never exceed the CPU cap, maps unchanged."""
    from spectrascope.ops.cam import AUTO_BATCH_CAP
    model, t = tiny
    counter = CountingForward(model)
    try:
        cam = score_cam(model, "features.7", t["input"], CLASSES)
    finally:
        counter.h.remove()
    assert (cam - t["gradcam_bs16"]).abs().max() <= MAP_TOL
    assert max(counter.sizes[2:]) == AUTO_BATCH_CAP["cpu"]


def test_cpu_workers_and_batch_split():
    """How a CPU shares its threads among side-by-side masked forwards, and the budget among them."""
    from spectrascope.ops.cam import MAX_CPU_WORKERS, auto_batch_size, cpu_workers
    assert cpu_workers(2, 10) == (2, 1)
    assert cpu_workers(1, 10) == (1, 1)
    assert cpu_workers(2, 1) == (1, 2)                       # one chunk: one forward with every thread
    assert cpu_workers(4, 10, workers=1) == (1, 4)
    assert cpu_workers(4, 10, workers=2) == (2, 2)
    assert cpu_workers(64, 100) == (MAX_CPU_WORKERS, 64 // MAX_CPU_WORKERS)
    per = 4 * (3 * 32 * 32 * 2 + 32 * 32) + 3 * 1000
    assert auto_batch_size((3, 32, 32), 10 * per, 1000, "cpu", workers=1) == 10
    assert auto_batch_size((3, 32, 32), 10 * per, 1000, "cpu", workers=2) == 5


@pytest.fixture()
def two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def test_side_by_side_forwards_equal_one_at_a_time(tiny, two_threads):
    """On a CPU with 2 threads the masked forwards run two at a time on one thread each: the same
    maps and weights as one at a time (and the references), every forward at most the batch,
    and the thread count restored."""
    model, t = tiny
    cam = make_cam(model, "scorecam", "features.7", batch_size=4)   # its layout is read in a dry forward
    counter = CountingForward(model)
    try:
        got = cam(t["input"], CLASSES)
    finally:
        counter.h.remove()
    assert cam.plan_ == {"batch_size": 4, "workers": 2, "threads": 1}
    assert torch.get_num_threads() == 2
    one, w1 = score_cam(model, "features.7", t["input"], CLASSES, batch_size=4, workers=1, return_weights=True)
    assert (got - one).abs().max() <= 1e-6 and (cam.weights_[0] - w1).abs().max() <= 1e-7
    assert (got - t["gradcam_bs16"]).abs().max() <= MAP_TOL
    assert (cam.weights_[0] - t["gradcam_weights_bs16"]).abs().max() <= W_TOL
    # the capture, one blank forward, then the 27 other pairs in full chunks of 4 (the last one 3)
    assert counter.sizes[0] == 2 and sorted(counter.sizes[1:]) == [1, 3] + [4] * 6


class NaNAfterCapture(nn.Module):
    """Finite logits for the first (capture) forward, NaN for the masked ones."""

    def __init__(self, base):
        super().__init__()
        self.base = base
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        out = self.base(x)
        return out if self.calls == 1 else out * float("nan")


def test_side_by_side_failure_stops_and_restores_threads(tiny, two_threads):
    from spectrascope.errors import NonFiniteError
    model, t = tiny
    with pytest.raises(NonFiniteError, match="non-finite"):
        score_cam(NaNAfterCapture(model).eval(), "base.features.7", t["input"], CLASSES, batch_size=4)
    assert torch.get_num_threads() == 2 and _no_hooks(model)


def test_amp_bf16_scores_masked_forwards_only(tiny):
    """--amp bf16: the capture forward (masks, combined activations) stays float32, the masked
    forwards run under bf16 autocast; the maps stay close to the float32 ones."""
    from spectrascope.engine.runner import RunConfig, Runner
    model, t = tiny
    cam = make_cam(model, "scorecam", "features.7", runner=Runner(RunConfig(amp="bf16")), batch_size=8)
    assert cam.capture_runner().config.amp == "off" and cam.runner.config.amp == "bf16"
    got = cam(t["input"], CLASSES)
    assert torch.isfinite(got).all()
    assert 0 < (got - t["gradcam_bs16"]).abs().max() <= 0.05


def test_bad_requests(tiny):
    model, t = tiny
    with pytest.raises(CamError, match="flavour"):
        score_cam(model, "features.7", t["input"], flavour="nope")
    with pytest.raises(CamError, match="neither a tap"):
        score_cam(model, "features.99", t["input"])
    with pytest.raises(CamError, match="target classes"):
        score_cam(model, "features.7", t["input"], [1, 2, 3])
    with pytest.raises(CamError, match="needs spatial feature maps"):
        score_cam(model, "classifier", t["input"])


# ---------------------------------------------------------------------------- Grad-CAM

class GapLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


def test_gradcam_closed_form():
    torch.manual_seed(1)
    model = GapLinear().eval()
    x = torch.randn(3, 3, 8, 8)
    cls = [0, 3, 1]
    acts = model.features(x).detach()
    w = model.fc.weight.detach()[cls] / 64.0                  # d logit / d A = W[c, k] / (h w)
    ref = normalize_maps(weighted_cam(w, acts))
    got = grad_cam(model, "features", x, cls, output_size="layer")
    assert (got - ref).abs().max() <= 1e-5
    # Grad-CAM++ with constant gradients: alpha = 1 / (2 + sum A * g)
    got_pp, wpp = grad_cam(model, model.features, x, cls, plus_plus=True, output_size="layer", return_weights=True)
    g = w[:, :, None, None].expand_as(acts)
    assert (wpp - gradcam_pp_weights(g, acts)).abs().max() <= 1e-6
    assert (got_pp - normalize_maps(weighted_cam(wpp, acts))).abs().max() <= 1e-5
    up = grad_cam(model, "features", x, cls)
    assert up.shape == (3, 8, 8) and up.max() <= 1 + 1e-6


def test_gradcam_pp_weights_formula():
    g = torch.tensor([[[[1.0, -2.0], [0.0, 0.5]]]])
    a = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    s = a.sum()
    alpha = g ** 2 / (2 * g ** 2 + s * g ** 3 + 1e-7)
    alpha[g == 0] = 0
    ref = (alpha * g.clamp_min(0)).sum()
    assert gradcam_pp_weights(g, a)[0, 0] == pytest.approx(float(ref), rel=1e-6)


def test_gradcam_nhwc_zoo_layer_matches_autograd():
    model = spectrascope.create_model("dfformer_s18", num_classes=5, img_size=64, depths=[1, 1, 1, 1],
                                      dims=[8, 16, 24, 32]).eval()
    x = torch.randn(2, 3, 64, 64)
    tl = default_target_layer(model)
    assert (tl.path, tl.layout) == ("stages.1", "NHWC")     # 8x8 at 64 px: the last map of at least 7x7
    ref_logits = model(x)
    got = grad_cam(model, None, x, [1, 4], output_size="layer")
    assert model.stages[1] is tl.module and _no_hooks(model)
    assert torch.equal(model(x), ref_logits)                 # the model is restored
    store = {}
    h = model.stages[1].register_forward_hook(lambda _m, _i, o: store.setdefault("a", o))
    out = model(x)
    h.remove()
    a = store["a"]
    g = torch.autograd.grad(out[[0, 1], [1, 4]].sum(), a)[0]
    a, g = a.permute(0, 3, 1, 2), g.permute(0, 3, 1, 2)
    ref = normalize_maps(weighted_cam(g.mean(dim=(2, 3)), a.detach()))
    assert (got - ref).abs().max() <= 1e-5


def test_resolve_target_layer_by_tap_role_and_path():
    model = spectrascope.create_model("dfformer_s18", num_classes=5, img_size=64, depths=[1, 1, 1, 1],
                                      dims=[8, 16, 24, 32])
    assert resolve_target_layer(model, "stage").path == "stages.3"
    assert resolve_target_layer(model, "s3.b0.block").layout == "NHWC"
    assert resolve_target_layer(model, "stages.2").name == "stage3"
    with pytest.raises(CamError, match="needs spatial feature maps"):
        resolve_target_layer(model, "s3.b0.df_routing")


def test_vit_like_default_layer_drops_class_token():
    timm = pytest.importorskip("spectrascope.compat").timm_available()
    if not timm:
        pytest.skip("timm is not installed (optional extra)")
    model = spectrascope.create_model("timm:vit_tiny_patch16_224", num_classes=3, img_size=32,
                                      patch_size=8).eval()
    tl = default_target_layer(model)
    assert tl.layout == "NLC" and tl.num_prefix_tokens == 1
    cam = score_cam(model, None, torch.randn(1, 3, 32, 32), batch_size=64)
    assert cam.shape == (1, 32, 32)


# ---------------------------------------------------------------------------- localisation

def test_localisation_scores_on_hand_made_maps():
    cam = torch.zeros(3, 8, 8)
    cam[0, 2, 3] = 1.0                    # peak inside the box, all energy inside
    cam[1, 7, 7] = 1.0                    # peak outside
    cam[1, 2, 2] = 0.5
    cam[2] = 1.0                          # flat map: energy = box area share
    boxes = [[(1, 1, 5, 4)], [(1, 1, 5, 4)], [(0, 0, 4, 2)]]    # (x0, y0, x1, y1), half-open
    m = box_mask(boxes[0], (8, 8))
    assert m.sum() == 12 and m[1:4, 1:5].all()
    hits = pointing_game(cam, boxes)
    assert hits.tolist() == [True, False, True]               # argmax of a flat map is pixel 0
    e = energy_in_box(cam, boxes)
    assert e[0] == pytest.approx(1.0) and e[1] == pytest.approx(0.5 / 1.5) and e[2] == pytest.approx(8 / 64)
    assert pointing_game(cam[1:2], [[(1, 1, 5, 4)]], tolerance=4).tolist() == [True]
    s = localisation_scores(cam, boxes)
    assert s["pointing_accuracy"] == pytest.approx(2 / 3)
    assert energy_in_box(torch.zeros(1, 4, 4), [[(0, 0, 2, 2)]]).isnan().all()


def test_largest_activation_asked_once_per_input_shape(tiny):
    """The memory estimate of the automatic batch is one probed forward per model and input shape:
    a second Score-CAM call of the same shape runs one forward fewer, with the same maps."""
    from spectrascope.engine import cam as cam_mod
    model, t = tiny
    x = t["input"]
    cam_mod._LARGEST.pop(model, None)
    counts, maps = [], []
    for _ in range(2):
        counter = CountingForward(model)
        try:
            maps.append(score_cam(model, "features.7", x, CLASSES))
        finally:
            counter.h.remove()
        counts.append(len(counter.sizes))
    assert counts[1] == counts[0] - 1
    assert torch.equal(maps[0], maps[1])
    first = cam_mod.largest_activation(model, x[:1])
    probed = cam_mod._largest_activation(model, x[:1], cam_mod.cam_runner(model))
    assert first == probed                                      # the kept answer is the probed one
    counter = CountingForward(model)
    try:
        small = torch.nn.functional.interpolate(x, size=(16, 16))
        assert cam_mod.largest_activation(model, small[:1]) < first      # another shape: probed again
        assert len(counter.sizes) == 1
    finally:
        counter.h.remove()
