"""DFFormer Fig. 9: the dynamic-filter bases of DFFormer-S18 in the frequency domain."""
from spectrascope.recipes import FigureSpec

from ._filters_cam import filters_recipe

FIGURE = FigureSpec(
    name="dfformer-fig9",
    title="Filters in the frequency domain on DFFormer-S18",
    paper="Tatsunami & Taki, FFT-based Dynamic Token Mixer for Vision (AAAI 2024), Fig. 9",
    models=("dfformer_s18",),
    summary="The 4 basis filters of each of the 18 dynamic-filter layers as amplitudes |W| with zero frequency in "
            "the centre (GFNet's recipe: irfft2, fft2, shift, |.|), rows grouped by stage with one colour scale "
            "per stage (yellow = high amplitude), plus which basis the channels use on the images. The paper's "
            "exact layout and colour map are not published; with trained weights high-, low- and band-pass bases "
            "appear in many layers. PNG and PDF with labelled colour bars.",
    num_images=5,
    options=("models", "cmap"),
)


def run(ctx):
    out = [filters_recipe(ctx, m, routing=True) for m in ctx.models]
    return out[0] if len(out) == 1 else {"models": out}
