"""The zoo inside timm: ``timm.create_model`` builds every family after ``import spectrascope``
(names timm owns keep timm's meaning, ours stay reachable as ``spectrascope_<name>``),
``features_only=True`` and ``forward_intermediates`` agree with the models' stage taps,
``resolve_data_config`` gives each card's preprocessing, ``pretrained=True`` goes through the
weights folder, and the compat shim runs before timm's first import."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import spectrascope
from spectrascope.probe import Probe, model_taps
from spectrascope.zoo import registry

FAMILIES = ["dfformer_s18", "cdfformer_s18", "spanet_s", "gfnet_ti", "gfnet_h_ti", "affnet"]
SIZE = 64


@pytest.fixture(scope="module")
def timm():
    from spectrascope.compat import timm_available
    if not timm_available():
        pytest.skip("timm is not installed (optional extra 'timm')")
    import timm as t
    return t


def _x(n=2, size=SIZE):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", FAMILIES)
def test_timm_create_model_builds_each_family(timm, name):
    model = timm.create_model(name, pretrained=False, num_classes=7, img_size=SIZE).eval()
    assert type(model).__module__.startswith("spectrascope.models.")
    with torch.no_grad():
        y = model(_x())
    assert y.shape == (2, 7) and torch.isfinite(y).all()
    assert model.pretrained_cfg["architecture"] == name
    same = timm.create_model("spectrascope_" + name, num_classes=7, img_size=SIZE)
    assert type(same) is type(model)


@pytest.mark.parametrize("name", FAMILIES)
def test_resolve_data_config_is_the_cards_preprocessing(timm, name):
    card = registry.get_card(name)
    with torch.device("meta"):
        model = timm.create_model(name)
    cfg = timm.data.resolve_data_config(model=model)
    assert cfg["input_size"] == tuple(card.default_input_size)
    assert cfg["crop_pct"] == card.crop_pct and cfg["interpolation"] == card.interpolation
    assert cfg["mean"] == tuple(card.mean) and cfg["std"] == tuple(card.std)


def test_preprocessing_of_affnet_and_dfformer(timm):
    with torch.device("meta"):
        aff = timm.data.resolve_data_config(model=timm.create_model("affnet"))
        df = timm.data.resolve_data_config(model=timm.create_model("dfformer_s18"))
    assert aff["input_size"] == (3, 256, 256) and aff["mean"] == (0.0, 0.0, 0.0) and aff["std"] == (1.0, 1.0, 1.0)
    assert df["crop_pct"] == 1.0 and df["input_size"] == (3, 224, 224)


def test_names_timm_owns_keep_timms_meaning(timm):
    with torch.device("meta"):
        theirs = timm.create_model("convformer_s18")
        ours = timm.create_model("spectrascope_convformer_s18")
    assert type(theirs).__module__ == "timm.models.metaformer"
    assert type(ours).__module__ == "spectrascope.models.metaformer"
    assert "dfformer_s18" in timm.list_models("dfformer*") and "spectrascope_poolformer_s12" in timm.list_models()
    assert len(timm.list_models("spectrascope_*")) == len(registry.list_models())


@pytest.mark.parametrize("name", FAMILIES)
def test_features_only_matches_the_stage_taps(timm, name):
    torch.manual_seed(0)
    model = timm.create_model(name, img_size=SIZE).eval()
    torch.manual_seed(0)
    feats = timm.create_model(name, img_size=SIZE, features_only=True).eval()
    assert feats.feature_info.channels() == [d["num_chs"] for d in model.feature_info]
    role = "block" if name == "gfnet_ti" else "stage"
    taps = [t for t in model_taps(model, input_size=(SIZE, SIZE)) if t.role == role]
    x = _x()
    with torch.no_grad(), Probe(model, taps) as probe:
        model(x)
        caps = probe.pop()
        got = feats(x)
        inter = model.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
    want = [caps[t.name] for t in taps]
    assert len(got) == len(want) == len(model.feature_info)
    for g, w, info in zip(got, want, model.feature_info):
        assert g.shape == w.shape and g.shape[1] == info["num_chs"]
        assert g.shape[-1] == -(-SIZE // info["reduction"])
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5)
    torch.testing.assert_close(inter[0], want[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(inter[1], want[-1], rtol=0, atol=1e-5)
    out = timm.create_model(name, img_size=SIZE, features_only=True, out_indices=(1, 2))
    assert out.feature_info.channels() == [model.feature_info[i]["num_chs"] for i in (1, 2)]


@pytest.mark.parametrize("name", ["dfformer_s18", "gfnet_h_ti", "affnet"])
def test_group_matcher_covers_every_parameter_and_grad_checkpointing_is_exact(timm, name):
    from timm.models import group_parameters
    model = spectrascope.create_model(name, img_size=SIZE, num_classes=4, drop_path_rate=0.0)  # deterministic
    groups = group_parameters(model, model.group_matcher())
    names = {n for g in groups.values() for n in g}
    assert names == {n for n, _ in model.named_parameters()}
    x = _x()
    model.train()
    for m in model.modules():      # BatchNorm statistics would move between the two passes
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    loss = model(x).square().mean()
    ref = torch.autograd.grad(loss, list(model.parameters()))
    model.set_grad_checkpointing(True)
    loss2 = model(x).square().mean()
    got = torch.autograd.grad(loss2, list(model.parameters()))
    assert torch.equal(loss, loss2)
    for a, b in zip(ref, got):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_timm_pretrained_reads_the_weights_folder(timm, tmp_path, monkeypatch):
    card = registry.get_card("gfnet_h_ti")
    torch.manual_seed(3)
    state = spectrascope.create_model("gfnet_h_ti", img_size=SIZE).state_dict()
    torch.save({"model": state}, tmp_path / card.weight_file)
    monkeypatch.setenv("SPECTRASCOPE_WEIGHTS", str(tmp_path))
    model = timm.create_model("gfnet_h_ti", pretrained=True, img_size=SIZE)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_compat_shim_runs_before_timms_first_import_and_registers_the_zoo():
    code = ("import sys, spectrascope; assert 'timm' not in sys.modules and 'torchvision' not in sys.modules\n"
            "import timm, torch\n"
            "m = timm.create_model('gfnet_ti', img_size=32, num_classes=3)\n"
            "print(type(m).__name__, tuple(m(torch.zeros(1, 3, 32, 32)).shape))")
    from spectrascope.compat import timm_available
    if not timm_available():
        pytest.skip("timm is not installed (optional extra 'timm')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "GFNet (1, 3)"
