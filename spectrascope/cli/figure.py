"""``spectrascope figure``: one sub-command per paper figure recipe."""
from __future__ import annotations

import click

from spectrascope.cli.app import main
from spectrascope.cli.options import (image_options, parse_img_size, user_errors)


class _FigureGroup(click.Group):
    """``figure list`` plus one sub-command per recipe module in ``spectrascope.analyses``."""

    def list_commands(self, ctx):
        from spectrascope.report.recipes import list_figures
        return ["list"] + [f.name for f in list_figures()]

    def get_command(self, ctx, name):
        if name in self.commands:
            return self.commands[name]
        from spectrascope.report.recipes import FigureError, get_figure
        try:
            spec, _ = get_figure(name)
        except FigureError:
            return None
        return _figure_command(spec)

    def resolve_command(self, ctx, args):
        from spectrascope.report.recipes import FigureError, get_figure
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            try:
                get_figure(args[0])
            except FigureError as exc:
                raise click.ClickException(str(exc)) from None
        return super().resolve_command(ctx, args)


@main.group("figure", cls=_FigureGroup)
def figure_group():
    """Reproduce a paper figure: `spectrascope figure list`, `spectrascope figure NAME`."""


@figure_group.command("list")
def figure_list_cmd():
    """The figure recipes and the models they need."""
    from spectrascope.report.recipes import list_figures, model_available
    figs = list_figures()
    if not figs:
        raise click.ClickException("no figure recipes found in spectrascope.analyses")
    for f in figs:
        marks = []
        for m in f.models:
            ok, why = model_available(m)
            marks.append(m if ok else f"{m} [{why}]")
        click.echo(f"{f.name}  -  {f.paper}")
        click.echo(f"    {f.title}")
        if marks:
            click.echo(f"    models: {', '.join(marks)}")


def _recipe_options(spec):
    """Click options for the recipe's own ``FigureSpec.options`` (``--engine`` ...)."""
    def add(fn):
        for o in reversed(getattr(spec, "options", ()) or ()):
            fn = click.option(f"--{o.name}", o.name.replace("-", "_"), default=o.default, show_default=True,
                              type=click.Choice(list(o.choices)) if o.choices else str, help=o.help)(fn)
        return fn
    return add


def _figure_command(spec):
    @click.command(spec.name, help=f"{spec.title}. {spec.paper}.\n\n{spec.summary}")
    @click.option("--checkpoint", "checkpoints", multiple=True, metavar="MODEL=PATH",
                  help=f"weights per model ({', '.join(spec.models)})")
    @click.option("--output", type=click.Path(file_okay=False), default="figures", show_default=True,
                  help="parent folder; the figure goes to OUTPUT/<name>/")
    @click.option("--overwrite", is_flag=True, help="replace an existing figure folder")
    @click.option("--img-size", default=None, help="input size S or HxW (default: each model's)")
    @click.option("--device", default="auto", show_default=True)
    @click.option("--skip-unavailable", is_flag=True, help="draw the available models when some are missing")
    @image_options
    @click.option("--weights-dir", type=click.Path(file_okay=False), default=None,
                  help="folder of official weight files (default: $SPECTRASCOPE_WEIGHTS)")
    @click.option("--pretrained", is_flag=True, help="official weights for every model without --checkpoint")
    @_recipe_options(spec)
    @user_errors
    def cmd(checkpoints, output, overwrite, img_size, device, skip_unavailable, images, data, num_images,
            batch_size, pretrained=False, weights_dir=None, **recipe_options):
        import warnings
        if pretrained:
            from spectrascope.cli.options import fill_pretrained
            kw = {"checkpoints": checkpoints}
            for m in fill_pretrained(kw, weights_dir, models=list(spec.models), skip_missing=True):
                click.echo(f"note: {m} has no official weights for --pretrained; it keeps random weights", err=True)
            checkpoints = kw["checkpoints"]

        from spectrascope.report.recipes import run_figure
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                folder, doc = run_figure(spec.name, output=output, overwrite=overwrite, checkpoints=checkpoints,
                                         device=device, images=images, data=data, num_images=num_images,
                                         batch_size=batch_size, img_size=parse_img_size(img_size),
                                         skip_unavailable=skip_unavailable, progress=True,
                                         **({"options": recipe_options} if recipe_options else {}))
        except ImportError as exc:
            raise click.ClickException(str(exc).splitlines()[0]) from None
        from spectrascope.ops.fourier import ZeroMeanWarning
        for msg in dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, ZeroMeanWarning)):
            click.echo(f"warning: {msg}", err=True)
        summary = doc.get("summary")
        for msg in (summary.get("warnings") or []) if isinstance(summary, dict) else []:
            click.echo(f"warning: {msg}", err=True)       # what a recipe reports (e.g. skipped batches)
        for s in doc["skipped_models"]:
            click.echo(f"note: skipped {s['model']}: {s['reason']}", err=True)
        if doc["random_weights"]:
            click.echo(f"note: random weights for {', '.join(doc['random_weights'])} (no --checkpoint)", err=True)
        click.echo(f"{spec.name} -> {folder} ({', '.join(doc['files'])})")

    return cmd
