"""One command per analysis, generated from its declaration (built-in analyses and installed
plug-ins alike), and ``plot``, which redraws any analysis's figures from its results.json."""
from __future__ import annotations

import click
from click.core import ParameterSource

from spectrascope.cli.app import main
from spectrascope.cli.options import click_option, speaks, user_errors
from spectrascope.seam import Analysis, Option, execute
from spectrascope.seam import options as so
from spectrascope.seam import registry

__all__ = ["make_command", "echo_outcome", "add_analysis_commands"]


def echo_outcome(outcome) -> None:
    """Print what a run reports (warnings and notes on stderr, its lines on stdout), on the rank that speaks."""
    if not speaks():
        return
    for msg in outcome.warnings:
        click.echo(f"warning: {msg}", err=True)
    for msg in outcome.notes:
        click.echo(f"note: {msg}", err=True)
    for line in outcome.lines:
        click.echo(line)


def make_command(analysis: Analysis) -> click.Command:
    """The ``spectrascope <name>`` command of an analysis."""

    @user_errors
    def callback(**values):
        ctx = click.get_current_context()
        given = {k for k in values if ctx.get_parameter_source(k) not in (ParameterSource.DEFAULT, None)}
        params = analysis.params({k: v for k, v in values.items()}, given=given)
        echo_outcome(execute(analysis, params, write=True, progress=True))

    params = [click_option(o) for o in analysis.all_options() if o.cli]
    return click.Command(analysis.name, params=params, callback=callback, help=analysis.help_text(),
                         short_help=analysis.summary, context_settings={"help_option_names": ["-h", "--help"]})


def _draw_options() -> list[Option]:
    """Every figure option that some analysis's figures take (``plot --cmap`` ...), once each."""
    seen: dict[str, Option] = {}
    for a in registry.analyses():
        own = {o.name: o for o in a.all_options()}
        for name in a.draw_options:
            if name in own and name not in seen:
                seen[name] = own[name]
    return list(seen.values())


@user_errors
def _plot(results, output, formats, overwrite, style=None, ncols=None, **draw):
    from spectrascope.errors import OptionError
    from spectrascope.seam.plot import redraw
    fmts = [f.strip().lower() for f in formats.split(",") if f.strip()]
    bad = [f for f in fmts if f not in ("png", "pdf", "svg")]
    if bad or not fmts:
        raise OptionError(f"unsupported format(s) {', '.join(bad) or repr(formats)}; use png, pdf, svg",
                          option="--format")
    for o in _draw_options():                  # options are checked before the results file is read
        if draw.get(o.name) is not None:
            o.convert(draw[o.name])
    for p in redraw(results, output, formats=tuple(fmts), overwrite=overwrite, style=style, ncols=ncols,
                    options={k: v for k, v in draw.items() if v is not None}):
        click.echo(str(p))


def _plot_command() -> click.Command:
    params = [
        click.Argument(["results"], type=click.Path()),
        click.Option(["--output", "output"], type=click.Path(), default=None,
                     help="folder for the figures (default: the results folder, where only spectrascope's own "
                          "figures are replaced)"),
        click.Option(["--format", "formats"], default="png,pdf", show_default=True,
                     help="comma list of formats: png, pdf, svg"),
        click.Option(["--overwrite", "overwrite"], is_flag=True,
                     help="replace an earlier `plot` folder given as --output"),
    ] + [click_option(o) for o in so.STYLE] + [click_option(o, default_none=True) for o in _draw_options()]
    return click.Command("plot", params=params, callback=_plot,
                         help="Redraw the figures of any analysis's results.json from its data alone.",
                         short_help="redraw the figures of a results.json")


def add_analysis_commands(group: click.Group) -> None:
    """Add every registered analysis (and ``plot``) to ``group``."""
    for a in registry.analyses():
        if a.name not in group.commands:
            group.add_command(make_command(a))
    group.add_command(_plot_command())


add_analysis_commands(main)
