"""Registry, model cards and checkpoint loading (formats, safety, reports)."""
import argparse
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import spectrascope
from spectrascope.zoo.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from parity import load_fixture, run_with_feats, tolerance

TINY = dict(depths=[1, 1, 2, 1], dims=[8, 16, 24, 32])


def test_unknown_name_lists_close_matches():
    with pytest.raises(spectrascope.UnknownModelError, match="did you mean: dfformer_s18"):
        spectrascope.create_model("dfformer_s17")


@pytest.mark.parametrize("alias", ["DFFormer-S18", "dfformer-s18", "DFFORMER_S18"])
def test_official_spellings_resolve(alias):
    assert spectrascope.get_card(alias).name == "dfformer_s18"


def test_list_models_pattern_and_cards():
    names = spectrascope.list_models("cdfformer*")
    assert names == ["cdfformer_b36", "cdfformer_m36", "cdfformer_s18", "cdfformer_s36"]
    assert "dfformer_s18_afno" in spectrascope.list_models("afno")
    card = spectrascope.get_card("dfformer_s18")
    assert card.family == "dfformer" and card.default_input_size == (3, 224, 224)
    assert card.weight_file == "dfformer_s18.pth" and card.weight_url.endswith("/weights/dfformer_s18.pth")
    assert card.params == 30_324_372 and card.feature_layout == "NHWC"
    assert {"stem", "downsample", "block", "mixer", "residual", "mlp", "df_routing", "df_filter"} <= set(card.tap_roles)
    assert spectrascope.get_card("gfformer_s18").weight_file is None  # no released weights


def test_unknown_override_is_reported():
    with pytest.raises(TypeError, match="dfformer_s18"):
        spectrascope.create_model("dfformer_s18", no_such_argument=3)


def test_overrides_accept_official_names_and_classes():
    m = spectrascope.create_model("convformer_s18", num_classes=7, token_mixers=["SepConv", "sepconv", "Attention",
                                                                                  "attention"], **TINY)
    assert type(m.stages[2][0].token_mixer).__name__ == "Attention"
    assert m.head.fc2.out_features == 7
    with pytest.raises(ValueError, match="unknown token mixer"):
        spectrascope.create_model("convformer_s18", token_mixers="fourier", **TINY)


def _reference():
    meta, tensors, state = load_fixture("dfformer_tiny")
    return tensors, state


def _build():
    return spectrascope.create_model("dfformer_s18", num_classes=10, **TINY)


def _check_output(model, tensors):
    model.eval()
    y, _ = run_with_feats(model, tensors["input"], [])
    assert (y - tensors["output"]).abs().max() <= tolerance(tensors["output"])


def test_official_pth(tmp_path):
    tensors, state = _reference()
    path = tmp_path / "dfformer_s18.pth"
    torch.save(state, path)
    model = spectrascope.create_model("dfformer_s18", num_classes=10, checkpoint=path, **TINY)
    _check_output(model, tensors)
    assert model.checkpoint_report.ok and len(model.checkpoint_info["sha256"]) == 64


def test_timm_style_pth_tar_with_args_prefix_and_ema(tmp_path):
    tensors, state = _reference()
    noise = {k: v + 1.0 for k, v in state.items()}
    ckpt = {
        "epoch": 299, "arch": "dfformer_s18",
        "state_dict": {f"module.{k}": v for k, v in noise.items()},
        "state_dict_ema": {f"module.{k}": v for k, v in state.items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3}]},
        "args": argparse.Namespace(model="dfformer_s18", lr=1e-3, drop_path=0.2, img_size=None, aa="rand-m9"),
        "metric": np.float64(83.2),
    }
    path = tmp_path / "model_best.pth.tar"
    torch.save(ckpt, path)
    state_read, info = read_checkpoint(path, use_ema=True)
    assert info["entry"] == "state_dict_ema" and info["args"]["drop_path"] == 0.2 and info["epoch"] == 299
    model = _build()
    load_checkpoint(model, path, use_ema=True)
    _check_output(model, tensors)
    # without use_ema the regular weights are taken
    plain, info = read_checkpoint(path)
    assert info["entry"] == "state_dict"
    assert torch.equal(plain["norm.weight"], noise["norm.weight"])


def test_safetensors(tmp_path):
    tensors, state = _reference()
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    model = _build()
    load_checkpoint(model, path)
    _check_output(model, tensors)


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_pickled_code_is_never_run(tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"x": _Evil(sentinel)}}, f, protocol=2)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        read_checkpoint(path)
    assert not sentinel.exists()


def test_mismatch_report_is_one_readable_error(tmp_path):
    path = tmp_path / "conv.pth"
    torch.save(spectrascope.create_model("convformer_s18", num_classes=10, **TINY).state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(_build(), path)
    text = str(err.value)
    assert "missing keys" in text and "unexpected keys" in text and "conv.pth" in text
    assert "\n" not in text
    report = load_checkpoint(_build(), path, strict=False)
    assert report.missing and report.unexpected and report.loaded > 0


def test_shape_mismatch_is_reported(tmp_path):
    _, state = _reference()
    path = tmp_path / "w.pth"
    torch.save(state, path)
    model = spectrascope.create_model("dfformer_s18", num_classes=5, **TINY)
    with pytest.raises(CheckpointError, match=r"2 shape mismatches: .*head.fc2.weight checkpoint \[10, 128\] vs model \[5, 128\]"):
        load_checkpoint(model, path)


def test_missing_or_garbage_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        read_checkpoint(bad)
