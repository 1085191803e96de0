"""`amplitude` / `spectrum` on the engine: torchrun equals one process, the non-finite stop,
the early stop after the last tap, reducer states across ranks, mixer-kind shading."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from distributed import ROOT, torchrun
from spectrascope.probe.mixers import annotate_mixers, mixer_kind
from spectrascope.seam import get, run, write_result
from spectrascope.cli import main
from spectrascope.engine.reducers.amplitude import AmplitudeReducer
from spectrascope.probe import Probe, model_taps
from spectrascope.report.amplitude import figures_for, highfreq_figure, shading_spans, spectrum_figure
from spectrascope.zoo.build import build_for_inference

TINY = ["--model-kwargs", "depths=1,1,2,1", "--model-kwargs", "dims=8,16,24,32"]
TINY_KW = {"depths": [1, 1, 2, 1], "dims": [8, 16, 24, 32]}


def strict(text: str) -> dict:
    def refuse(c):
        raise ValueError(f"non-strict JSON constant {c}")
    return json.loads(text, parse_constant=refuse)


def load(out) -> dict:
    return strict((out / "results.json").read_text())


def one_process(args, cwd) -> subprocess.CompletedProcess:
    """The same command in one plain process with the torchrun helper's environment (1 thread)."""
    import os
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONPATH=str(ROOT))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return subprocess.run([sys.executable, "-m", "spectrascope.cli", *[str(a) for a in args]], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_rel(a, b, rel=1e-6):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert a.shape == b.shape
    scale = max(float(np.abs(b).max()), 1e-12)
    assert float(np.abs(a - b).max()) <= rel * scale, (float(np.abs(a - b).max()), scale)


# ---------------------------------------------------------------------------- torchrun = one process

@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    """Random weights saved once, so that both runs analyse the same network."""
    from safetensors.torch import save_file
    torch.manual_seed(3)
    model, _ = build_for_inference("dfformer_s18", img_size=48, **TINY_KW)
    path = tmp_path_factory.mktemp("ckpt") / "random.safetensors"
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.mark.parametrize("kind", ["amplitude", "spectrum"])
def test_torchrun_two_processes_equal_one(tmp_path, kind, random_checkpoint):
    base = [kind, "--model", "dfformer_s18", *TINY, "--img-size", "48", "--num-images", "5", "--batch-size", "1",
            "--checkpoint", random_checkpoint]
    if kind == "amplitude":
        base += ["--save-maps"]
    res1 = one_process(base + ["--output", tmp_path / "one"], tmp_path)
    assert res1.returncode == 0, res1.stderr
    res2 = torchrun(base + ["--output", tmp_path / "two"], cwd=tmp_path, nproc=2)
    assert res2.returncode == 0, res2.stderr
    assert res2.stdout.count(f"{kind} over 5 images") == 1            # rank 0 speaks for all
    one, two = load(tmp_path / "one"), load(tmp_path / "two")
    assert one["provenance"]["world_size"] == 1 and two["provenance"]["world_size"] == 2
    assert two["run"]["world_size"] == 2
    (m1,), (m2,) = one["models"], two["models"]
    assert m1["num_images"] == m2["num_images"] == 5
    assert [t["name"] for t in m1["taps"]] == [t["name"] for t in m2["taps"]]
    for t1, t2 in zip(m1["taps"], m2["taps"]):
        assert t1["num_maps"] == t2["num_maps"] == 5 * t1["shape"][0]
        assert_rel(t2["curve"], t1["curve"])
        if kind == "spectrum":
            assert_rel(t2["map"], t1["map"])
    a1, a2 = np.load(tmp_path / "one" / "maps.npz"), np.load(tmp_path / "two" / "maps.npz")
    assert sorted(a1.files) == sorted(a2.files)
    for k in a1.files:
        assert_rel(a2[k], a1[k])
    # only rank 0 wrote: one folder, no staging leftovers
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# ---------------------------------------------------------------------------- non-finite stop

@pytest.fixture(scope="module")
def nan_checkpoint(tmp_path_factory):
    from safetensors.torch import save_file
    model, _ = build_for_inference("dfformer_s18", img_size=32, **TINY_KW)
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    for v in sd.values():
        if v.is_floating_point():
            v.fill_(float("nan"))
    path = tmp_path_factory.mktemp("ckpt") / "nan.safetensors"
    save_file(sd, str(path))
    return path


def assert_nonfinite_stop(res_code, output, out, first_tap="stem"):
    lines = [ln for ln in output.strip().splitlines() if ln.strip() and not ln.startswith("[")]
    err = [ln for ln in lines if ln.startswith("Error:")]
    assert res_code != 0
    assert len(err) == 1 and "non-finite" in err[0] and f"tap {first_tap} " in err[0] and "checkpoint" in err[0], \
        output
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.mark.parametrize("kind", ["amplitude", "spectrum"])
def test_nan_checkpoint_one_line_stop_nothing_written(tmp_path, nan_checkpoint, kind):
    out = tmp_path / "out"
    res = CliRunner().invoke(main, [kind, "--model", "dfformer_s18", *TINY, "--img-size", "32", "--num-images", "2",
                                    "--checkpoint", str(nan_checkpoint), "--output", str(out)],
                             catch_exceptions=False)
    assert len([ln for ln in res.output.strip().splitlines() if ln.strip()]) == 1, res.output
    # the first tap in execution order: the stem for curves, the first token mixer for spectra
    assert_nonfinite_stop(res.exit_code, res.output, out, "stem" if kind == "amplitude" else "s1.b0.mixer")


def test_nan_checkpoint_under_torchrun_stops_every_rank(tmp_path, nan_checkpoint):
    out = tmp_path / "out"
    res = torchrun(["amplitude", "--model", "dfformer_s18", *TINY, "--img-size", "32", "--num-images", "3",
                    "--batch-size", "1", "--checkpoint", nan_checkpoint, "--output", out], cwd=tmp_path, nproc=2)
    text = res.stdout + res.stderr
    err = [ln for ln in text.splitlines() if ln.startswith("Error:")]
    assert res.returncode != 0 and len(err) == 1, text        # rank 0 speaks; no rank hangs
    assert "non-finite" in err[0] and "tap stem" in err[0] and "checkpoint" in err[0]
    assert "spectrascope/" not in text                          # no traceback of ours
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


# ---------------------------------------------------------------------------- early stop

def _counting(module):
    calls = [0]
    forward = module.forward

    def counted(*a, **k):
        calls[0] += 1
        return forward(*a, **k)
    module.forward = counted
    return calls


def test_stage_1_stops_the_forward_after_stage_1(tmp_path):
    torch.manual_seed(0)
    model, _ = build_for_inference("dfformer_s18", img_size=32, **TINY_KW)
    later = _counting(model.stages[1])            # the second stage: never runs for stage-1 taps
    head = _counting(model.head)
    payload = run("amplitude", model=(model,), stage=(1,), img_size=32, num_images=3, batch_size=1,
                  device="cpu").to_json()
    (m,) = payload["models"]
    assert {t["stage"] for t in m["taps"]} == {1} and m["forward"]["stopped_early"] is True
    assert m["forward"]["batches"] == 3 and later[0] == 0 and head[0] == 0
    full = run("amplitude", model=(model,), img_size=32, num_images=3, batch_size=1, device="cpu").to_json()
    assert later[0] == 3 and head[0] == 0         # the full run stops after the last block too
    assert full["models"][0]["forward"]["stopped_early"] is True
    # the stage-1 curves are those of the full run
    by_name = {t["name"]: t for t in full["models"][0]["taps"]}
    for t in m["taps"]:
        assert np.allclose(t["curve"], by_name[t["name"]]["curve"], atol=1e-6)


def test_cli_stage_1_records_the_early_stop(tmp_path):
    out = tmp_path / "s1"
    res = CliRunner().invoke(main, ["amplitude", "--model", "dfformer_s18", *TINY, "--img-size", "32",
                                    "--num-images", "1", "--stage", "1", "--output", str(out)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    (m,) = load(out)["models"]
    assert m["forward"] == {"batches": 1, "stopped_early": True, "last_tap": "s1.b0.block"}


# ---------------------------------------------------------------------------- reducer state across ranks

def test_reducer_states_merge_to_the_one_process_sums():
    torch.manual_seed(1)
    model, _ = build_for_inference("dfformer_s18", img_size=32, **TINY_KW)
    taps = [t for t in model_taps(model) if t.role in ("residual", "block")]
    xs = [torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(k)) for k in range(4)]
    for maps in (True, False):
        whole, parts = AmplitudeReducer(taps, maps=maps), [AmplitudeReducer(taps, maps=maps) for _ in range(2)]
        for k, x in enumerate(xs):
            for red in (whole, parts[k % 2]):
                with torch.inference_mode(), Probe(model, taps, callback=red, **red.probe_kwargs):
                    model(x)
        merged = AmplitudeReducer(taps, maps=maps)
        merged.load_state(AmplitudeReducer.merge([parts[0].state(), parts[1].state(), {}]))
        ref = whole.finalise()
        for name, st in merged.finalise().items():
            a = st.half_sum if maps else st.diag_sum
            b = ref[name].half_sum if maps else ref[name].diag_sum
            assert st.count == ref[name].count and st.size == ref[name].size and merged.calls[name] == 4
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-9)


def test_reducer_statistic_is_the_probes_finiteness_value():
    """The reducer reads each map once: the value it hands to the probe is finite iff the map is
    (NaN and +-inf anywhere in a map reach every sum), so the probe makes no pass of its own."""
    from spectrascope.probe.spec import TapSpec
    assert AmplitudeReducer.probe_kwargs["finite_from_callback"] is True
    g = torch.Generator().manual_seed(0)
    for maps in (False, True):
        for layout, shape in (("NCHW", (2, 3, 8, 8)), ("NHWC", (2, 8, 8, 3))):
            tap = TapSpec(name="t", role="stage", path="", layout=layout)
            x = torch.randn(*shape, generator=g)
            red = AmplitudeReducer([tap], maps=maps)
            assert red(tap, x).ndim == 0 and torch.isfinite(red(tap, x))
            for bad in (float("nan"), float("inf"), -float("inf")):
                y = x.clone()
                y[1, 2, 5, 1] = bad
                assert not torch.isfinite(AmplitudeReducer([tap], maps=maps)(tap, y))
            # the sums are the statistics of one call per map (two calls above: twice the first)
            st = red.finalise()["t"]
            one = AmplitudeReducer([tap], maps=maps)
            one(tap, x)
            s1 = one.finalise()["t"]
            a, b = (st.half_sum, s1.half_sum) if maps else (st.diag_sum, s1.diag_sum)
            assert st.count == 2 * s1.count and torch.allclose(a, 2 * b, rtol=1e-12, atol=1e-9)


# ---------------------------------------------------------------------------- mixer kinds and figures

def test_mixer_kinds_from_the_models():
    kinds = {}
    for name in ("caformer_s18", "convformer_s18", "dfformer_s18", "poolformer_s12", "identityformer_s12",
                 "gfnet_h_ti", "spanet_s"):
        kw = TINY_KW if name.endswith("s18") else {}
        model, _ = build_for_inference(name, img_size=32 if name != "gfnet_h_ti" else 224, **kw)
        taps = annotate_mixers(model, [t for t in model_taps(model) if t.role in ("residual", "block", "mixer")])
        kinds[name] = {t.stage: t.mixer for t in taps}
    assert kinds["caformer_s18"] == {1: "conv", 2: "conv", 3: "attention", 4: "attention"}
    assert set(kinds["convformer_s18"].values()) == {"conv"}
    assert set(kinds["dfformer_s18"].values()) == {"fft"}
    assert set(kinds["poolformer_s12"].values()) == {"pooling"}
    assert set(kinds["identityformer_s12"].values()) == {"identity"}
    assert set(kinds["gfnet_h_ti"].values()) == {"fft"}
    assert set(kinds["spanet_s"].values()) == {"fft"}
    assert mixer_kind(torch.nn.Conv2d(1, 1, 1)) == "conv" and mixer_kind(torch.nn.Linear(1, 1)) == ""


@pytest.fixture(scope="module")
def two_model_payload():
    # 64 px: stage 3 (attention in CAFormer) has 4x4 maps; stage 4's 2x2 maps are left out (one frequency point)
    return run("amplitude", model=("caformer_s18", "dfformer_s18"), model_kwargs=TINY_KW, img_size=64,
               num_images=1, device="cpu")


def test_highfreq_shading_by_mixer_kind_one_and_two_models(two_model_payload):
    two_model_payload = two_model_payload.to_json()
    ca, df = two_model_payload["models"]
    spans = shading_spans(ca["taps"])
    x = [t["normalised_depth"] for t in ca["taps"]]
    by_tap = {s["tap"]: s for s in spans}
    for i, t in enumerate(ca["taps"]):
        if t["role"] == "residual":
            want = "conv" if t["stage"] <= 2 else "attention"
            assert t["mixer"] == want and by_tap[t["name"]]["kind"] == want
            assert (by_tap[t["name"]]["x0"], by_tap[t["name"]]["x1"]) == (x[i - 1], x[i])
        elif t["role"] == "downsample":
            assert by_tap[t["name"]]["kind"] == "downsample"
        else:
            assert t["name"] not in by_tap
    assert {s["kind"] for s in shading_spans(df["taps"])} == {"fft", "downsample"}
    one = dict(two_model_payload, models=[ca])
    fig = highfreq_figure(one)
    assert [(d["kind"], d["ymin"], d["ymax"]) for d in fig.spectrascope_shading] == \
        [(s["kind"], 0.0, 1.0) for s in spans]
    fig2 = highfreq_figure(two_model_payload)
    drawn = fig2.spectrascope_shading
    assert {(d["model"], d["ymin"], d["ymax"]) for d in drawn} == {("caformer_s18", 0.0, 0.5),
                                                                     ("dfformer_s18", 0.5, 1.0)}
    assert len(drawn) == len(spans) + len(shading_spans(df["taps"]))
    assert len(fig2.axes[0].patches) == len(drawn)
    labels = {t.get_text() for t in fig2.axes[0].get_legend().get_texts()}
    assert {"attention", "convolution", "FFT", "downsampling"} <= labels


def test_figures_png_pdf_dpi_and_labelled_colour_bars(tmp_path, two_model_payload):
    (tmp_path / "amp").mkdir()
    write_result(get("amplitude"), two_model_payload, tmp_path / "amp")
    two_model_payload = two_model_payload.to_json()
    for stem in ("amplitude", "highfreq"):
        with Image.open(tmp_path / "amp" / f"{stem}.png") as im:
            assert min(im.info["dpi"]) >= 200
        assert (tmp_path / "amp" / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
    amp = figures_for(two_model_payload)["amplitude"]
    assert "Normalized depth" in [a.get_ylabel() for a in amp.axes]
    spec = run("spectrum", model="dfformer_s18", model_kwargs=TINY_KW, img_size=32, num_images=1,
               device="cpu").to_json()
    fig = spectrum_figure(spec)
    assert "\u0394 log amplitude (DC = 0)" in [a.get_ylabel() for a in fig.axes]
    absolute = run("spectrum", model="dfformer_s18", model_kwargs=TINY_KW, img_size=32, num_images=1,
                   device="cpu", absolute=True).to_json()
    assert "log amplitude" in [a.get_ylabel() for a in spectrum_figure(absolute).axes]


def test_torchrun_refused_output_stops_every_rank(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    res = torchrun(["spectrum", "--model", "dfformer_s18", *TINY, "--img-size", "32", "--num-images", "2",
                    "--output", out], cwd=tmp_path, nproc=2, timeout=240)
    err = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error:")]
    assert res.returncode != 0 and len(err) == 1 and "exists and is not empty" in err[0], res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"] and (out / "keep.txt").read_text() == "x"
