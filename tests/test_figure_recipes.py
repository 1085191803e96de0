"""Figure recipes (``spectrascope figure ...``): options, titles, file lists, warnings, dpi --
the data of the figures, not their pixels."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from PIL import Image

import spectrascope
from spectrascope.cli import main
from spectrascope.errors import FigureError
from spectrascope.recipes import base as recipes


def run(args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_list_shows_weights_and_options():
    res = run(["figure", "list"])
    assert res.exit_code == 0, res.output
    blocks = res.output.split("\n\n") if "\n\n" in res.output else [res.output]
    text = res.output
    for spec in recipes.list_figures():
        head = text.index(f"{spec.name}  -  ")
        block = text[head:].split("\n")[:6]
        want = "needs trained weights" if spec.needs_weights else "weights optional"
        assert any(want in line for line in block), (spec.name, block)
    assert blocks
    fig9 = text[text.index("dfformer-fig9  -  "):].split("\n")[:6]
    assert any("options: --model, --cmap" in line for line in fig9)


def test_help_lists_data_sources_and_recipe_options():
    res = run(["figure", "spanet-fig2", "--help"])
    assert res.exit_code == 0
    for word in ("synthetic", "cifar10", "imagefolder", "--focalnet", "--freq-axis", "--model", "lrf"):
        assert word in res.output, word
    assert "--cmap" not in res.output                         # not an option of this recipe


def test_spanet_recipes_use_focalnet_lrf_and_the_variant_option():
    for name in ("spanet-fig1", "spanet-fig2"):
        spec, _ = recipes.get_figure(name)
        assert "timm:focalnet_tiny_lrf" in spec.models and "timm:focalnet_tiny_srf" not in spec.models
        swapped = recipes.recipe_models(spec, {"focalnet": "srf"})
        assert "timm:focalnet_tiny_srf" in swapped and len(swapped) == len(spec.models)
    spec, _ = recipes.get_figure("dfformer-fig9")
    assert recipes.recipe_models(spec, {"models": ["dfformer_m36"]}) == ("dfformer_m36",)
    spec, _ = recipes.get_figure("spanet-figs2")
    assert "models" in spec.options
    assert recipes.recipe_models(spec, {"models": ["spanet_s", "caformer_s18"]}) == ("spanet_s", "caformer_s18")
    with pytest.raises(FigureError, match="takes no option --focalnet"):
        recipes.run_figure("dfformer-fig9", options={"focalnet": "srf"})


@pytest.mark.parametrize("name,model,stem", [("dfformer-fig9", "dfformer_s18", "basis_filters"),
                                             ("dfformer-fig2", "gfnet_ti", "global_filters")])
def test_filter_recipes_share_the_colour_key_and_write_png_pdf_at_200_dpi(tmp_path, name, model, stem):
    folder, doc = recipes.run_figure(name, output=tmp_path, img_size=64, num_images=1, device="cpu")
    sub = folder / model
    assert (sub / f"{stem}.png").exists() and (sub / f"{stem}.pdf").exists()
    assert f"{model}/{stem}.pdf" in doc["summary"]["figures"]
    assert min(Image.open(sub / f"{stem}.png").info["dpi"]) >= 199.5
    res = json.loads((sub / "results.json").read_text())
    assert res["colour_map"] == "viridis"                     # yellow = high amplitude in Fig. 2 and Fig. 9
    assert doc["random_weights"] == [model]
    if name == "dfformer-fig9":
        assert (sub / "routing.png").exists() and len(doc["summary"]["routing_argmax_share"]) == 18
    if name == "dfformer-fig9":
        return
    folder, doc = recipes.run_figure(name, output=tmp_path / "c", img_size=64, num_images=1, device="cpu",
                                     options={"cmap": "magma"})
    assert json.loads((folder / model / "results.json").read_text())["colour_map"] == "magma"
    assert doc["options"] == {"cmap": "magma"}


def test_fig5_6_honours_batch_size_and_says_why_no_memory_figure(tmp_path, monkeypatch):
    import spectrascope.recipes.dfformer_fig5_6 as fig
    monkeypatch.setattr(fig, "CPU_RESOLUTIONS", (32, 48))                 # a quick sweep
    res = run(["figure", "dfformer-fig5-6", "--output", tmp_path, "--device", "cpu", "--batch-size", "1",
               "--model", "convformer_s18"])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "dfformer-fig5-6" / "figure.json").read_text())
    assert {r["batch_size"] for r in doc["summary"]["rows"]} == {1}
    assert doc["models"] == ["convformer_s18"] and doc["options"] == {"models": ["convformer_s18"]}
    assert doc["summary"]["figures"] == ["throughput_vs_resolution"]
    lines = [line for line in res.output.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and "CUDA allocations only" in lines[0] and "no memory figure on CPU" in lines[0]
    assert doc["warnings"] == [lines[0][len("warning: "):]]
    assert recipes.get_figure("dfformer-fig5-6")[0].batch_size == 4      # the paper's batch without --batch-size


def test_fig1_skip_unavailable_retitles(tmp_path, monkeypatch):
    real = recipes.model_available
    monkeypatch.setattr(recipes, "model_available",
                        lambda m: (False, "needs timm") if m.startswith("timm:") else real(m))
    with pytest.raises(FigureError, match="--skip-unavailable"):
        recipes.run_figure("dfformer-fig1", output=tmp_path, img_size=64, num_images=1, device="cpu")
    folder, doc = recipes.run_figure("dfformer-fig1", output=tmp_path, img_size=64, num_images=1, device="cpu",
                                     skip_unavailable=True)
    assert doc["summary"]["title"] == "Relative log amplitudes of Fourier transformed feature maps (GFNet)"
    assert json.loads((folder / "results.json").read_text())["title"] == doc["summary"]["title"]
    assert doc["skipped_models"][0]["model"] == "timm:vit_tiny_patch16_224"


def test_recipe_warnings_are_recorded_and_reprinted(tmp_path, monkeypatch):
    import sys
    import textwrap
    import warnings
    import spectrascope.recipes as pkg
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "warn_fig.py").write_text(textwrap.dedent('''
        import warnings
        from spectrascope.recipes import FigureSpec
        FIGURE = FigureSpec(name="warn-fig", title="t", paper="-", models=(), needs_weights=False)
        def run(ctx):
            ctx.warn("recorded by the recipe")
            warnings.warn("raised by the recipe")
            (ctx.output / "x.txt").write_text("x")
            return {}
    '''))
    monkeypatch.setattr(pkg, "__path__", list(pkg.__path__) + [str(folder)])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = run(["figure", "warn-fig", "--output", tmp_path / "out"])
    finally:
        sys.modules.pop("spectrascope.recipes.warn_fig", None)
    assert res.exit_code == 0, res.output
    assert "warning: recorded by the recipe" in res.output and "warning: raised by the recipe" in res.output
    doc = json.loads((tmp_path / "out" / "warn-fig" / "figure.json").read_text())
    assert doc["warnings"] == ["recorded by the recipe", "raised by the recipe"]
    assert spectrascope  # the package imported the analyses


def test_spectrum_recipe_takes_a_colour_map(tmp_path):
    """``spanet-fig1 --cmap``: the option reaches the spectrum figure and is recorded with the run."""
    res = run(["figure", "spanet-fig1", "--help"])
    assert "--cmap" in res.output
    folder, doc = recipes.run_figure("spanet-fig1", output=tmp_path, img_size=64, num_images=1, device="cpu",
                                     options={"models": ["dfformer_s18"], "cmap": "magma"})
    assert (folder / "spectrum.png").exists() and (folder / "spectrum.pdf").exists()
    assert doc["options"]["cmap"] == "magma"
