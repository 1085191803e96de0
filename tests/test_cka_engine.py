"""CKA on the one engine: the reducer's statistics merged over ranks, a constant tap through the
CLI (JSON null with a diagnostic naming the tap), a NaN checkpoint (one-line stop, nothing
written), torchrun with two processes (world_size 2, equal to one process), and the Fig. 7
recipe through ``spectrascope figure`` (its data, not its pixels)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

import spectrascope
from distributed import torchrun
from spectrascope.analyses.cka import compare_models
from spectrascope.cli import main
from spectrascope.engine.reducers.cka import CKAReducer
from spectrascope.probe import Probe, TapSpec

KW = ["--model-kwargs", "depths=1,1,1,1", "--model-kwargs", "dims=8,8,16,16"]
TINY = [*KW, "--img-size", "32"]


def strict(path):
    def refuse(tok):
        raise ValueError(f"non-standard JSON token {tok}")
    return json.loads(path.read_text(), parse_constant=refuse)


def cka(args, **kw):
    return CliRunner().invoke(main, ["cka", *args], catch_exceptions=False, **kw)


@pytest.fixture(scope="module")
def noise_images(tmp_path_factory):
    from PIL import Image
    folder = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(1)
    for i in range(12):
        Image.fromarray((rng.random((36, 44, 3)) * 255).astype(np.uint8)).save(folder / f"im{i:02d}.png")
    return folder


def tiny_checkpoint(path, edit):
    torch.manual_seed(0)
    m = spectrascope.create_model("dfformer_s18", img_size=32, depths=[1, 1, 1, 1], dims=[8, 8, 16, 16],
                                  num_classes=10)
    sd = m.state_dict()
    edit(sd)
    torch.save(sd, path)
    return path


# ---------------------------------------------------------------------------- reducer statistics
class _TwoRanks:
    """Stands in for a two-process group: all_reduce combines this rank's tensor with the other's."""

    enabled = True

    def __init__(self, other_state: dict):
        self.other = other_state
        self.calls = []

    def all_reduce(self, t, op="sum"):
        self.calls.append(op)
        other = self.other[op]
        return t + other if op == "sum" else torch.maximum(t, other)


def _flat(state, keys):
    return torch.cat([state[k].double().flatten() for k in keys])


@pytest.mark.parametrize("engine", ["spectrascope", "torch-cka"])
def test_reducer_all_reduce_of_two_shards_equals_one_process(engine):
    g = torch.Generator().manual_seed(3)
    a = nn.Sequential(nn.Conv2d(3, 6, 3, 2, 1), nn.ReLU(), nn.Conv2d(6, 6, 3, 1, 1), nn.Tanh()).eval()
    b = nn.Sequential(nn.Conv2d(3, 5, 5, 2, 2), nn.GELU()).eval()
    ta = [TapSpec(n, "path", n, "raw") for n in ("0", "1", "3")]
    tb = [TapSpec(n, "path", n, "raw") for n in ("0", "1")]
    x = torch.randn(40, 3, 12, 12, generator=g) + 0.5
    batches = list(x.split(8))
    one = compare_models(a, b, batches, taps_a=ta, taps_b=tb, engine=engine, num_batches=5)
    # the two ranks' reducers: batch i on rank i mod 2, exactly as the runner shards
    shards = []
    for rank in range(2):
        red = CKAReducer(ta, tb, engine=engine, num_batches=5)
        _run_only(a, b, [bt for k, bt in enumerate(batches) if k % 2 == rank], red)
        shards.append(red)
    st1 = shards[1].state()
    keys_sum = [k for k in st1 if k not in shards[1].engine.MAX_KEYS]
    keys_max = [k for k in st1 if k in shards[1].engine.MAX_KEYS]
    fake = _TwoRanks({"sum": _flat(st1, keys_sum), "max": _flat(st1, keys_max) if keys_max else None})
    shards[0].all_reduce(fake)
    assert fake.calls == (["sum", "max"] if keys_max else ["sum"])
    merged = shards[0].compute()
    assert shards[0].engine.batches == 5 and shards[0].engine.examples == 40
    assert ((merged - one.matrix).abs() <= 1e-6 * one.matrix.abs()).all()


def _run_only(a, b, xs, reducer):
    """One rank's share of the comparison, without the final all-reduce."""
    kw = reducer.probe_kwargs
    with Probe(a, reducer.taps_a, callback=reducer.callback("A"), **kw), \
            Probe(b, reducer.taps_b, callback=reducer.callback("B"), **kw), torch.inference_mode():
        for x in xs:
            assert reducer.accepts(x.shape[0])
            reducer.begin_batch()
            a(x)
            b(x)
            reducer.end_batch()


def test_state_round_trip_keeps_the_matrix():
    g = torch.Generator().manual_seed(4)
    from spectrascope.ops.cka import MinibatchCKA
    m = MinibatchCKA(2, 1, labels_a=["x", "y"], labels_b=["z"])
    X = torch.randn(16, 7, generator=g)
    m.update([X, X ** 2], [X[:, :3]])
    m.update([X.flip(0), X.flip(0) ** 2], [X.flip(0)[:, :3] + 1])
    ref = m.compute()
    fresh = MinibatchCKA(2, 1, labels_a=["x", "y"], labels_b=["z"])
    fresh.load_state({k: v.clone() for k, v in m.state().items()})
    assert torch.equal(fresh.compute(), ref) and fresh.batches == 2 and fresh.examples == 32


# ---------------------------------------------------------------------------- constant tap, NaN checkpoint
def test_constant_tap_is_null_in_results_json_with_a_diagnostic_naming_it(tmp_path, noise_images):
    def zero_mlp(sd):
        sd["stages.0.0.mlp.fc2.weight"].zero_()          # the first MLP outputs zeros for every image
    ck = tiny_checkpoint(tmp_path / "dead_mlp.pth", zero_mlp)
    out = tmp_path / "const"
    res = cka(["--model-a", "dfformer_s18", "--checkpoint-a", str(ck), "--model-b", "convformer_s18", *TINY,
               "--taps-a", "stem,s1.b0.mlp,s1.b0.block", "--taps-b", "stem,block", "--images", str(noise_images),
               "--batch-size", "6", "--output", str(out)])
    assert res.exit_code == 0, res.output
    js = strict(out / "results.json")                  # strict JSON: no NaN token anywhere
    assert js["labels_a"] == ["stem", "s1.b0.mlp", "s1.b0.block"]
    row = js["matrix"][1]
    assert row == [None] * len(js["labels_b"])
    assert all(v is not None and math.isfinite(v) for r in (js["matrix"][0], js["matrix"][2]) for v in r)
    diag = [d for d in js["diagnostics"] if "'s1.b0.mlp'" in d]
    assert len(diag) == 1 and "model A" in diag[0] and "constant" in diag[0] and "null" in diag[0]
    warn = [ln for ln in res.output.splitlines() if ln.startswith("warning:") and "'s1.b0.mlp'" in ln]
    assert len(warn) == 1 and "constant over all 12 examples" in warn[0]
    best = [b for b in js["best_match"] if b["side"] == "a" and b["layer"] == "s1.b0.mlp"][0]
    assert best["best_match"] is None and best["cka"] is None
    assert js["provenance"]["world_size"] == 1 and js["world_size"] == 1


@pytest.mark.parametrize("engine", ["spectrascope", "torch-cka"])
def test_nan_checkpoint_stops_with_one_line_and_writes_nothing(tmp_path, noise_images, engine):
    def poison(sd):
        sd["stages.1.0.mlp.fc2.weight"][0, 0] = float("nan")
    ck = tiny_checkpoint(tmp_path / "nan.pth", poison)
    out = tmp_path / "nan_out"
    res = CliRunner().invoke(main, ["cka", "--model-a", "convformer_s18", "--model-b", "dfformer_s18",
                                    "--checkpoint-b", str(ck), *TINY, "--images", str(noise_images),
                                    "--batch-size", "4", "--engine", engine, "--output", str(out)])
    assert res.exit_code != 0
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    err = [ln for ln in lines if ln.startswith("Error")]
    assert len(err) == 1 and "Traceback" not in res.output, res.output
    # the first tap in execution order downstream of the poisoned weight (the fig7 taps have no mlp tap)
    assert "tap s2.b0.block" in err[0] and "batch 1" in err[0] and "stages.1.0.mlp.fc2.weight" in err[0]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".nan_out")]


# ---------------------------------------------------------------------------- torchrun
def test_torchrun_two_processes_equal_one_and_record_world_size_2(tmp_path, noise_images):
    args = ["cka", "--model-a", "gfformer_s18", "--model-b", "dfformer_s18", *TINY, "--images", str(noise_images),
            "--batch-size", "4", "--device", "cpu", "--taps", "stem,residual,block"]
    one = tmp_path / "one"
    res = cka(args[1:] + ["--output", str(one)])
    assert res.exit_code == 0, res.output
    two = tmp_path / "two"
    proc = torchrun([*args, "--output", str(two)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    j1, j2 = strict(one / "results.json"), strict(two / "results.json")
    assert (j1["world_size"], j1["provenance"]["world_size"]) == (1, 1)
    assert (j2["world_size"], j2["provenance"]["world_size"]) == (2, 2)
    assert j2["batches"] == j1["batches"] == 3 and j2["examples"] == 12
    assert j2["labels_a"] == j1["labels_a"] and j2["labels_b"] == j1["labels_b"]
    m1, m2 = np.array(j1["matrix"], dtype=float), np.array(j2["matrix"], dtype=float)
    assert np.isfinite(m1).all()
    assert (np.abs(m1 - m2) <= 1e-6 * np.abs(m1)).all()
    for k in ("hsic_xy", "hsic_xx", "hsic_yy"):
        a, b = np.array(j1[k]), np.array(j2[k])
        assert (np.abs(a - b) <= 1e-6 * np.abs(a)).all()
    assert sorted(p.name for p in two.iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in one.iterdir() if not p.name.startswith("."))


# ---------------------------------------------------------------------------- Fig. 7 through `spectrascope figure`
def test_fig7_figure_command_engine_estimator_footer_and_equal_panels(tmp_path, noise_images):
    res = CliRunner().invoke(main, ["figure", "dfformer-fig7", "--images", str(noise_images), "--num-images", "9",
                                    "--batch-size", "4", "--img-size", "32", "--engine", "torch-cka",
                                    "--estimator", "unbiased", "--output", str(tmp_path)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    folder = tmp_path / "dfformer-fig7"
    summary = strict(folder / "summary.json")
    assert (summary["engine"], summary["estimator"], summary["images"]) == ("torch-cka", "unbiased", 8)
    # the image count and the skipped batch (9 = 4 + 4 + 1) are on the figure and on the console
    assert summary["footer"].startswith("8 images (batch 4)") and "skipped" in summary["footer"]
    assert all(p["skipped_batches"] == 1 and p["images"] == 8 for p in summary["panels"].values())
    skip_lines = [ln for ln in res.output.splitlines() if ln.startswith("warning:") and "skipped a batch of 1" in ln]
    assert len(skip_lines) == 3
    # three panels of one size, one labelled colour bar, 200 dpi PNG + PDF
    boxes = np.array(summary["panel_boxes"])
    assert boxes.shape == (3, 4) and np.allclose(boxes[:, 2:], boxes[0, 2:], atol=1e-6)
    assert summary["colorbar_label"] == "CKA (unbiased, torch-cka engine)" and summary["dpi"] >= 200
    from PIL import Image
    with Image.open(folder / "fig7.png") as im:
        w, _ = im.size
        dpi = im.info.get("dpi", (0, 0))[0]
    assert round(dpi) >= 200 and w == round(summary["figure_size_in"][0] * summary["dpi"])
    assert (folder / "fig7.pdf").read_bytes()[:5] == b"%PDF-"
    js = strict(folder / summary["panels"]["c"]["report"] / "results.json")
    assert js["engine"] == "torch-cka" and len(js["labels_a"]) == 40 and js["skipped_batches"] == 1
    assert strict(folder / "figure.json")["summary"]["engine"] == "torch-cka"


def test_fig7_recipe_rejects_an_unknown_engine(tmp_path):
    res = CliRunner().invoke(main, ["figure", "dfformer-fig7", "--engine", "sklearn", "--output", str(tmp_path)])
    assert res.exit_code == 2 and "sklearn" in res.output and not (tmp_path / "dfformer-fig7").exists()


# ---------------------------------------------------------------------------- runner options
def test_amp_and_channels_last_go_through_the_runner(tmp_path, noise_images):
    base = ["--model-a", "convformer_s18", "--model-b", "dfformer_s18", *TINY, "--images", str(noise_images),
            "--batch-size", "6", "--taps", "stem,block"]
    ref, cl, bf = tmp_path / "ref", tmp_path / "cl", tmp_path / "bf"
    assert cka(base + ["--output", str(ref)]).exit_code == 0
    assert cka(base + ["--channels-last", "--output", str(cl)]).exit_code == 0
    res = cka(["--model-a", "convformer_s18", "--model-b", "convformer_s18", *TINY, "--images", str(noise_images),
               "--batch-size", "6", "--taps", "stem,block", "--amp", "bf16", "--output", str(bf)])
    assert res.exit_code == 0, res.output
    j_ref, j_cl, j_bf = (strict(p / "results.json") for p in (ref, cl, bf))
    assert (j_cl["channels_last"], j_ref["channels_last"]) == (True, False)
    # the same convolutions in another memory order: the same matrix up to float32 rounding of the forward
    assert np.abs(np.array(j_cl["matrix"]) - np.array(j_ref["matrix"])).max() < 1e-4
    # bf16 features, float32 Gram products of the centred features: a self-comparison keeps its unit diagonal
    assert j_bf["amp"] == "bf16" and j_bf["gram_products"] == ["float32"]
    m = np.array(j_bf["matrix"])
    assert np.abs(np.diag(m) - 1).max() < 1e-12 and np.abs(m - m.T).max() < 1e-12


@pytest.mark.parametrize("engine", ["spectrascope", "torch-cka"])
@pytest.mark.parametrize("where, value", [(0, float("nan")), (5, float("inf")), (7, float("-inf")), (3, float("nan"))])
def test_the_gram_matrix_carries_the_nan_check_of_every_example(engine, where, value):
    """The runner's non-finite check reads each tap's small Gram matrix: one bad value in any example
    (the first one included) stops the comparison, naming the tap; large finite features do not."""
    from spectrascope.errors import NonFiniteError
    a = nn.Sequential(nn.Identity(), nn.Flatten()).eval()
    b = nn.Sequential(nn.Flatten()).eval()
    ta = [TapSpec("0", "path", "0", "raw"), TapSpec("1", "path", "1", "raw")]
    tb = [TapSpec("0", "path", "0", "raw")]
    x = torch.randn(8, 2, 3, 3, generator=torch.Generator().manual_seed(0)) * 1e8
    ok = compare_models(a, b, [x], taps_a=ta, taps_b=tb, engine=engine)
    assert torch.isfinite(ok.matrix).all()
    bad = x.clone()
    bad[where, 1, 2, 0] = value
    with pytest.raises(NonFiniteError, match="tap 0 in batch 1"):
        compare_models(a, b, [bad], taps_a=ta, taps_b=tb, engine=engine)
