"""DFFormer Figs. 5-6: inference throughput and peak memory vs resolution."""
import torch

from spectrascope.engine.device import resolve_device
from spectrascope.engine.throughput import MEMORY_NOTE
from spectrascope.io.results import write_csv
from spectrascope.recipes.base import FigureSpec
from spectrascope.report.style import save_figure
from spectrascope.report.throughput import figures
from spectrascope.seam import run as run_analysis

FIGURE = FigureSpec(
    name="dfformer-fig5-6",
    title="Throughput and peak memory vs resolution",
    paper="Tatsunami & Taki, FFT-based Dynamic Token Mixer for Vision (AAAI 2024), Figs. 5 and 6",
    models=("convformer_s18", "caformer_s18", "gfformer_s18", "dfformer_s18", "cdfformer_s18"),
    summary="Batch 4 (--batch-size), float32, random input, every model built for each resolution. On a GPU the "
            "sweep is 224..1024 px (the paper: V100, resolutions not recorded); on a CPU only a 64..160 px smoke "
            "sweep, and no memory figure (torch tracks CUDA allocations only; the run says so). The published "
            "figures swap colours (pink is DFFormer, blue CDFFormer, purple GFFormer); ours are labelled by name.",
    needs_weights=False,
    batch_size=4,
    options=("models",),
)

LABELS = {"convformer_s18": "ConvFormer-S18", "caformer_s18": "CAFormer-S18", "gfformer_s18": "GFFormer-S18",
          "dfformer_s18": "DFFormer-S18", "cdfformer_s18": "CDFFormer-S18"}
GPU_RESOLUTIONS = (224, 384, 512, 640, 768, 896, 1024)
CPU_RESOLUTIONS = (64, 96, 128, 160)


def run(ctx):
    device = resolve_device(ctx.device)
    gpu = device.type == "cuda"
    rows = run_analysis("throughput", model=tuple(ctx.models), resolutions=GPU_RESOLUTIONS if gpu else CPU_RESOLUTIONS,
                        batch_size=ctx.batch_size, device=str(device), warmup=10 if gpu else 1,
                        iters=40 if gpu else 2).rows
    write_csv(ctx.output / "throughput.csv", [dict(r, resolution=r["resolution"][0]) for r in rows])
    name = torch.cuda.get_device_name(device) if gpu else "CPU"
    figs = figures(rows, labels=LABELS, title_suffix=f" ({name}, batch {ctx.batch_size})")
    if "memory_vs_resolution" not in figs:
        ctx.warn(MEMORY_NOTE.format(device=name))
    for stem, fig in figs.items():
        save_figure(fig, ctx.output, stem)
    return {"device": name, "batch_size": ctx.batch_size, "figures": sorted(figs), "rows": rows}
