"""``spectrascope figure``: one sub-command per paper figure recipe."""
from __future__ import annotations

import click

from spectrascope.cli.app import main
from spectrascope.cli.options import OneLineError, shared_option, user_errors, with_options
from spectrascope.engine.runner import progress_scope
from spectrascope.seam.options import parse_img_size


class _FigureGroup(click.Group):
    """``figure list`` plus one sub-command per recipe module in ``spectrascope.recipes``."""

    def list_commands(self, ctx):
        from spectrascope.recipes import list_figures
        return ["list"] + [f.name for f in list_figures()]

    def get_command(self, ctx, name):
        if name in self.commands:
            return self.commands[name]
        from spectrascope.recipes import FigureError, get_figure
        try:
            spec, _ = get_figure(name)
        except FigureError:
            return None
        return _figure_command(spec)

    def resolve_command(self, ctx, args):
        from spectrascope.recipes import FigureError, get_figure
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            try:
                get_figure(args[0])
            except FigureError as exc:
                raise OneLineError(str(exc)) from None
        return super().resolve_command(ctx, args)


@main.group("figure", cls=_FigureGroup)
def figure_group():
    """Reproduce a paper figure: `spectrascope figure list`, `spectrascope figure NAME`."""


#: the command-line form of every recipe option (``FigureSpec.options`` names them)
def _recipe_option(name: str):
    from spectrascope.recipes import FOCALNET_VARIANTS, RECIPE_CHOICES, RECIPE_OPTIONS
    text = RECIPE_OPTIONS.get(name, name)
    if name == "models":
        return click.option("--model", "models", multiple=True, metavar="NAME", help=text + " (repeat)")
    if name == "focalnet":
        return click.option("--focalnet", type=click.Choice(sorted(FOCALNET_VARIANTS)), default=None,
                            help=text + " [default: lrf]")
    if name in RECIPE_CHOICES:
        return click.option("--" + name.replace("_", "-"), name, type=click.Choice(RECIPE_CHOICES[name]),
                            default=None, help=f"{text} [default: {RECIPE_CHOICES[name][0]}]")
    if name == "throughput":
        return click.option("--throughput", is_flag=True, default=None, help=text)
    if name == "add":
        return click.option("--add", "add", multiple=True, metavar="NAME=results.json", help=text + " (repeat)")
    if name == "freq_axis":
        return click.option("--freq-axis", "freq_axis", type=click.Choice(["index", "true"]), default=None,
                            help=text + " [default: index]")
    return click.option("--" + name.replace("_", "-"), name, default=None, help=text)


@figure_group.command("list")
def figure_list_cmd():
    """The figure recipes, the models they need, whether they need trained weights and their options."""
    from spectrascope.recipes import list_figures, model_available
    figs = list_figures()
    if not figs:
        raise click.ClickException("no figure recipes found in spectrascope.recipes")
    for f in figs:
        marks = []
        for m in f.models:
            ok, why = model_available(m)
            marks.append(m if ok else f"{m} [{why}]")
        weights = "needs trained weights (--checkpoint MODEL=PATH)" if f.needs_weights else \
            "weights optional (meaningful with random weights)"
        click.echo(f"{f.name}  -  {f.paper}")
        click.echo(f"    {f.title}")
        if marks:
            click.echo(f"    models: {', '.join(marks)}")
        click.echo(f"    weights: {weights}")
        if f.options:
            flags = ["--model" if o == "models" else "--" + o.replace("_", "-") for o in f.options]
            click.echo(f"    options: {', '.join(flags)}")


def _report(spec, doc, folder) -> None:
    for msg in doc.get("warnings", []):
        click.echo(f"warning: {msg}", err=True)
    for s in doc["skipped_models"]:
        click.echo(f"note: skipped {s['model']}: {s['reason']}", err=True)
    if doc["random_weights"]:
        click.echo(f"note: random weights for {', '.join(doc['random_weights'])} (no --checkpoint)", err=True)
    click.echo(f"{spec.name} -> {folder} ({', '.join(doc['files'])})")


def _figure_command(spec):
    def cmd(checkpoints, output, overwrite, img_size, device, skip_unavailable, images, data, num_images,
            batch_size, pretrained=False, weights_dir=None, style=None, ncols=None, **options):
        from spectrascope.recipes import recipe_models, run_figure
        from spectrascope.recipes.base import pretrained_checkpoints
        if pretrained:
            checkpoints, left = pretrained_checkpoints(list(recipe_models(spec, options)), checkpoints, weights_dir)
            for m in left:
                click.echo(f"note: {m} has no official weights for --pretrained; it keeps random weights", err=True)
        elif weights_dir:
            from spectrascope.errors import OptionError
            raise OptionError("give --pretrained too (the folder is where official weights are looked up)",
                              option="--weights-dir")
        try:
            with progress_scope(True):
                folder, doc = run_figure(spec.name, output=output, overwrite=overwrite, checkpoints=checkpoints,
                                         inputs={"device": device, "images": images, "data": data,
                                                 "num_images": num_images, "batch_size": batch_size,
                                                 "img_size": parse_img_size(img_size)},
                                         skip_unavailable=skip_unavailable, progress=True, options=options,
                                         style=style, ncols=ncols)
        except ImportError as exc:
            raise click.ClickException(str(exc).splitlines()[0]) from None
        _report(spec, doc, folder)

    cmd = user_errors(cmd)
    for name in reversed(spec.options):
        cmd = _recipe_option(name)(cmd)
    cmd = with_options(
        click.Option(["--checkpoint", "checkpoints"], multiple=True, metavar="MODEL=PATH",
                     help=f"weights per model ({', '.join(spec.models)})"),
        shared_option("output", default="runs/figures", help="parent folder; the figure goes to OUTPUT/<name>/"),
        shared_option("overwrite", help="replace an existing figure folder"),
        shared_option("img_size"), shared_option("device"),
        click.Option(["--skip-unavailable"], is_flag=True, help="draw the available models when some are missing"),
        shared_option("pretrained"), shared_option("weights_dir"),
        *(shared_option(n) for n in ("images", "data", "num_images")),
        shared_option("batch_size", default=None, show_default=False, help="images per forward pass [the recipe's]"),
        shared_option("style"), shared_option("ncols"),
    )(cmd)
    weights = "Needs trained weights." if spec.needs_weights else "Meaningful with random weights."
    return click.command(spec.name, help=f"{spec.title}. {spec.paper}.\n\n{spec.summary}\n\n{weights}",
                         short_help=spec.title)(cmd)
