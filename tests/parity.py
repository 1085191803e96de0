"""Helpers to check our models against the official-code fixtures in ../shared/fixtures/parity."""
from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from conftest import fixtures_dir

import spectrascope


def load_fixture(name: str):
    folder = fixtures_dir("parity")
    meta = json.loads((folder / f"{name}.json").read_text())
    tensors = load_file(str(folder / f"{name}.safetensors"))
    state = {k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}
    return meta, tensors, state


def tolerance(ref: torch.Tensor) -> float:
    """The fixtures' recommended bound: 1e-5 of the output scale."""
    return 1e-5 * max(1.0, ref.abs().max().item())


def run_with_feats(model, x, paths):
    feats, handles = {}, []
    for p in paths:
        mod = model.get_submodule(p)

        def hook(_m, _i, out, p=p):
            feats[p] = out.detach().clone()
        handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)                      # warm-up (see fixtures README, first-call pitfall)
            y = model(x)
    finally:
        for h in handles:
            h.remove()
    return y, feats


def check_fixture(name: str, model_name: str, overrides: dict, *, num_classes: int = 10):
    meta, tensors, state = load_fixture(name)
    hw = tuple(meta["input_size"][1:])
    model = spectrascope.create_model(model_name, num_classes=num_classes, img_size=hw, **overrides)
    report = spectrascope.checkpoint.load_state_dict(model, state, strict=True)
    assert report.ok and not report.adapted
    model.eval()
    feat_paths = [k[len("feat."):] for k in meta["feats"]]
    y, feats = run_with_feats(model, tensors["input"], feat_paths)
    ref = tensors["output"]
    err = (y - ref).abs().max().item()
    assert err <= tolerance(ref), f"{name}: output differs by {err:.3g}"
    for p in feat_paths:
        r = tensors[f"feat.{p}"]
        got = feats[p]
        assert got.shape == r.shape, f"{name}: {p} shape {tuple(got.shape)} vs {tuple(r.shape)}"
        e = (got - r).abs().max().item()
        assert e <= tolerance(r), f"{name}: feature {p} differs by {e:.3g}"
    return model, meta, tensors
