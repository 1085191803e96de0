"""SPANet Fig. 2: relative log amplitudes of token-mixer outputs of four architectures."""
from spectrascope.recipes import FigureSpec

from ._spectra import amplitude_recipe

FIGURE = FigureSpec(
    name="spanet-fig2",
    title="Relative log amplitude of Fourier transformed feature maps (token-mixer outputs)",
    paper="Yun et al., SPANet: Frequency-balancing Token Mixer using Spectral Pooling Aggregation Modulation "
          "(ICCV 2023), Fig. 2",
    models=("timm:convnext_tiny", "timm:vit_base_patch16_224", "timm:swin_tiny_patch4_window7_224",
            "timm:focalnet_tiny_lrf"),
    summary="Park & Kim curves of every token-mixer output (DepConv, global MSA, local MSA, focal modulation), "
            "coloured by normalised depth. With trained weights DepConv keeps the most and global MSA the least "
            "high-frequency content. FocalNet-T is the LRF variant (the paper's 82.3 % row; --focalnet srf for the "
            "other).",
    options=("models", "focalnet", "freq_axis"),
)

LABELS = {"timm:convnext_tiny": "ConvNeXt-T (DepConv)", "timm:vit_base_patch16_224": "ViT-B/16 (global MSA)",
          "timm:swin_tiny_patch4_window7_224": "Swin-T (local MSA)",
          "timm:focalnet_tiny_lrf": "FocalNet-T LRF (focal module)",
          "timm:focalnet_tiny_srf": "FocalNet-T SRF (focal module)"}


def run(ctx):
    return amplitude_recipe(ctx, labels=LABELS, title=FIGURE.title, taps="mixer")
