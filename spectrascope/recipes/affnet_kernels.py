"""AFFNet: adaptive frequency masks and their equivalent global dynamic convolution kernels."""
from spectrascope.recipes import FigureSpec

from ._filters_cam import filters_recipe

FIGURE = FigureSpec(
    name="affnet-kernels",
    title="Adaptive frequency masks are global dynamic convolution kernels",
    paper="Huang et al., Adaptive Frequency Filters As Efficient Global Token Mixers (ICCV 2023), Sec. 3.2 "
          "(Eq. 4-6) and Fig. 2",
    models=("affnet",),
    summary="For each image and each of the 9 AFF token mixers: the instance-adaptive mask M (amplitude of its "
            "Hermitian extension, DC centred, channel mean) and the equivalent spatial kernel F^-1(M) (channel "
            "mean and three channels, centred). The figure checks Eq. 6 numerically on the model's own tensors: "
            "irfft2(M * rfft2(x)) equals the circular convolution of x with F^-1(M) (max abs error reported).",
    num_images=2,
    needs_weights=False,
    options=("cmap",),
)


def run(ctx):
    return filters_recipe(ctx, "affnet")
