"""The README stays true: its zoo table equals the registry, and every command line it shows uses
commands and options that exist."""
import re
import shlex
from pathlib import Path

import click
import pytest

import spectrascope
from spectrascope.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def _command_lines():
    text = README.read_text()
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("#", 1)[0].strip()
            m = re.search(r"(?:^|\s)(?:spectrascope|-m spectrascope\.cli)\s+(\S.*)$", line)
            if m:
                yield m.group(1)


def test_zoo_table_matches_the_registry():
    rows = re.findall(r"^\| `([a-z0-9_]+)` \| [a-z_0-9]+ \| ([0-9.]+)M \|", README.read_text(), flags=re.M)
    table = {name: float(p) for name, p in rows if name in spectrascope.list_models()}
    assert set(table) == set(spectrascope.list_models()), "README zoo table is out of date (spectrascope models --markdown)"
    for name, params in table.items():
        assert params == round(spectrascope.get_card(name).params / 1e6, 2), name


@pytest.mark.parametrize("line", sorted(set(_command_lines())))
def test_readme_command_lines_use_existing_options(line):
    argv = shlex.split(line.replace("<", "").replace(">", ""))
    cmd: click.Command = main
    while isinstance(cmd, click.Group) and argv:
        sub = cmd.get_command(click.Context(cmd), argv[0])
        if sub is None:
            break
        argv.pop(0)
        cmd = sub
    assert cmd is not main, f"unknown command in README: {line}"
    known = {opt for p in cmd.params for opt in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])}
    used = [a.split("=", 1)[0] for a in argv if a.startswith("-") and not re.fullmatch(r"-\d.*", a)]
    missing = [u for u in used if u not in known]
    assert not missing, f"{line}: unknown option(s) {missing}"
