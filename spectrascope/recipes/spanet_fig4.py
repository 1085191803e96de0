"""SPANet Fig. 4 / S1: SPG maps at lambda = 0.7 / 0.8 / 0.9 and the aggregated context."""
from spectrascope.recipes import FigureSpec

FIGURE = FigureSpec(
    name="spanet-fig4",
    title="SPG maps and aggregated context of SPANet-S (Fig. 4 / S1)",
    paper="Yun et al., SPANet: Frequency-balancing Token Mixer using Spectral Pooling Aggregation Modulation "
          "(ICCV 2023), Fig. 4 and Fig. S1",
    models=("spanet_s",),
    summary="Columns: input, the three SPG outputs (balancing parameters 0.7, 0.8, 0.9) and their sum (the "
            "context that modulates the query) at the last SPAM block of SPANet-S, each the channel mean resized "
            "to the image and overlaid. The paper does not state the channel aggregation or colour map "
            "(reconstructed: channel mean, jet overlay).",
    num_images=5,
)


def run(ctx):
    import spectrascope
    res = spectrascope.run("context", model="spanet_s", checkpoint=ctx.checkpoint("spanet_s"), images=ctx.images,
                           data=ctx.data, num_images=ctx.num_images, img_size=ctx.img_size, device=ctx.device,
                           output=ctx.output / "context")
    return {"block": res.block, "maps": res.maps_shown, "images": res.images}
