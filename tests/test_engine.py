"""The foundation layers: the tap grammar, Probe's per-forward features, the runner, the
distributed layer and the output policy."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import spectrascope
from spectrascope.engine import dist as D
from spectrascope.engine.runner import Batch, RunConfig, Runner, batch_chunks
from spectrascope.errors import (InternalError, NonFiniteError, OptionError, OutputError, OutputExistsError, TapError,
                                 UserError)
from spectrascope.io import results as R
from spectrascope.probe import Probe, TapRequest, TapSpec, model_taps, resolve_taps, to_nchw
from spectrascope.probe.layouts import from_nchw, infer_layout

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(depths=[1, 1, 2, 1], dims=[8, 16, 24, 32])


def tiny(name="dfformer_s18", size=64, **kw):
    return spectrascope.create_model(name, num_classes=3, img_size=size, **{**TINY, **kw}).eval()


def images(n=2, size=64, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def n_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ---------------------------------------------------------------------------- grammar

def test_grammar_token_kinds_resolve_to_the_declared_taps():
    model = tiny()
    taps = model_taps(model)
    by = lambda req, **kw: resolve_taps(model, req, **kw).names()  # noqa: E731
    assert by("residual") == [t.name for t in taps if t.role == "residual"]
    assert by("s3.b1") == ["s3.b1.df_routing", "s3.b1.df_filter", "s3.b1.mixer", "s3.b1.residual", "s3.b1.mlp",
                           "s3.b1.block"]
    assert by("s3.*.mixer") == ["s3.b0.mixer", "s3.b1.mixer"]
    assert by("stage4,stem") == ["stem", "stage4"]                               # execution order, not request order
    assert by("mixer", stages="2,3") == ["s2.b0.mixer", "s3.b0.mixer", "s3.b1.mixer"]
    assert by("mixer,3") == ["s3.b0.mixer", "s3.b1.mixer"]                      # a bare number is a stage
    assert by("block", blocks="last") == ["s1.b0.block", "s2.b0.block", "s3.b1.block", "s4.b0.block"]
    assert len(by("fig7")) == 4 + 5 + 5
    # module paths: a declared tap when one sits there, else an ad-hoc tap with the layout read from the tensor
    assert by("path:stages.2.0") == ["s3.b0.block"]
    assert by("stages.2.0") == ["s3.b0.block"]
    adhoc = resolve_taps(model, "path:stages.2.0.mlp.fc1", input_size=(64, 64))
    assert (adhoc[0].role, adhoc[0].layout, adhoc[0].grid) == ("path", "NHWC", (4, 4))
    pre = resolve_taps(model, "path:stages.2.0.norm2:pre")
    assert pre.names() == ["s3.b0.residual"]


def test_grammar_errors_name_what_is_accepted():
    model = tiny()
    with pytest.raises(TapError, match="not a preset .* a role of this model"):
        resolve_taps(model, "nope")
    with pytest.raises(TapError, match="stage.*5.*not in this model"):
        resolve_taps(model, "mixer", stages="5")
    with pytest.raises(OptionError, match="--stage: 'x' is not a stage"):
        TapRequest.parse("mixer", stages="x")
    with pytest.raises(OptionError, match="neither a layout"):
        TapRequest.parse("path:stages.0:NQWC")
    with pytest.raises(TapError, match="no module 'stages.9'"):
        resolve_taps(model, "path:stages.9")
    with pytest.raises(TapError, match="matches no tap"):
        resolve_taps(model, "s9.*")
    with pytest.raises(TapError, match="spatial feature maps"):
        resolve_taps(model, "df_routing", spatial=True)
    assert issubclass(TapError, UserError)


def test_preset_falls_back_to_blocks_with_a_note():
    seq = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    seq.taps = lambda: [TapSpec("stem", "stem", "0", "NCHW", stage=1), TapSpec("s1.b0.block", "block", "1", "NCHW",
                                                                                stage=1, index=0)]
    notes = []
    got = resolve_taps(seq, "fig7", notes=notes)
    assert got.names() == ["stem", "s1.b0.block"]
    assert "falls back to 'blocks'" in notes[0] and got.notes == notes


def test_layout_inference_reads_the_tensor():
    size = (64, 96)
    assert infer_layout((2, 5, 16, 24), size) == ("NCHW", (16, 24), 0)
    assert infer_layout((2, 16, 24, 5), size) == ("NHWC", (16, 24), 0)
    assert infer_layout((2, 16, 16, 16), (64, 64))[0] == "?"            # ambiguous without channels or grid
    assert infer_layout((2, 16, 16, 16), (64, 64), channels=16, grid=(16, 16))[0] == "?"
    assert infer_layout((2, 1 + 16, 8), (64, 64), num_prefix_tokens=1) == ("NLC", (4, 4), 1)
    assert infer_layout((2, 10), size) == ("NC", None, 0)
    x = torch.randn(2, 1 + 12, 5)
    y = to_nchw(x, "NLC", num_prefix_tokens=1, grid=(3, 4))
    assert y.shape == (2, 5, 3, 4) and torch.equal(y[:, :, 1, 2], x[:, 1 + 1 * 4 + 2])
    assert torch.equal(from_nchw(y, x, "NLC", 1), x)
    with pytest.raises(TapError, match="do not form a square grid"):
        to_nchw(torch.randn(2, 12, 5), "NLC")


# ---------------------------------------------------------------------------- Probe

def test_probe_shares_hook_points_and_fans_out():
    model = tiny()
    tap = model_taps(model)[0]
    twin = TapSpec("stem_again", tap.role, tap.path, tap.layout, grid=tap.grid)
    before = n_hooks(model)
    with torch.inference_mode(), Probe(model, [tap, twin]) as probe:
        assert n_hooks(model) == before + 1
        model(images())
    got = probe.pop()
    assert torch.equal(got["stem"], got["stem_again"]) and got["stem"].shape[1] == 8      # NCHW
    assert n_hooks(model) == before


def test_probe_stop_early_skips_the_rest_of_the_forward():
    model = tiny()
    taps = resolve_taps(model, "stem,s1.b0.block")
    later = []
    h = model.stages[1].register_forward_hook(lambda *a: later.append(1))
    try:
        runner = Runner(RunConfig(batch_size=2))
        with Probe(model, taps, callback=lambda t, x: None, nchw=False, clone=False) as probe:
            out = runner.forward(model, images(), probe, need_output=False)
            assert out is None and later == []                    # stage 2 never ran
            out = runner.forward(model, images(), probe, need_output=True)
            assert out.shape == (2, 3) and later == [1]
    finally:
        h.remove()


def test_probe_once_refuses_a_module_that_runs_twice():
    relu = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(3, 4, 1), relu, nn.Conv2d(4, 4, 1), relu)
    tap = TapSpec("act", "path", "1", "NCHW")
    with Probe(model, [tap], once=True) as probe, torch.inference_mode():
        probe.begin()
        model(images(1, 8))
        with pytest.raises(TapError, match="fired 2 times"):
            probe.end()


def test_probe_captures_gradients_in_the_tap_layout():
    model = tiny("convformer_s18").double()
    tap = next(t for t in model_taps(model) if t.name == "stage4")
    x = images().double()
    with Probe(model, [tap], grads=True) as probe:
        out = model(x)
        out[:, 1].sum().backward()
    act, grad = probe.pop()[tap.name], probe.pop_grads()[tap.name]
    assert act.shape == grad.shape and act.shape[1] == 32                  # NCHW
    # oracle: the gradient of a retained NHWC stage output, permuted
    store = {}

    def keep(_m, _i, o):
        o.retain_grad()
        store["o"] = o
    h = model.stages[3].register_forward_hook(keep)
    try:
        model.zero_grad()
        model(x)[:, 1].sum().backward()
    finally:
        h.remove()
    assert torch.allclose(grad, store["o"].grad.permute(0, 3, 1, 2), atol=1e-12)


# ---------------------------------------------------------------------------- runner

def test_runner_batches_like_one_process_and_shards_by_batch():
    assert batch_chunks(7, 3) == [[0, 1, 2], [3, 4, 5], [6]]
    ds = [torch.full((3, 4, 4), float(i)) for i in range(7)]
    seen = {}
    for rank in range(2):
        r = Runner(RunConfig(batch_size=3), D.Dist(rank=rank, world=2))
        seen[rank] = [(b.number, b.indices, b.x[:, 0, 0, 0].tolist()) for b in r.batches(ds)]
    assert seen[0] == [(0, [0, 1, 2], [0.0, 1.0, 2.0]), (2, [6], [6.0])]
    assert seen[1] == [(1, [3, 4, 5], [3.0, 4.0, 5.0])]
    labelled = [(torch.zeros(3, 2, 2), i, (i, i + 1)) for i in range(3)]
    b = next(Runner(RunConfig(batch_size=3)).batches(labelled))
    assert b.extra == ([0, 1, 2], [(0, 1), (1, 2), (2, 3)])


def test_runner_options_are_validated():
    with pytest.raises(OptionError, match="--batch-size"):
        RunConfig(batch_size=0)
    with pytest.raises(OptionError, match="--amp"):
        RunConfig(amp="fp8")
    with pytest.raises(OptionError, match="--device: 'foo' is not a device"):
        RunConfig(device="foo")


def test_non_finite_values_stop_the_run_naming_tap_batch_and_cause():
    model = tiny()
    taps = resolve_taps(model, "fig7")
    runner = Runner(RunConfig(batch_size=2))
    with Probe(model, taps, callback=lambda t, x: None, nchw=False, clone=False) as probe:
        runner.forward(model, images(), probe)                                 # finite: fine
        with torch.no_grad():
            model.stages[2][1].mlp.fc2.weight[0, 0] = float("nan")
        with pytest.raises(NonFiniteError, match=r"at tap s3\.b1\.block in batch 4 .*weights hold 1 non-finite"):
            runner.forward(model, Batch(3, [6, 7], images()), probe, need_output=False)
        with torch.no_grad():
            model.stages[2][1].mlp.fc2.weight[0, 0] = 0.0
        x = images()
        x[1, 0, 0, 0] = float("inf")
        with pytest.raises(NonFiniteError, match="at tap stem in batch 1 .*input images"):
            runner.forward(model, x, probe)
    with pytest.raises(NonFiniteError, match="the model output"):
        runner.forward(model, x)


# ---------------------------------------------------------------------------- distributed

def test_dist_without_a_launcher_is_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    d, dev = D.init("cpu")
    assert (d.rank, d.world, d.enabled, d.main) == (0, 1, False, True) and dev.type == "cpu"
    t = torch.ones(2)
    assert d.all_reduce(t) is t and d.all_gather_object(3) == [3] and d.shard([1, 2, 3]) == [1, 2, 3]


def test_dist_collectives_under_torchrun(tmp_path):
    script = tmp_path / "w.py"
    script.write_text(textwrap.dedent("""
        import json, sys, torch
        from spectrascope.engine import dist
        from spectrascope.engine.reducers import Reducer

        class Count(Reducer):
            def __init__(self): self.s = {"x": torch.zeros(2, dtype=torch.float64)}
            def state(self): return self.s
            def load_state(self, st): self.s = dict(st)

        with dist.session("cpu") as (d, dev):
            r = Count()
            if d.rank == 1:
                r.s["x"] += torch.tensor([1.0, 2.0], dtype=torch.float64)
                r.s["y"] = torch.ones(1)                   # a statistic only one rank saw
            r.all_reduce(d)
            out = {"rank": d.rank, "world": d.world, "x": r.s["x"].tolist(), "y": r.s["y"].tolist(),
                   "max": d.all_reduce(torch.tensor([float(d.rank)]), "max").item(), "any": d.any(d.rank == 1),
                   "shard": d.shard(list(range(5))), "gathered": d.gather_object(d.rank)}
            open(sys.argv[1] + f"/r{d.rank}.json", "w").write(json.dumps(out))
    """))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in rows] == [2, 2]
    assert all(r["x"] == [1.0, 2.0] and r["y"] == [1.0] and r["max"] == 1.0 and r["any"] for r in rows)
    assert rows[0]["shard"] == [0, 2, 4] and rows[1]["shard"] == [1, 3]
    assert rows[0]["gathered"] == [0, 1] and rows[1]["gathered"] is None


# ---------------------------------------------------------------------------- outputs

def _stage(final, **kw):
    return R.StagedOutput(final, command="test", **kw)


def test_output_policy_never_loses_a_file(tmp_path):
    out = tmp_path / "out"
    with _stage(out) as st:
        (st / "a.txt").write_text("1")
        (st / "sub").mkdir()
        (st / "sub" / "b.txt").write_text("2")
    assert R.read_manifest(out)["files"] == ["a.txt", "sub/b.txt"]
    with pytest.raises(OutputExistsError, match="use --overwrite"):
        _stage(out)
    # its own files are replaced, stale ones removed
    with _stage(out, overwrite=True) as st:
        (st / "a.txt").write_text("new")
    assert (out / "a.txt").read_text() == "new" and not (out / "sub").exists()
    # a file spectrascope did not write: refused, nothing touched
    (out / "photo.jpg").write_text("precious")
    with pytest.raises(OutputError, match="did not write .*photo.jpg"):
        _stage(out, overwrite=True)
    assert (out / "photo.jpg").read_text() == "precious"
    # another command's outputs are not ours to replace
    other = tmp_path / "train-run"
    with R.StagedOutput(other, command="train") as st:
        (st / "last.pth").write_text("weights")
    with pytest.raises(OutputError, match="outputs of `spectrascope train`"):
        _stage(other, overwrite=True)
    # inputs and their parents are refused even with --overwrite
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "x.png").write_text("p")
    for target in (imgs, tmp_path):
        with pytest.raises(OutputError, match="input"):
            _stage(target, overwrite=True, inputs=[imgs / "x.png"])
    assert (imgs / "x.png").read_text() == "p"


def test_output_errors_and_failed_runs_leave_nothing(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        _stage(f)
    with pytest.raises(OutputError, match="lies under the file"):
        _stage(f / "sub")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if not os.access(ro, os.W_OK):
            with pytest.raises(OutputError, match="permission denied"):
                _stage(ro / "out")
    finally:
        ro.chmod(0o700)
    out = tmp_path / "o"
    with pytest.raises(RuntimeError, match="boom"):
        with _stage(out) as st:
            (st / "half.txt").write_text("x")
            raise RuntimeError("boom")
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".o.")] == []


def test_stale_staging_folders_of_dead_processes_are_cleaned(tmp_path):
    out = tmp_path / "res"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = tmp_path / f".res.partial-{R._HOST}-{proc.pid}"
        stale.mkdir()
        alive_other = tmp_path / f".res.partial-otherhost-{proc.pid}"
        alive_other.mkdir()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with _stage(out) as st:
            (st / "r.txt").write_text("ok")
        assert not stale.exists() and alive_other.exists() and (out / "r.txt").is_file()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_strict_json():
    assert R.loads(R.dumps({"a": [1.0, None]})) == {"a": [1.0, None]}
    with pytest.raises(InternalError, match=r"\$\.m\[1\]"):
        R.dumps({"m": [0.0, float("nan")]})
    with pytest.raises(ValueError, match="NaN"):
        R.loads('{"a": NaN}')
