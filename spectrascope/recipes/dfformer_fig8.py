"""DFFormer Fig. 8: relative log amplitudes on stage 3, CAFormer-S18 vs CDFFormer-S18."""
from spectrascope.recipes import FigureSpec

from ._spectra import amplitude_recipe

FIGURE = FigureSpec(
    name="dfformer-fig8",
    title="Relative log amplitudes of Fourier transformed feature maps on stage 3",
    paper="Tatsunami & Taki, FFT-based Dynamic Token Mixer for Vision (AAAI 2024), Fig. 8",
    models=("caformer_s18", "cdfformer_s18"),
    summary="Stage 3 only (the downsampling into stage 3, then the residual stream after every token mixer and "
            "every MLP of its 9 blocks): with trained weights CAFormer-S18 (MHSA) acts as a high-pass filter and "
            "CDFFormer-S18 (dynamic filter) attenuates the high frequencies.",
    options=("models", "freq_axis"),
)

LABELS = {"caformer_s18": "CAFormer-S18", "cdfformer_s18": "CDFFormer-S18"}


def run(ctx):
    return amplitude_recipe(ctx, labels=LABELS, title=FIGURE.title, stage=(3,))
