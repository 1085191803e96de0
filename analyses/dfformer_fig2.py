"""DFFormer Fig. 2 (GFNet style): the global filters of GFNet-Ti in the frequency domain."""
from spectrascope.report.recipes import FigureSpec

from ._filters_cam import filters_recipe

FIGURE = FigureSpec(
    name="dfformer-fig2",
    title="Filters in the frequency domain on GFNet-Ti",
    paper="Tatsunami & Taki, FFT-based Dynamic Token Mixer for Vision (AAAI 2024), Fig. 2 "
          "(after Rao et al., GFNet, NeurIPS 2021, Fig. 4)",
    models=("gfnet_ti",),
    summary="The static per-channel global filters of the 12 GFNet-Ti layers (first 24 channels per layer), "
            "amplitudes with zero frequency in the centre and one colour scale, as the official GFNet "
            "visualisation draws them (YlGnBu). With trained weights neighbouring channels of a layer look alike "
            "(the redundancy Fig. 9 contrasts with DFFormer's bases).",
)


def run(ctx):
    return filters_recipe(ctx, "gfnet_ti", channels=list(range(24)))
