"""Figures ready for a paper: the figure styles (``--style``, ``--ncols``) and one test per layout
defect, checked on the figures' data and layout facts (sizes in inches, aspect, label text, text
sizes, bounding boxes inside the canvas, colour-bar counts), never on pixels."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from matplotlib.colors import to_rgb
from matplotlib.text import Text
from PIL import Image

from spectrascope import plot
from spectrascope.cli import main
from spectrascope.report import amplitude as ra
from spectrascope.report import cam as rcam
from spectrascope.report import filters as rf
from spectrascope.report.style import (COLUMN_WIDTH, PAGE_WIDTH, fit_figure, paper_name, use_style,
                                       wrap_columns)
from spectrascope.seam import run

TINY = {"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]}
TINY_ARGS = ["--model-kwargs", "depths=1,1,1,1", "--model-kwargs", "dims=8,16,24,32"]


# ---------------------------------------------------------------------------- layout facts
def _drawn(fig):
    r = fig.canvas.get_renderer()
    fig.draw(r)
    return r


def _texts(fig) -> list[Text]:
    _drawn(fig)
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def _inside_canvas(fig, slack: float = 0.02) -> bool:
    """Every artist's bounding box (the renderer's tight box, inches) lies inside the canvas."""
    r = _drawn(fig)
    box = fig.get_tightbbox(r)
    w, h = fig.get_size_inches()
    return box.x0 >= -slack and box.y0 >= -slack and box.x1 <= w + slack and box.y1 <= h + slack


def _inches(ax, r=None) -> tuple[float, float]:
    r = r or _drawn(ax.figure)
    b = ax.get_window_extent(r)
    return b.width / ax.figure.dpi, b.height / ax.figure.dpi


def _png_inches(path: Path) -> tuple[float, float]:
    with Image.open(path) as im:
        dpi = im.info["dpi"]
        return im.size[0] / dpi[0], im.size[1] / dpi[1]


def _colorbars(fig) -> list:
    return [ax for ax in fig.axes if getattr(ax, "_colorbar", None) is not None]


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def amplitude_doc():
    return run("amplitude", model="dfformer_s18", model_kwargs=TINY, img_size=32, num_images=1, device="cpu",
               seed=0).to_json()


@pytest.fixture(scope="module")
def stage3_doc():
    return run("amplitude", model="dfformer_s18", model_kwargs=TINY, img_size=64, num_images=1, device="cpu",
               seed=0, stage=(3,)).to_json()


@pytest.fixture(scope="module")
def aff_result():
    return run("filters", model="affnet_et", img_size=64, num_images=1, device="cpu", seed=0)


@pytest.fixture(scope="module")
def cam_result():
    return run("cam", model="dfformer_s18", model_kwargs=TINY, img_size=32, data="synthetic", num_images=6,
               method="gradcam", device="cpu", seed=0)


# ---------------------------------------------------------------------------- the styles
def test_column_style_figures_are_3_3_in_wide_with_text_of_at_least_7_pt(tmp_path, amplitude_doc):
    out = tmp_path / "amp"
    run("amplitude", model="dfformer_s18", model_kwargs=TINY, img_size=32, num_images=1, device="cpu", seed=0,
        style="column", output=str(out))
    for stem in ("amplitude", "highfreq"):
        w, _ = _png_inches(out / f"{stem}.png")
        assert w == pytest.approx(COLUMN_WIDTH, abs=0.02), stem
    prov = json.loads((out / "results.json").read_text())["provenance"]
    assert (prov["figure_style"], prov["figure_ncols"]) == ("column", None)     # how the figures were drawn
    with use_style("column"):
        for stem, fig in ra.figures_for(amplitude_doc).items():
            fit_figure(fig)
            sizes = [t.get_fontsize() for t in _texts(fig)]
            assert min(sizes) >= 7.0 and max(sizes) <= 9.0, stem
            assert _inside_canvas(fig), stem


def test_page_style_is_6_9_in_and_paper_caps_wide_figures_at_a_page(tmp_path):
    res = run("spectrum", model=("convformer_s18", "dfformer_s18"), model_kwargs=TINY, img_size=32, num_images=1,
              device="cpu", seed=0, style="page", output=str(tmp_path / "page"))
    assert _png_inches(tmp_path / "page" / "spectrum.png")[0] == pytest.approx(PAGE_WIDTH, abs=0.02)
    from spectrascope.report.style import new_figure
    fig = new_figure(17.8, 4.0)                                   # a figure drawn far too wide
    fig.add_subplot().set_title("wide", fontsize=14)
    with use_style("paper"):
        fit_figure(fig)
    assert fig.get_figwidth() <= PAGE_WIDTH + 0.02
    assert max(t.get_fontsize() for t in _texts(fig)) <= 9.0
    assert res.output is not None
    assert res.provenance["figure_style"] == "page"
    plot(tmp_path / "page", formats=("png",), style="notebook", ncols=1)     # the PNG redrawn in place
    prov = json.loads((tmp_path / "page" / "results.json").read_text())["provenance"]
    assert prov["figure_style"] == "page"                                    # the PDF is still the run's
    assert prov["redrawn"] == [{"files": ["spectrum.png"], "figure_style": "notebook", "figure_ncols": 1}]


def test_style_and_ncols_are_shared_options_on_every_command_plot_and_figure(tmp_path):
    from spectrascope.seam import get, names
    for name in names():
        a = get(name)
        flags = {o.flag for o in a.all_options()}
        assert ({"--style", "--ncols"} <= flags) == a.needs.output, name
    for cmd in (["plot", "--help"], ["figure", "affnet-fig1", "--help"], ["cam", "--help"]):
        text = CliRunner().invoke(main, cmd).output
        assert "--style" in text and "--ncols" in text, cmd
    bad = CliRunner().invoke(main, ["amplitude", "--model", "dfformer_s18", *TINY_ARGS, "--ncols", "0",
                                    "--output", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "Error: --ncols" in bad.output and not (tmp_path / "x").exists()
    bad = CliRunner().invoke(main, ["amplitude", "--model", "dfformer_s18", "--style", "poster"])
    assert bad.exit_code == 2 and "poster" in bad.output


def test_wrap_columns_follows_ncols_then_the_figure_default():
    assert wrap_columns(24, default=12) == 12
    with use_style("paper", ncols=5):
        assert wrap_columns(24, default=12) == 5
        assert wrap_columns(3, default=12) == 3                 # never more columns than panels
    with use_style("column"):
        assert wrap_columns(30) == 4                             # near square, at most 4 in a column


def test_papers_names_in_figures_registry_names_in_results(amplitude_doc):
    assert paper_name("dfformer_s18") == "DFFormer-S18" and paper_name("gfnet_ti") == "GFNet-Ti"
    assert paper_name("affnet_et") == "AFFNet-ET" and paper_name("timm:vit_tiny_patch16_224") == "ViT-Tiny/16"
    fig = ra.amplitude_figure(amplitude_doc)
    assert fig.axes[0].get_title().startswith("DFFormer-S18")
    assert amplitude_doc["models"][0]["model"] == "dfformer_s18"


# ---------------------------------------------------------------------------- AFFNet masks
def test_aff_mask_colour_bars_are_labelled_per_column_without_offset_text(aff_result):
    import spectrascope.report.filters as rf_mod
    made = []
    original = rf_mod.plot_rows

    def keep(*a, **kw):
        fig, files = original(*a, **kw)
        made.append(fig)
        return fig, files
    rf_mod.plot_rows = keep
    try:
        rf_mod._aff(aff_result, Path(_tmp_dir()), ("png",), "viridis", "")
    finally:
        rf_mod.plot_rows = original
    fig = made[0]
    bars = fig.spectrascope_bars
    assert [(cols, bar.ax.get_xlabel()) for cols, bar in bars] == [([0], "|M| / max"), ([1, 2, 3, 4], "k / max|k|")]
    _drawn(fig)
    for _, bar in bars:                                      # no "1e-5" offset label over the row above
        assert bar.ax.xaxis.get_offset_text().get_text() == ""
        assert bar.orientation == "horizontal"
    assert _inside_canvas(fig)


def _tmp_dir():
    import tempfile
    return tempfile.mkdtemp(prefix="spectrascope-figs-")


def test_aff_masks_are_drawn_with_square_pixels_from_the_half_spectrum(aff_result):
    rec = aff_result.aff[0]
    H, W = rec["grid"]
    assert rec["mask_shape"][-1] == W // 2 + 1                    # the stored mask is a half spectrum
    fig, _ = rf.plot_rows([[np.random.rand(H, W), np.random.randn(H, W)]], ["s3.b0"], ["|M|", "k"], _tmp_dir(),
                          "t", title="t", cmaps=["viridis", "RdBu_r"], cbar_labels=["|M|", "k"], formats=("png",))
    r = _drawn(fig)
    maps = [ax for ax in fig.axes if ax.images]
    for ax in maps:
        h, w = ax.images[0].get_array().shape
        wi, hi = _inches(ax, r)
        assert ax.get_aspect() == 1.0 and wi / hi == pytest.approx(w / h, rel=0.02)
    from spectrascope.ops import filters as fl
    mask = torch.from_numpy(np.asarray(aff_result.filters[f"aff_mask/{rec['name']}"][0]))
    assert tuple(fl.filter_amplitude(mask, width=W).mean(0).shape) == (H, W)    # drawn as the full H x W map


# ---------------------------------------------------------------------------- filter grids
def _layers(names, stage=1):
    return [SimpleNamespace(name=n, stage=stage) for n in names]


def test_filter_grid_cells_are_square_and_channels_wrap(tmp_path):
    amps = [np.random.rand(24, 14, 14), np.random.rand(24, 14, 14)]
    fig, files = rf.plot_filter_grid(_layers(["s1.b0", "s1.b11"]), amps, 24, tmp_path, "g", title="GFNet-Ti: x",
                                     col_label="ch", formats=("png",))
    ax = fig.spectrascope_maps[0]
    mosaic = np.asarray(ax.images[0].get_array())
    assert mosaic.shape == (4 * 15 - 1, 12 * 15 - 1)            # 2 layers x 2 tile rows, 12 tiles per row
    assert ax.get_aspect() == 1.0
    wi, hi = _inches(ax)
    assert wi / hi == pytest.approx(mosaic.shape[1] / mosaic.shape[0], rel=0.02)
    assert "12 per row" in ax.get_xlabel()
    w, h = _png_inches(tmp_path / "g.png")
    assert w / h < 3.5                                           # no 2,899 x 368 strip
    with use_style("paper", ncols=6):
        fig, _ = rf.plot_filter_grid(_layers(["s1.b0"]), amps[:1], 24, tmp_path, "g6", title="t", formats=("png",))
    assert np.asarray(fig.spectrascope_maps[0].images[0].get_array()).shape == (4 * 15 - 1, 6 * 15 - 1)


def test_deeper_stages_are_repeated_to_one_tile_size_with_one_scale_per_stage(tmp_path):
    layers = [SimpleNamespace(name="s1.b0", stage=1), SimpleNamespace(name="s2.b0", stage=2)]
    small = np.random.rand(4, 4, 4)
    fig, _ = rf.plot_filter_grid(layers, [np.random.rand(4, 8, 8), small], 4, tmp_path, "b", title="t",
                                 col_label="basis", formats=("png",))
    maps = fig.spectrascope_maps
    s2 = np.asarray(maps[1].images[0].get_array())
    assert s2.shape == (8, 4 * 9 - 1)
    assert np.allclose(s2[:, 9:17], np.repeat(np.repeat(small[1], 2, 0), 2, 1))   # whole-factor repeats
    assert [b.get_ylabel().splitlines()[0] for b in _colorbars(fig)] == ["stage 1:", "stage 2:"]


def test_isotropic_gfnet_says_one_colour_scale_not_one_per_stage(tmp_path):
    res = run("filters", model="gfnet_ti", model_kwargs={"depth": 2, "embed_dim": 32}, img_size=32, num_images=1,
              device="cpu", seed=0, channels="0-23", output=str(tmp_path / "gf"))
    assert "global_filters.png" in res.files
    made = []
    original = rf.plot_filter_grid

    def keep(*a, **kw):
        made.append(kw["title"])
        return original(*a, **kw)
    rf.plot_filter_grid = keep
    try:
        rf._banks(res, tmp_path, ("png",), "viridis", "")
    finally:
        rf.plot_filter_grid = original
    assert "one colour scale)" in made[0] and "per stage" not in made[0]
    assert made[0].startswith("GFNet-Ti")


def test_effective_filters_have_one_colour_bar(tmp_path):
    rows = [[np.random.rand(8, 8) for _ in range(18)] for _ in range(4)]
    fig, _ = rf.plot_rows(rows, [f"s{i}.b0" for i in range(1, 5)], [f"ch {c}" for c in range(18)], tmp_path, "e",
                          title="t", cmaps=["viridis"], cbar_labels=["|W|"], formats=("png",))
    assert len(_colorbars(fig)) == 1 and fig.spectrascope_bars[0][1].ax.get_xlabel() == "|W| / max"
    assert _inside_canvas(fig)


# ---------------------------------------------------------------------------- CAM and context grids
def _draw_cam_keeping_figures(result, folder, formats):
    """``rcam.draw_cam``'s files, and the figures it saved (still open, for their layout)."""
    made = []
    original = rcam.save_figure

    def keep(fig, *a, **kw):
        made.append(fig)
        return original(fig, *a, **kw)
    with mock.patch.object(rcam, "save_figure", keep):
        files = rcam.draw_cam(result, folder, SimpleNamespace(formats=formats))
    return files, made


def test_cam_grid_wraps_with_class_probability_boxes_title_and_pdf(tmp_path, cam_result):
    folder = tmp_path / "cam"
    folder.mkdir()
    files, made = _draw_cam_keeping_figures(cam_result, folder, ("png", "pdf"))
    assert "grid.png" in files and "grid.pdf" in files and (folder / "grid.pdf").read_bytes()[:5] == b"%PDF-"
    fig = made[0]
    r = _drawn(fig)
    panels = fig.spectrascope_panels
    assert len(panels) == 12
    rows = {round(ax.get_position().y0, 3) for ax in panels}
    assert len(rows) == 2                                        # 6 images x 2 panels, 4 images per row
    title = fig._suptitle.get_window_extent(r)
    assert all(title.y0 >= ax.get_window_extent(r).y1 for ax in panels)          # never over an image
    tap = cam_result.models[0]["target_tap"]                  # the tap name (1-based stages), e.g. stage1 at 32 px
    assert tap.startswith("stage") and f"at {tap}" in fig._suptitle.get_text()
    assert fig._suptitle.get_text().startswith("DFFormer-S18")
    e = cam_result.models[0]
    notes = [ax.get_xlabel() for ax in panels[1::2]]
    assert notes == [f"class {c}\np={p:.2g}" for c, p in zip(e["classes"], e["class_probability"])]
    x0, y0, x1, y1 = cam_result.boxes[0][0]
    rects = [(p.get_x(), p.get_y(), p.get_width(), p.get_height()) for p in panels[0].patches]
    assert (x0 - 0.5, y0 - 0.5, x1 - x0, y1 - y0) in rects
    with Image.open(folder / "overlays" / "dfformer_s18" / f"{cam_result.images[0]}.png") as im:
        assert min(im.size) >= rcam.OVERLAY_MIN_SIDE
    assert panels[0].get_aspect() == 1.0 and _inside_canvas(fig)


def test_cam_grid_shows_the_first_sixteen_images_and_says_so(tmp_path):
    res = run("cam", model="dfformer_s18", model_kwargs=TINY, img_size=32, data="synthetic", num_images=20,
              method="gradcam", device="cpu", seed=0)
    files, made = _draw_cam_keeping_figures(res, tmp_path, ("png",))
    (fig,) = made
    assert len(fig.spectrascope_panels) == 2 * rcam.GRID_IMAGES == 32           # input and map of 16 images
    assert sum(f.startswith("overlays/") for f in files) == 20                 # every image keeps its overlay
    texts = [t.get_text() for t in fig.texts]
    assert any("the first 16 of 20 images" in t for t in texts), texts
    assert _inside_canvas(fig)


def test_context_grid_is_written_as_png_and_pdf_and_wraps(tmp_path):
    images = [f"img{i}" for i in range(4)]
    res = SimpleNamespace(images=images, maps_shown={"spg0": "SPG lambda=0.7", "context": "context (sum)"},
                          inputs={n: np.zeros((16, 16, 3), np.uint8) for n in images},
                          maps={f"{n}/{k}": np.random.rand(16, 16) for n in images for k in ("spg0", "context")},
                          title="SPANet-S: context")
    with use_style("paper", ncols=2):
        files = rcam.draw_context(res, tmp_path, SimpleNamespace(formats=("png", "pdf")))
    assert files[:2] == ["grid.png", "grid.pdf"] and (tmp_path / "grid.pdf").is_file()
    w, h = _png_inches(tmp_path / "grid.png")
    assert w > h                                                  # 2 images x 3 panels per row, 2 rows


# ---------------------------------------------------------------------------- CKA
def _cka(n_a, n_b, labels=None):
    from spectrascope.analyses.cka import CKAResult
    from spectrascope.probe.spec import TapSpec
    ta = [TapSpec(f"a{i}", "block", f"a{i}", "NCHW", stage=1 + 4 * i // n_a) for i in range(n_a)]
    tb = [TapSpec(f"b{j}", "block", f"b{j}", "NCHW", stage=1 + 4 * j // n_b) for j in range(n_b)]
    return CKAResult(matrix=torch.rand(n_a, n_b, dtype=torch.float64), labels_a=labels or [t.name for t in ta],
                     labels_b=[t.name for t in tb], taps_a=ta, taps_b=tb, shapes_a={}, shapes_b={},
                     estimator="unbiased", engine="spectrascope", batches=1, examples=8,
                     meta={"model_a": {"name": "dfformer_s18"}, "model_b": {"name": "gfformer_s18"}})


def test_cka_non_square_matrix_keeps_square_cells_and_fills_the_canvas():
    from spectrascope.report.cka import plot_heatmap
    fig = plot_heatmap(_cka(28, 52))
    ax = fig.axes[0]
    r = _drawn(fig)
    wi, hi = _inches(ax, r)
    assert wi / hi == pytest.approx(52 / 28, rel=0.03)
    fw, fh = fig.get_size_inches()
    assert wi * hi / (fw * fh) > 0.4                              # not a third of the canvas
    assert ax.get_xlabel() == "Layers GFFormer-S18" and _inside_canvas(fig)


def test_cka_custom_taps_are_named_on_the_axes():
    from spectrascope.report.cka import plot_heatmap
    names = ["stem", "s1.b0.mixer", "s2.b0.mixer", "stage4"]
    fig = plot_heatmap(_cka(4, 4, labels=names))
    _drawn(fig)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == names
    many = plot_heatmap(_cka(40, 40))
    _drawn(many)
    assert [t.get_text() for t in many.axes[0].get_yticklabels()][:3] == ["0", "10", "20"]


def test_dfformer_fig7_is_a_page_wide_with_paper_text(tmp_path):
    from spectrascope.recipes.cka_fig7 import _draw
    summary = _draw({p: _cka(40, 40) for p in "abc"}, tmp_path, "8 images (batch 4), unbiased mini-batch CKA")
    assert 6.0 <= summary["figure_size_in"][0] <= PAGE_WIDTH + 0.02            # not 17.8 in
    boxes = np.array(summary["panel_boxes"])
    assert np.allclose(boxes[:, 2:], boxes[0, 2:], atol=1e-6)


# ---------------------------------------------------------------------------- charts
@pytest.fixture(scope="module")
def chart_points_of():
    from spectrascope.report.paper_charts import chart_points
    return {chart: chart_points(chart, use_timm=False) for chart in ("spanet-fig5", "affnet-fig1")}


def _chart(points_of, chart, style="paper"):
    from spectrascope.report.paper_charts import CHARTS, _draw
    _, axes, size_key, _, title = CHARTS[chart]
    with use_style(style):
        return fit_figure(_draw(points_of[chart], axes, size_key, title))


def test_spanet_fig5_bubbles_inside_variant_labels_and_distinct_family_colours(chart_points_of):
    import warnings
    for style in ("paper", "column"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)             # no collapsed layout
            fig = _chart(chart_points_of, "spanet-fig5", style)
        r = _drawn(fig)
        for ax, _ in fig.spectrascope_bubbles:
            box = ax.get_window_extent(r)
            for coll in ax.collections:
                xy = ax.transData.transform(coll.get_offsets())
                rad = np.sqrt(np.asarray(coll.get_sizes()) / np.pi) * fig.dpi / 72
                assert (xy[:, 0] - rad >= box.x0 - 1).all() and (xy[:, 0] + rad <= box.x1 + 1).all()
                assert (xy[:, 1] - rad >= box.y0 - 1).all() and (xy[:, 1] + rad <= box.y1 + 1).all()
        assert _inside_canvas(fig), style
    ax = fig.spectrascope_bubbles[0][0]
    labels = {t.get_text() for t in ax.texts}
    assert {"S", "M", "B", "B/16", "T"} <= labels
    legend = fig.spectrascope_bubbles[-1][0].get_legend()
    colours = [to_rgb(h.get_facecolor()[0][:3]) for h in legend.legend_handles]
    dist = min(np.linalg.norm(np.subtract(a, b)) for i, a in enumerate(colours) for b in colours[i + 1:])
    assert dist > 0.15


def test_affnet_fig1_names_mobilevit(chart_points_of):
    fig = _chart(chart_points_of, "affnet-fig1")
    names = [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]
    assert "MobileViT" in names and "MobileViTv2" in names and not any(n.startswith("MViT") for n in names)


# ---------------------------------------------------------------------------- amplitude and spectrum
def test_highfreq_legend_lies_outside_the_data(amplitude_doc):
    fig = ra.highfreq_figure(amplitude_doc)
    r = _drawn(fig)
    ax = fig.axes[0]
    assert ax.get_legend().get_window_extent(r).x0 >= ax.get_window_extent(r).x1
    assert _inside_canvas(fig)


def test_highfreq_legend_of_a_column_figure_lies_above_the_data_which_keeps_the_width(amplitude_doc):
    with use_style("column"):
        fig = ra.highfreq_figure(amplitude_doc)
        fit_figure(fig)
    r = _drawn(fig)
    ax = fig.axes[0]
    (legend,) = fig.legends
    assert legend.get_window_extent(r).y0 >= ax.get_window_extent(r).y1        # above the axes
    assert ax.get_window_extent(r).width >= 0.7 * fig.bbox.width                # the data keep the column
    assert legend.get_window_extent(r).width <= fig.bbox.width                   # columns that fit
    label = ax.yaxis.label.get_window_extent(r)
    assert not legend.get_window_extent(r).overlaps(label)                       # nor over the y label
    assert _inside_canvas(fig)


def test_amplitude_figure_has_no_empty_margin(amplitude_doc):
    fig = ra.amplitude_figure(amplitude_doc)
    r = _drawn(fig)
    right = max(ax.get_tightbbox(r).x1 for ax in fig.axes) / fig.dpi
    assert fig.get_figwidth() - right < 0.3                       # the footnote wraps inside the figure
    foot = fig._supxlabel.get_window_extent(r)
    assert foot.x1 / fig.dpi <= fig.get_figwidth() + 0.01 and _inside_canvas(fig)


def test_stage_option_is_in_the_title_and_few_taps_get_a_legend_not_a_depth_bar(stage3_doc):
    assert len(stage3_doc["models"][0]["taps"]) <= ra.LEGEND_TAPS
    fig = ra.amplitude_figure(stage3_doc)
    ax = fig.axes[0]
    assert "stage 3" in ax.get_title()
    assert not _colorbars(fig) and "Normalized depth" not in [a.get_ylabel() for a in fig.axes]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [t["name"] for t in stage3_doc["models"][0]["taps"]]
    assert "stage 3" in ra.highfreq_figure(stage3_doc).axes[0].get_title()


def test_spectrum_panels_share_one_range_and_label_only_outer_ticks():
    doc = run("spectrum", model=("convformer_s18", "dfformer_s18"), model_kwargs=TINY, img_size=32, num_images=1,
              device="cpu", seed=0).to_json()
    fig = ra.spectrum_figure(doc)
    _drawn(fig)
    maps = [ax for ax in fig.axes if ax.images]
    assert len(maps) == 8
    assert {ax.get_xlim() for ax in maps} == {(-1.0, 1.0)} and {tuple(ax.get_xticks()) for ax in maps} == {(-1, 0, 1)}
    labelled_x = [ax for ax in maps if any(t.get_text() for t in ax.get_xticklabels())]
    labelled_y = [ax for ax in maps if any(t.get_text() for t in ax.get_yticklabels())]
    assert len(labelled_x) == 4 and len(labelled_y) == 2
    assert len(_colorbars(fig)) == 1


# ---------------------------------------------------------------------------- filter kinds need a baseline
def test_filter_kinds_of_random_weights_say_so(tmp_path):
    from spectrascope.recipes import _filters_cam
    from spectrascope.recipes.base import FigureContext, FigureSpec
    ctx = FigureContext(spec=FigureSpec(name="t", title="t", paper="p"), output=tmp_path, img_size=32, device="cpu",
                        num_images=1, models=["dfformer_s18"])
    out = _filters_cam.filters_recipe(ctx, "dfformer_s18", model_kwargs=TINY)
    assert "filter_kinds" not in out and sum(out["filter_kinds_random_weights"].values()) == 16
    assert "untrained filters get these" in out["filter_kinds_note"]
    assert any("untrained filters get these" in w for w in ctx.warnings)
    doc = json.loads((tmp_path / "dfformer_s18" / "results.json").read_text())
    assert doc["analysis"] == "filters"


def test_papers_names_keep_what_tells_timm_models_apart():
    from spectrascope.report.style import paper_labels
    assert paper_name("timm:vit_small_patch16_384") == "ViT-Small/16 (384 px)"
    assert paper_name("timm:vit_small_patch16_224") == "ViT-Small/16"
    assert paper_name("convnext_tiny.fb_in22k") == "ConvNeXt-Tiny (fb_in22k)"
    # names that would still print alike keep their registry names
    assert paper_labels(["timm:vit_small_patch16_224", "vit_small_patch16_224", "dfformer_s18"]) == \
        ["timm:vit_small_patch16_224", "vit_small_patch16_224", "DFFormer-S18"]


def test_throughput_figure_names_the_papers_models_beside_the_axes():
    from spectrascope.report import throughput as rt
    rows = [{"model": m, "resolution": [s, s], "throughput_img_s": float(v)}
            for m, k in (("convformer_s18", 1), ("cdfformer_s18", 2)) for s, v in ((64, 40 * k), (128, 20 * k))]
    fig = rt.figures(rows)["throughput_vs_resolution"]
    fit_figure(fig)
    r = _drawn(fig)
    ax = fig.axes[0]
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["ConvFormer-S18", "CDFFormer-S18"]
    assert legend.get_window_extent(r).x0 >= ax.get_window_extent(r).x1        # outside the data
    assert _inside_canvas(fig)
