"""The analysis seam: options checked the same way from the command line and from Python, one model
at several labelled checkpoints, results that load back as the analysis's typed result, one
agreement of every rank on failure, and a declaration that the registry refuses when incomplete."""
from __future__ import annotations

import json
from pathlib import Path
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import spectrascope
from spectrascope.cli import main
from spectrascope.errors import InternalError, OptionError, PeerFailure
from spectrascope.seam import Analysis, Needs, Option, Result, get, load_result, names, register, run
from spectrascope.seam.analysis import Params
from spectrascope.seam.context import model_specs, run_checkpoints

TINY = {"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]}
KW = ["--model-kwargs", "depths=1,1,1,1", "--model-kwargs", "dims=8,16,24,32", "--img-size", "32"]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A training run folder as training leaves it: init, two epochs, last and best."""
    folder = tmp_path_factory.mktemp("run")
    for i, stem in enumerate(["epoch_10", "best", "init", "epoch_2", "last"]):
        torch.manual_seed(i)
        model = spectrascope.create_model("dfformer_s18", img_size=32, **TINY)
        torch.save(model.state_dict(), folder / f"{stem}.pth")
    return folder


def test_every_command_is_an_analysis_on_the_seam():
    assert {"amplitude", "spectrum", "cka", "cam", "context", "filters", "throughput", "flops", "predict",
            "evaluate"} <= set(names())
    for name in names():
        a = get(name)
        assert a.summary and not a.summary[0].islower(), name           # the command list reads as sentences
        flags = [o.flag for o in a.all_options()]
        assert len(flags) == len(set(flags)), name
        assert main.get_command(None, name) is not None, name


def test_options_refuse_the_same_values_from_python_and_the_command_line(tmp_path):
    with pytest.raises(OptionError, match="--img-size"):
        run("amplitude", model="dfformer_s18", img_size="big")
    with pytest.raises(OptionError, match="--batch-size"):
        run("amplitude", model="dfformer_s18", batch_size=0)
    with pytest.raises(OptionError, match="no option --colour"):
        run("amplitude", model="dfformer_s18", colour="red")
    res = CliRunner().invoke(main, ["amplitude", "--model", "dfformer_s18", "--img-size", "big",
                                    "--output", str(tmp_path / "x")])
    assert res.exit_code == 2 and res.output.strip().splitlines()[-1].startswith("Error: --img-size")
    assert not (tmp_path / "x").exists()


def test_a_run_folder_gives_its_checkpoints_in_training_order(run_folder):
    assert [label for label, _ in run_checkpoints(run_folder)] == ["init", "epoch 2", "epoch 10", "last", "best"]
    specs = model_specs(Params({"model": ("dfformer_s18",), "checkpoint": (str(run_folder),)}))
    assert [s.label for s in specs] == ["init", "epoch 2", "epoch 10", "last", "best"]
    assert {s.name for s in specs} == {"dfformer_s18"} and specs[0].checkpoint.endswith("init.pth")
    specs = model_specs(Params({"model": ("dfformer_s18",), "checkpoint": (f"a={run_folder / 'init.pth'}",
                                                                           f"b={run_folder / 'last.pth'}")}))
    assert [(s.label, s.checkpoint.rsplit("/", 1)[1]) for s in specs] == [("a", "init.pth"), ("b", "last.pth")]
    with pytest.raises(OptionError, match="same label"):
        model_specs(Params({"model": ("dfformer_s18",), "checkpoint": ("a=x.pth", "a=y.pth")}))
    with pytest.raises(OptionError, match="listed twice"):
        model_specs(Params({"model": ("dfformer_s18", "dfformer_s18")}))
    with pytest.raises(Exception, match="nope"):                      # an unknown model fails before any work
        model_specs(Params({"model": ("nope",)}))


def test_one_model_at_several_checkpoints_equals_each_checkpoint_alone(run_folder):
    common = dict(model_kwargs=TINY, img_size=32, num_images=2, device="cpu", stage=(1,))
    both = run("amplitude", model="dfformer_s18", checkpoint=(f"init={run_folder / 'init.pth'}",
                                                               f"last={run_folder / 'last.pth'}"), **common)
    assert [m["label"] for m in both.models] == ["dfformer_s18 (init)", "dfformer_s18 (last)"]
    for m, stem in zip(both.models, ("init", "last")):
        alone = run("amplitude", model="dfformer_s18", checkpoint=str(run_folder / f"{stem}.pth"), **common)
        assert [t["curve"] for t in m["taps"]] == [t["curve"] for t in alone.models[0]["taps"]]
    assert both.models[0]["taps"][0]["curve"] != both.models[1]["taps"][0]["curve"]


def test_results_load_back_as_the_typed_result(tmp_path):
    out = tmp_path / "amp"
    res = run("amplitude", model="dfformer_s18", model_kwargs=TINY, img_size=32, num_images=2, device="cpu",
              save_maps=True, output=out)
    assert res.output == out and (out / "maps.npz").is_file()
    back = load_result(out)
    assert type(back) is type(res) and back.analysis == "amplitude"
    assert back.models == json.loads(json.dumps(res.models)) and back.method == res.method
    assert sorted(back.maps) == sorted(res.maps)
    for k in res.maps:
        assert np.array_equal(back.maps[k], res.maps[k])
    assert back.provenance["command"] == "amplitude" and back.provenance["world_size"] == 1
    assert "maps.npz" in back.files and "amplitude.png" in back.files


def test_the_agreement_of_every_rank():
    from spectrascope.engine.dist import Dist, describe_failure

    class Pair(Dist):
        def __init__(self, other):
            super().__init__(rank=0, world=2)
            self.other = other

        def all_gather_object(self, obj):
            return [obj, self.other]
    assert describe_failure(OptionError("bad", option="--x")) == ("--x: bad", 2, "user")
    assert describe_failure(ValueError("boom"))[1:] == (1, "bug")
    with pytest.raises(PeerFailure) as info:
        with Pair(("--x: bad", 2, "user")).together():
            pass                                                        # this rank was fine, rank 1 was not
    assert str(info.value) == "--x: bad" and info.value.exit_code == 2 and info.value.rank == 1
    with pytest.raises(PeerFailure, match="process 1 failed .*see its traceback"):
        Pair(("ValueError: boom", 1, "bug")).agree(None)


def test_an_incomplete_declaration_is_refused():
    @dataclass(kw_only=True)
    class R(Result):
        value: float = 0.0

    class NoName(Analysis):
        result = R

        def run(self, ctx):
            return R()
    with pytest.raises(InternalError, match="needs a name"):
        register(NoName)

    class Clash(NoName):
        name = "clash-test"
        options = (Option("img_size", None, "a shared option declared again"),)
    with pytest.raises(InternalError, match="shared options"):
        register(Clash)

    class NoRun(Analysis):
        name = "norun-test"
        result = R
    with pytest.raises(InternalError, match="run"):
        register(NoRun)
    assert "clash-test" not in names() and Needs().models == "one"


def test_default_output_folders_of_runs_in_the_same_second_differ(tmp_path, monkeypatch):
    """Two runs started within one second get two folders (the second one a ``-2`` suffix), so the
    second neither fails on nor replaces the first one's results."""
    import datetime as dt

    from spectrascope.io import results

    class Frozen(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 1, 2, 3, 4, 5)

    monkeypatch.setattr(results._dt, "datetime", Frozen)
    monkeypatch.chdir(tmp_path)
    first = results.default_output_dir("cam", "dfformer_s18")
    assert first == Path("runs/cam/dfformer_s18-20260102-030405")
    first.mkdir(parents=True)
    (first / "results.json").write_text("{}")
    second = results.default_output_dir("cam", "dfformer_s18")
    assert second == Path("runs/cam/dfformer_s18-20260102-030405-2")
    second.mkdir()
    assert results.default_output_dir("cam", "dfformer_s18").name.endswith("-3")
