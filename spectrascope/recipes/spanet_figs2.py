"""SPANet Fig. S2: Score-CAM maps of several ImageNet models on the same images."""
from spectrascope.recipes import FigureSpec

FIGURE = FigureSpec(
    name="spanet-figs2",
    title="Score-CAM activation maps of SPANet-S and MetaFormer baselines",
    paper="Yun et al., SPANet: Frequency-balancing Token Mixer using Spectral Pooling Aggregation Modulation "
          "(ICCV 2023), Fig. S2",
    models=("spanet_s", "poolformer_s24", "convformer_s18", "dfformer_s18"),
    summary="Score-CAM (pytorch-grad-cam's flavour, as the SPANet demo: top-1 class, last stage, 32 masked inputs "
            "per forward) of each model on the same images, one column per model. The paper does not list its "
            "comparison models; these are MetaFormer-family models of similar size from the zoo. Score-CAM costs "
            "one forward per channel of the last stage (512 per image here): use a GPU.",
    num_images=4,
    options=("models",),
)


def run(ctx):
    import spectrascope
    res = spectrascope.run("cam", model=tuple(ctx.models), checkpoint=tuple(f"{m}={ctx.checkpoint(m)}" for m in
                                                                          ctx.models if ctx.checkpoint(m)),
                           method="scorecam", flavour="gradcam-lib", images=ctx.images, data=ctx.data,
                           num_images=ctx.num_images, img_size=ctx.img_size, device=ctx.device, batch_size=32,
                           output=ctx.output / "cam", progress=ctx.progress)
    return {"models": [{"model": m["model"], "target_layer": m["target_layer"], "classes": m["classes"]}
                       for m in res.models], "images": res.images}
