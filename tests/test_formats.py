"""timm <-> official state-dict layouts (spectrascope.zoo.formats): exact round trips, timm's own
models accept the converted dicts strictly, timm-layout files load into zoo models with timm's logits,
official-layout files load into ``timm:<name>`` through timm's filter, and ``strict=False`` refuses
checkpoints that fit under half of the model."""
from __future__ import annotations

import logging

import pytest
import torch
from click.testing import CliRunner

import spectrascope
from spectrascope.errors import CheckpointError
from spectrascope.zoo import formats
from spectrascope.zoo.checkpoint import load_checkpoint, save_safetensors

NAMES = ["convformer_s18", "caformer_s18", "poolformerv2_s12", "poolformer_s12"]
SIZE = 64


def _timm():
    from spectrascope.compat import timm_available
    if not timm_available():
        pytest.skip("timm is not installed (optional extra 'timm')")
    import timm
    return timm


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter perturbed (norms, scales and layer scales included), so that a wrong
    mapping of any tensor changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def _images(n=2):
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_is_exact(name):
    state = spectrascope.create_model(name).state_dict()
    timm_layout = formats.to_timm(state)
    assert formats.detect(timm_layout)[0] == formats.TIMM and formats.detect(state)[0] == formats.OFFICIAL
    back = formats.to_official(timm_layout)
    assert list(back) == list(state)
    assert all(torch.equal(back[k], state[k]) for k in state)
    again = formats.to_timm(back)
    assert list(again) == list(timm_layout) and all(torch.equal(again[k], timm_layout[k]) for k in again)


@pytest.mark.parametrize("name", NAMES)
def test_converted_state_fits_timm_strictly(name):
    timm = _timm()
    with torch.device("meta"):
        ref = timm.create_model(name, pretrained=False)
    state = formats.to_timm(spectrascope.create_model(name).state_dict())
    own = ref.state_dict()
    assert set(state) == set(own)
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in own.items()}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_checkpoint_loads_into_zoo_model_with_timms_outputs(name, suffix, tmp_path, caplog):
    timm = _timm()
    torch.manual_seed(0)
    ref = _randomise(timm.create_model(name, pretrained=False))
    path = tmp_path / f"{name}{suffix}"
    if suffix == ".safetensors":
        save_safetensors(ref, path)
    else:
        torch.save(ref.state_dict(), path)
    with caplog.at_level(logging.WARNING, logger="spectrascope"):
        ours = spectrascope.create_model(name, checkpoint=path).eval()
    notes = [r.getMessage() for r in caplog.records if "timm's layout" in r.getMessage()]
    assert len(notes) == 1 and name.split("_")[0] in notes[0]
    assert ours.checkpoint_report.layout and ours.checkpoint_report.ok
    x = _images()
    with torch.no_grad():
        if name == "poolformer_s12":
            # PoolFormer v1: timm applies the output GroupNorm after pooling, the official code before
            # (on the map): the heads differ by design, the features agree
            got, want = ours.forward_features(x), ref.forward_features(x)
        else:
            got, want = ours(x), ref(x)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-4


def test_official_checkpoint_loads_into_timm_model_through_timms_filter(tmp_path, caplog):
    _timm()
    ours = _randomise(spectrascope.create_model("convformer_s18"))
    path = tmp_path / "convformer_s18.pth"
    torch.save(ours.state_dict(), path)
    with caplog.at_level(logging.WARNING, logger="spectrascope"):
        theirs = spectrascope.create_model("timm:convformer_s18", checkpoint=path).eval()
    assert any("checkpoint_filter_fn" in r.getMessage() for r in caplog.records)
    x = _images()
    with torch.no_grad():
        assert (theirs(x) - ours(x)).abs().max().item() < 1e-4


def test_convert_command_round_trips(tmp_path):
    from spectrascope.cli import main
    state = _randomise(spectrascope.create_model("caformer_s18")).state_dict()
    src = tmp_path / "caformer_s18.pth"
    torch.save(state, src)
    runner = CliRunner()
    args = ["convert", str(src), str(tmp_path / "t.safetensors"), "--to", "timm"]
    from spectrascope.compat import timm_available
    if timm_available():
        args += ["--model", "caformer_s18"]           # the result loads strictly into timm's caformer_s18
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "official -> timm" in res.output
    res = runner.invoke(main, args)
    assert res.exit_code == 2 and "--overwrite" in res.output
    res = runner.invoke(main, ["convert", str(tmp_path / "t.safetensors"), str(tmp_path / "o.pth"), "--to",
                               "official", "--model", "caformer_s18"])
    assert res.exit_code == 0, res.output
    back = torch.load(tmp_path / "o.pth", weights_only=True)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    res = runner.invoke(main, ["convert", str(src), str(tmp_path / "x.pth"), "--to", "onnx"])
    assert res.exit_code == 2 and "--to" in res.output


def test_convert_refuses_other_families(tmp_path):
    from spectrascope.cli import main
    src = tmp_path / "gfnet.pth"
    torch.save(spectrascope.create_model("gfnet_ti", img_size=32).state_dict(), src)
    res = CliRunner().invoke(main, ["convert", str(src), str(tmp_path / "o.pth"), "--to", "timm"])
    assert res.exit_code == 2 and "Error:" in res.output and len(res.output.strip().splitlines()) == 1


def test_strict_false_refuses_a_checkpoint_fitting_under_half_the_model(tmp_path):
    path = tmp_path / "gfnet.pth"
    torch.save(spectrascope.create_model("gfnet_h_ti", img_size=64).state_dict(), path)
    model = spectrascope.create_model("dfformer_s18", img_size=64)
    with pytest.raises(CheckpointError, match=r"strict=False but the checkpoint fits only \d+%"):
        load_checkpoint(model, path, strict=False)
    # a head of another size is fine: the rest is most of the model
    head = tmp_path / "head.pth"
    torch.save(spectrascope.create_model("dfformer_s18", img_size=64, num_classes=10).state_dict(), head)
    report = load_checkpoint(model, head, strict=False)
    assert report.mismatched and report.fraction > 0.8
