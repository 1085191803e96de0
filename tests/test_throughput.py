"""Throughput/memory vs resolution (DFFormer Figs. 5-6): protocol and command."""
import json
import time

import torch
from click.testing import CliRunner

from spectrascope.cli import main
from spectrascope.engine.throughput import measure, sweep


class Sleeper(torch.nn.Module):
    """A forward of known duration: the measured throughput must be batch / duration."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        time.sleep(self.seconds)
        return x.mean()


def test_measure_counts_images_over_wall_time():
    m = Sleeper(0.02)
    r = measure(m, 8, batch_size=3, warmup=2, iters=5)
    assert m.calls == 7 and r["resolution"] == [8, 8] and r["peak_memory_mib"] is None
    # 3 images per 20 ms forward: 150 img/s at most, a little less with Python overhead
    assert 110 < r["throughput_img_s"] <= 150.5
    assert abs(r["ms_per_batch"] - 1e3 * 3 / r["throughput_img_s"]) < 1e-9


def test_sweep_builds_each_model_for_each_resolution():
    rows = sweep(["dfformer_s18"], [64, (64, 96)], batch_size=1, warmup=0, iters=1,
                 model_kwargs=dict(depths=[1, 1, 1, 1], dims=[8, 16, 24, 32]))
    assert [r["resolution"] for r in rows] == [[64, 64], [64, 96]]
    # the DF filter grids follow the resolution: a wider input has more filter parameters
    n_filters = 4 * 2 * sum((64 // 2 ** (i + 2)) * ((96 // 2 ** (i + 2)) // 2 + 1 - (64 // 2 ** (i + 2)) // 2 - 1)
                            for i in range(4))
    assert rows[1]["params"] - rows[0]["params"] == n_filters
    assert all(r["status"] == "ok" and r["throughput_img_s"] > 0 for r in rows)


def test_command_writes_results_and_rejects_bad_input(tmp_path):
    out = tmp_path / "tp"
    args = ["throughput", "--model", "caformer_s18", "--resolutions", "64", "--batch-size", "1", "--warmup", "0",
            "--iters", "1", "--model-kwargs", "depths=1,1,1,1", "--model-kwargs", "dims=8,16,32,64"]
    r = CliRunner().invoke(main, args + ["--output", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "results.json").read_text())
    assert doc["protocol"]["iters"] == 1 and doc["rows"][0]["model"] == "caformer_s18"
    assert (out / "throughput_vs_resolution.png").stat().st_size > 0
    bad = tmp_path / "bad"
    for extra in (["--resolutions", "big"], ["--model", "nosuch_model"]):
        r = CliRunner().invoke(main, args + extra + ["--output", str(bad)])
        assert r.exit_code != 0 and r.output.count("Error") == 1
        assert not bad.exists()


def test_command_says_why_cpu_runs_have_no_memory_figure(tmp_path):
    out = tmp_path / "tp"
    r = CliRunner().invoke(main, ["throughput", "--model", "convformer_s18", "--resolutions", "32", "--batch-size", "1",
                                  "--warmup", "0", "--iters", "1", "--device", "cpu", "--model-kwargs",
                                  "depths=1,1,1,1", "--model-kwargs", "dims=8,16,32,64", "--output", str(out)])
    assert r.exit_code == 0, r.output
    notes = [line for line in r.output.splitlines() if "no memory figure" in line]
    assert notes == ["note: peak memory is measured with torch.cuda.max_memory_allocated, which tracks CUDA "
                     "allocations only: no memory figure on cpu"]
    assert not (out / "memory_vs_resolution.png").exists() and (out / "throughput_vs_resolution.pdf").exists()
    r = CliRunner().invoke(main, ["throughput", "--model", "convformer_s18", "--batch-size", "0",
                                  "--output", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "--batch-size" in r.output and not (tmp_path / "bad").exists()
