"""``spectrascope models``, ``taps`` and ``convert``: the zoo, its taps and its checkpoint layouts
(``predict`` lives with ``evaluate`` in ``cli.train``)."""
from __future__ import annotations

import json

import click
import torch

from spectrascope.cli.app import main
from spectrascope.cli.options import shared_option, user_errors, with_options
from spectrascope.seam.options import parse_img_size, parse_model_kwargs
from spectrascope.errors import UnknownModelError
from spectrascope.zoo import registry
from spectrascope.probe.grammar import parse_stages


@main.command("models")
@click.argument("pattern", required=False)
@click.option("--json", "as_json", is_flag=True, help="print the model cards as JSON")
@click.option("--markdown", is_flag=True, help="print a markdown table (ours vs the paper's parameter counts)")
@user_errors
def models_cmd(pattern, as_json, markdown):
    """List the model zoo (name, family, params, default resolution). PATTERN filters names
    (substring or shell pattern such as 'dfformer*')."""
    names = registry.list_models(pattern)
    if not names:
        raise UnknownModelError(f"no model matches {pattern!r} (`spectrascope models` lists them all)",
                                option="PATTERN")
    cards = [registry.get_card(n) for n in names]
    if as_json:
        click.echo(json.dumps([c.as_dict() for c in cards], indent=1))
        return
    if markdown:
        click.echo(zoo_markdown(cards))
        return
    rows = [(c.name, c.family, f"{c.params / 1e6:.2f}M", f"{c.default_input_size[1]}x{c.default_input_size[2]}",
             "yes" if c.weight_file else "-") for c in cards]
    header = ("name", "family", "params", "input", "weights")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    click.echo(fmt.format(*header))
    for r in rows:
        click.echo(fmt.format(*r))


def zoo_markdown(cards) -> str:
    lines = ["| model | family | params (ours) | trainable | paper/README | input | official weights | notes |",
             "|---|---|---|---|---|---|---|---|"]
    for c in cards:
        paper = f"{c.paper_params_m:g}M" if c.paper_params_m is not None else "-"
        trainable = f"{c.params_trainable / 1e6:.2f}M" if c.params_trainable != c.params else "="
        lines.append(f"| `{c.name}` | {c.family} | {c.params / 1e6:.2f}M | {trainable} | {paper} | "
                     f"{c.default_input_size[1]}x{c.default_input_size[2]} | {c.weight_file or '-'} | "
                     f"{c.description} |")
    return "\n".join(lines)


@main.command("taps")
@with_options(shared_option("model"), shared_option("img_size"), shared_option("model_kwargs"))
@click.option("--role", "roles", default=None, metavar="ROLE,...", help="only these roles")
@click.option("--stage", "stages", default=None, metavar="K[,K]", help="only these 1-based stages")
@click.option("--json", "as_json", is_flag=True, help="print the taps as JSON")
@user_errors
def taps_cmd(model, img_size, model_kwargs, roles, stages, as_json):
    """List the hookable taps of a model in execution order (name, role, stage, layout, grid,
    module path), i.e. what --taps ROLE / path:<module.path> can address."""
    from spectrascope.probe import model_taps, select_taps
    model_name = model
    size = parse_img_size(img_size)
    if model_name.startswith("timm:"):
        try:
            model = registry.create_model(model_name, img_size=size, **parse_model_kwargs(model_kwargs)).eval()
        except ImportError as exc:
            raise click.ClickException(str(exc).splitlines()[0]) from None
    else:
        with torch.device("meta"):
            model = registry.create_model(model_name, img_size=size, **parse_model_kwargs(model_kwargs))
    hw = None if size is None else ((size, size) if isinstance(size, int) else tuple(size))
    taps = model_taps(model, input_size=hw)
    if roles or stages:
        taps = select_taps(taps, roles=roles.split(",") if roles else None, stages=parse_stages(stages) or None)
    if as_json:
        click.echo(json.dumps([t.as_dict() for t in taps], indent=1))
        return
    rows = [(t.name, t.role, "" if t.stage is None else str(t.stage), t.layout + (f"+{t.num_prefix_tokens}"
             if t.num_prefix_tokens else ""), "" if t.grid is None else f"{t.grid[0]}x{t.grid[1]}",
             t.path + (" (input)" if t.hook == "pre" else "")) for t in taps]
    header = ("name", "role", "stage", "layout", "grid", "module")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    click.echo(fmt.format(*header).rstrip())
    for r in rows:
        click.echo(fmt.format(*r).rstrip())


@main.command("convert")
@click.argument("source", type=click.Path(dir_okay=False, exists=True))
@click.argument("target", type=click.Path(dir_okay=False))
@click.option("--to", "to", required=True, help="layout to write: timm or official")
@click.option("--model", "model_name", default=None,
              help="check the result by loading it strictly into this zoo model (official) or timm model (timm)")
@with_options(shared_option("overwrite", help="replace an existing TARGET"))
@user_errors
def convert_cmd(source, target, to, model_name, overwrite):
    """Convert a ConvFormer / CAFormer / PoolFormer (v1, v2) checkpoint between the official layout
    and timm's (timm.models.metaformer). TARGET ending in .safetensors is written as safetensors,
    anything else as a torch state dict."""
    from spectrascope.errors import OptionError
    from spectrascope.io.results import check_output_file, write_checkpoint
    from spectrascope.zoo import formats
    from spectrascope.zoo.checkpoint import load_state_dict, read_checkpoint
    if to not in (formats.TIMM, formats.OFFICIAL):
        raise OptionError(f"{to!r}: choose timm or official", option="--to")
    out = check_output_file(target, overwrite=overwrite, inputs=[source], option="TARGET")
    state, info = read_checkpoint(source)
    if to == formats.TIMM:
        _check_timm_family(source, state, info, model_name)
    found = formats.detect(state)
    if found is None:
        raise OptionError(f"{source}: not a ConvFormer / CAFormer / PoolFormer state dict in the official or timm "
                          "layout (other families have one layout)", option="SOURCE")
    converted = formats.convert(state, to)
    if model_name:
        if to == formats.OFFICIAL:
            model = registry.create_model(model_name, num_classes=_classes(converted))
        else:
            model = registry.create_model(f"timm:{model_name.removeprefix('timm:')}", num_classes=_classes(converted))
        with torch.device("cpu"):
            load_state_dict(model, converted, strict=True)
    write_checkpoint(out, converted)
    checked = f", loads into {model_name}" if model_name else ""
    click.echo(f"{source}: {found[1]} {found[0]} -> {to} ({len(converted)} tensors{checked}) -> {target}")


def _check_timm_family(source, state: dict, info: dict, model_name: str | None) -> None:
    """Refuse ``--to timm`` for a checkpoint of a family timm has no model for: the family a training
    checkpoint records, the family of ``--model``, or token-mixer weights no timm family has."""
    from spectrascope.errors import OptionError
    from spectrascope.zoo import formats
    from spectrascope.zoo.build import model_spec_from_info
    accepted = ", ".join(formats.FAMILIES)
    spec = model_spec_from_info(info)
    names = [n for n in (spec.name if spec else None, model_name) if n and not n.startswith("timm:")]
    for name in names:
        family = registry.get_card(name).family
        if formats.family_layout(family) is None:
            raise OptionError(f"{source}: a {family} checkpoint ({name}), a family timm has no model for; --to timm "
                              f"accepts {accepted}", option="--to")
    foreign = formats.foreign_mixers(state)
    if foreign:
        raise OptionError(f"{source}: its token mixers ({foreign[0]}) are of a family timm has no model for; "
                          f"--to timm accepts {accepted}", option="--to")


def _classes(state: dict) -> int:
    from spectrascope.zoo.build import num_classes_in
    for key in ("head.fc.fc2.bias", "head.fc.bias"):
        if key in state:
            return int(state[key].shape[0])
    return num_classes_in(state) or 1000
