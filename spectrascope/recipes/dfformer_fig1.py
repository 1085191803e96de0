"""DFFormer Fig. 1: relative log amplitudes of Fourier-transformed feature maps, ViT vs GFNet."""
from spectrascope.recipes import FigureSpec

from ._spectra import amplitude_recipe, models_title

FIGURE = FigureSpec(
    name="dfformer-fig1",
    title="Relative log amplitudes of Fourier transformed feature maps (ViT vs GFNet)",
    paper="Tatsunami & Taki, FFT-based Dynamic Token Mixer for Vision (AAAI 2024), Fig. 1",
    models=("timm:vit_tiny_patch16_224", "gfnet_ti"),
    summary="Park & Kim curves of the latents of a non-hierarchical ViT and GFNet (patch embedding, residual "
            "stream after every token mixer and every MLP; GFNet has one residual per block); the yellower, the "
            "deeper. The paper does not name the sizes: ViT-Ti (Park & Kim's model) and GFNet-Ti are used. The "
            "title names the models drawn (GFNet only when --skip-unavailable drops ViT).",
    options=("models", "freq_axis"),
)

BASE_TITLE = "Relative log amplitudes of Fourier transformed feature maps"

LABELS = {"timm:vit_tiny_patch16_224": "ViT-Ti", "gfnet_ti": "GFNet-Ti"}
#: the families the paper's title names
SHORT = {"timm:vit_tiny_patch16_224": "ViT", "gfnet_ti": "GFNet"}


def run(ctx):
    return amplitude_recipe(ctx, labels=LABELS, title=models_title(BASE_TITLE, ctx, SHORT))
