"""DFFormer Fig. 2 (GFNet style): the global filters of GFNet-Ti in the frequency domain."""
from spectrascope.recipes import FigureSpec

from ._filters_cam import filters_recipe

FIGURE = FigureSpec(
    name="dfformer-fig2",
    title="Filters in the frequency domain on GFNet-Ti",
    paper="Tatsunami & Taki, FFT-based Dynamic Token Mixer for Vision (AAAI 2024), Fig. 2 "
          "(after Rao et al., GFNet, NeurIPS 2021, Fig. 4)",
    models=("gfnet_ti",),
    summary="The static per-channel global filters of the 12 GFNet-Ti layers (first 24 channels per layer), "
            "amplitudes with zero frequency in the centre and one colour scale per stage, with the colour key of "
            "Fig. 9 (viridis: yellow = high amplitude) so the two figures compare directly; PNG and PDF. With "
            "trained weights neighbouring channels of a layer look alike (the redundancy Fig. 9 contrasts with "
            "DFFormer's bases).",
    options=("models", "cmap"),
)


def run(ctx):
    out = [filters_recipe(ctx, m, channels=list(range(24))) for m in ctx.models]
    return out[0] if len(out) == 1 else {"models": out}
