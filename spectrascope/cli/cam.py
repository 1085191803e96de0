"""``spectrascope cam`` and ``context``: class activation maps and SPANet context maps (thin
wrappers: options are parsed here, the work is ``spectrascope.pipelines.cam``)."""
from __future__ import annotations

import click

from spectrascope.cli.app import main
from spectrascope.cli.options import (_given, image_options, model_options, parse_img_size, parse_model_kwargs,
                                      runtime_options, user_errors)


def _engine_options(fn):
    fn = click.option("--amp", type=click.Choice(["off", "bf16", "fp16"]), default="off", show_default=True,
                      help="autocast dtype of the forwards")(fn)
    fn = click.option("--channels-last/--no-channels-last", "channels_last", default=None,
                      help="channels-last activations (default: the measured faster one, see the README)")(fn)
    return fn


def _report(outcome) -> None:
    if outcome.output is None:                               # not the reporting rank under torchrun
        return
    for note in outcome.notes:
        click.echo(f"note: {note}", err=True)
    if outcome.summary:
        click.echo(outcome.summary)
    click.echo(f"-> {outcome.output}")


@main.command("cam")
@click.option("--model", "model_names", required=True, multiple=True,
              help="registry name, alias or timm:<name>; repeat to compare models in one grid")
@click.option("--checkpoint", "checkpoints", multiple=True,
              help="one per --model in order, or MODEL=PATH; '-' keeps random weights")
@click.option("--method", type=click.Choice(["scorecam", "gradcam", "gradcam++"]), default="scorecam",
              show_default=True)
@click.option("--flavour", type=click.Choice(["gradcam-lib", "authors", "torchcam"]), default="gradcam-lib",
              show_default=True, help="Score-CAM implementation to reproduce")
@click.option("--score", type=click.Choice(["logit", "softmax"]), default=None,
              help="class score of a masked input (default: the flavour's own)")
@click.option("--target-layer", default=None,
              help="tap name (stage4, s3.b1.block), role (stage: its last tap), stage number, or "
                   "path:MODULE[:LAYOUT][:HxW]; comma-separated layers are averaged")
@click.option("--class", "target_class", type=int, default=None,
              help="class to explain (default: top-1, or the label of synthetic data)")
@runtime_options
@image_options
@_engine_options
@click.option("--output", type=click.Path(file_okay=False), default=None,
              help="output directory (default: runs/cam/<models>-<time>)")
@click.option("--overwrite", is_flag=True, help="replace an existing output directory")
@user_errors
def cam_cmd(model_names, checkpoints, method, flavour, score, target_layer, target_class, img_size, device,
            model_kwargs, images, data, num_images, batch_size, channels_last, amp, output, overwrite):
    """Class activation maps (Score-CAM, Grad-CAM, Grad-CAM++) with overlays, a grid
    comparing the models (SPANet Fig. S2), raw maps and, on synthetic data, localisation
    scores (pointing game, energy in the box). --batch-size is the number of images per
    Grad-CAM pass and of masked inputs per Score-CAM forward (Score-CAM without --batch-size:
    chosen automatically, at most 8 on CPUs and 64 on GPUs). Runs under torchrun (images
    sharded over the processes)."""
    from spectrascope.pipelines.cam import run_cam
    from spectrascope.zoo.build import pair_checkpoints
    paired = pair_checkpoints(model_names, checkpoints)
    _check_checkpoints(paired.values())
    outcome = run_cam([(m, paired[m]) for m in model_names], method=method, flavour=flavour,
                      target_layer=target_layer, target_class=target_class, images=images, data=data,
                      num_images=num_images, img_size=parse_img_size(img_size), device=device,
                      overrides=parse_model_kwargs(model_kwargs), batch_size=batch_size, score=score, output=output,
                      overwrite=overwrite, mask_batch_size=batch_size if _given("batch_size") else None,
                      channels_last=channels_last, amp=amp)
    _report(outcome)


def _check_checkpoints(checkpoints) -> None:
    from pathlib import Path

    from spectrascope.errors import CheckpointError
    for path in checkpoints or ():
        if path is not None and not Path(path).is_file():
            raise CheckpointError(f"checkpoint not found: {path}", option="--checkpoint")


@main.command("context")
@model_options
@image_options
@_engine_options
@click.option("--block", default=None, help="SPAM block (s4.b3), a stage number (its last block) or 'last' [last]")
@click.option("--output", type=click.Path(file_okay=False), default=None,
              help="output directory (default: runs/context/<model>-<time>)")
@click.option("--overwrite", is_flag=True, help="replace an existing output directory")
@user_errors
def context_cmd(model_name, checkpoint, img_size, device, model_kwargs, images, data, num_images, batch_size,
                channels_last, amp, block, output, overwrite):
    """SPANet context maps (Fig. 4 / S1): each SPG's output and the aggregated context of a
    SPAM block, channel-mean, resized to the image and overlaid. Runs under torchrun."""
    from spectrascope.pipelines.cam import run_context
    _check_checkpoints([checkpoint] if checkpoint else [])
    outcome = run_context(model_name, checkpoint=checkpoint, block=block, images=images, data=data,
                          num_images=num_images, img_size=parse_img_size(img_size), device=device,
                          overrides=parse_model_kwargs(model_kwargs), batch_size=batch_size, output=output,
                          overwrite=overwrite, channels_last=channels_last, amp=amp)
    _report(outcome)
