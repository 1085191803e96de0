"""SPANet Fig. 1: 2-D Fourier spectrum maps of five token mixers for the same input."""
from spectrascope.recipes import FigureSpec

from ._spectra import one_mixer_per_model, spectrum_recipe

FIGURE = FigureSpec(
    name="spanet-fig1",
    title="Fourier spectrum maps of token-mixer outputs",
    paper="Yun et al., SPANet: Frequency-balancing Token Mixer using Spectral Pooling Aggregation Modulation "
          "(ICCV 2023), Fig. 1",
    models=("timm:convnext_tiny", "timm:vit_base_patch16_224", "timm:swin_tiny_patch4_window7_224",
            "timm:focalnet_tiny_lrf", "spanet_s"),
    summary="Batch/channel mean of log|F| of one token-mixer output per model (DepConv, global MSA, local MSA, "
            "focal modulation, SPAM), centred, relative to DC, shared colour scale, one input image. The paper "
            "names neither the layer nor the colour map: the last block of stage 3 (ViT: the block at the same "
            "normalised depth) is shown. FocalNet-T is the LRF variant (the paper's 82.3 % row; --focalnet srf for the "
            "other).",
    num_images=1,
    options=("models", "focalnet", "cmap"),
)

LABELS = {"timm:convnext_tiny": "ConvNeXt-T (DepConv)", "timm:vit_base_patch16_224": "ViT-B/16 (global MSA)",
          "timm:swin_tiny_patch4_window7_224": "Swin-T (local MSA)",
          "timm:focalnet_tiny_lrf": "FocalNet-T LRF (focal module)",
          "timm:focalnet_tiny_srf": "FocalNet-T SRF (focal module)", "spanet_s": "SPANet-S (SPAM)"}


def run(ctx):
    return spectrum_recipe(ctx, labels=LABELS, title=FIGURE.title, select=one_mixer_per_model, blocks="all")
