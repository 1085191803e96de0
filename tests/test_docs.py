"""Every command line in the documentation (README.md and docs/**/*.md) keeps working.

A ``spectrascope ...`` line of a ```bash block (also after ``torchrun ... -m spectrascope.cli``)
either runs, with its sizes shrunk (tiny model configurations, 32 px inputs, a few images, one
short epoch), or, when a comment at its end says that it needs something this test does not have
(``# gpu``, ``# network``, ``# data``, ``# timm``, ``# hours``), is checked to parse: its command
and every option exist. The lines of a page run in order in one folder, so a page that trains a
model analyses that model; a checkpoint a page uses without training it (``runs/train/NAME``) is
trained once, shrunk, for the session. ``torchrun`` lines run in this process (one rank; the
equality of several ranks with one is each analysis's own test), and the first runnable line of
the torchrun tutorial goes through the real launcher with two processes.
"""
from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from spectrascope.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md"] + sorted(DOCS.rglob("*.md"))
TAGS = ("gpu", "network", "data", "timm", "hours")
TAG_RE = re.compile(r"#\s*((?:%s)(?:\s*,\s*(?:%s))*)\b" % ("|".join(TAGS), "|".join(TAGS)))
CLI_RE = re.compile(r"(?:^|\s)(?:spectrascope|-m spectrascope\.cli)\s+(\S.*)$")
TRAINED = re.compile(r"runs/train/([\w.-]+)")

#: constructor overrides that shrink each family to a few thousand parameters (official argument names)
TINY = {
    "metaformer": ["depths=1,1,1,1", "dims=8,16,24,32"],
    "spanet": ["layers=1,1,1,1", "embed_dims=8,16,20,32"],
    "gfnet": ["depth=12", "embed_dim=32"],
    "gfnet_h": ["depth=1,1,1,1", "embed_dim=8,16,24,32"],
}
FAMILY = {"dfformer": "metaformer", "cdfformer": "metaformer", "gfformer": "metaformer", "convformer": "metaformer",
          "caformer": "metaformer", "identityformer": "metaformer", "randformer": "metaformer",
          "poolformerv2": "metaformer", "spanet": "spanet", "poolformer": "spanet", "gfnet": "gfnet",
          "gfnet_h": "gfnet_h"}
#: the checkpoints pages use (``runs/train/NAME``): model and overrides of the documented training run
RUNS = {"synthetic-demo": ("dfformer_s18", TINY["metaformer"]), "synthetic-gf": ("gfformer_s18", TINY["metaformer"])}


@dataclass(frozen=True)
class Line:
    """One command line of a page: its text, the arguments after ``spectrascope``, its tags."""

    page: str
    text: str
    argv: tuple[str, ...]
    tags: tuple[str, ...]
    torchrun: bool

    def __str__(self) -> str:
        return f"{self.page}: {self.text}"


def _comment(line: str) -> tuple[str, str]:
    """``line`` split at its first ``#`` outside quotes: (command, comment)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i:]
    return line.rstrip(), ""


def command_lines(page: Path) -> list[Line]:
    """The ``spectrascope`` lines of ``page``'s bash blocks, in order."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
        for raw in re.sub(r"\\\n\s*", " ", block).splitlines():
            text, comment = _comment(raw.strip())
            m = CLI_RE.search(text)
            if not m:
                continue
            tag = TAG_RE.match(comment)
            tags = tuple(t.strip() for t in tag.group(1).split(",")) if tag else ()
            argv = tuple(shlex.split(m.group(1).replace("<", "").replace(">", "")))
            out.append(Line(str(page.relative_to(ROOT)), text, argv, tags,
                            bool(re.search(r"\btorchrun\b|torch\.distributed\.run", text))))
    return out


def _command(argv) -> tuple[click.Command, list[str], list[str]]:
    """The click command of ``argv``, its name path and the remaining arguments."""
    argv = list(argv)
    cmd, path = main, []
    while isinstance(cmd, click.Group) and argv:
        sub = cmd.get_command(click.Context(cmd), argv[0])
        if sub is None:
            break
        path.append(argv.pop(0))
        cmd = sub
    return cmd, path, argv


def _options(cmd: click.Command) -> set[str]:
    return {o for p in cmd.params for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])}


def check_parses(line: Line) -> None:
    """The command and every option of ``line`` exist."""
    cmd, path, rest = _command(line.argv)
    assert path and cmd is not main, f"unknown command: {line}"
    known = _options(cmd)
    used = [a.split("=", 1)[0] for a in rest
            if a.startswith("-") and a != "-" and not re.fullmatch(r"-\d.*", a)]     # "-": a value (no checkpoint)
    missing = [u for u in used if u not in known]
    assert not missing, f"{line}: unknown option(s) {missing}"


# ---------------------------------------------------------------------------- shrinking

def _values(args: list[str], *flags: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a in flags] + \
        [a.split("=", 1)[1] for a in args if any(a.startswith(f + "=") for f in flags)]


def _set(args: list[str], flags: tuple[str, ...], value) -> list[str]:
    """Replace the value of the first of ``flags`` (or append the first flag with ``value``)."""
    for i, a in enumerate(args[:-1]):
        if a in flags:
            return args[:i + 1] + [str(value(args[i + 1]) if callable(value) else value)] + args[i + 2:]
    return args + [flags[0], str(value(None) if callable(value) else value)]


def _family(model: str) -> str | None:
    """The TINY group of a registry name (the longest family prefix), None for others (timm, AFFNet)."""
    name = model.split("=", 1)[-1]
    prefixes = [f for f in FAMILY if name == f or name.startswith(f + "_")]
    return FAMILY[max(prefixes, key=len)] if prefixes else None


def _synthetic(spec: str) -> str:
    """A synthetic data spec with small splits (the first images, the same classes)."""
    if not spec.startswith("synthetic"):
        return spec
    keys = spec.split(":", 1)[1].split(",") if ":" in spec else []
    keys += [kv for kv in ("train_size=64", "val_size=16") if kv.split("=")[0] not in {k.split("=")[0] for k in keys}]
    return "synthetic:" + ",".join(keys)


def shrink(argv) -> list[str]:
    """``argv`` with tiny sizes: the same command, options and data kinds, a fraction of the work."""
    cmd, path, args = _command(argv)
    if not path:
        return list(argv)
    opts = _options(cmd)
    name = path[-1]
    checkpoints = _values(args, "--checkpoint", "--checkpoint-a", "--checkpoint-b")
    models = _values(args, "--model", "--model-a", "--model-b")
    args = [_synthetic(a) for a in args]
    args = [f"--data={_synthetic(a.split('=', 1)[1])}" if a.startswith("--data=") else a for a in args]
    families = {_family(m) for m in models}
    if "--model-kwargs" in opts and not checkpoints and "--model-kwargs" not in args and len(families) == 1 \
            and None not in families and "--pretrained" not in args:
        for kw in TINY[families.pop()]:
            args += ["--model-kwargs", kw]
    if "--img-size" in opts and "--img-size" not in args and not checkpoints and name not in ("flops", "figure"):
        # amplitude at 64 px: its curves need maps larger than 2x2 (stages 3-4 at 32 px are 2x2 and 1x1)
        args += ["--img-size", "64" if name == "amplitude" else "32"]
    if name == "train":
        args = _set(args, ("--epochs",), 1)
        args = _set(args, ("-b", "--batch-size"), 8)
        args += ["--limit-train-batches", "2", "--limit-val-batches", "1", "--no-progress"]
    elif "--num-images" in opts:
        few = 8 if name == "cka" else 2
        args = _set(args, ("--num-images",), lambda v: min(int(v), few) if v else few)
        if "--batch-size" in opts:
            args = _set(args, ("--batch-size", "-b"), 4)
    if name == "throughput":
        args = _set(args, ("--resolutions",), "32,48")
        args += ["--iters", "1", "--warmup", "0"]
    if "--effective" in args:
        args = _set(args, ("--effective",), 1)
    return path + args


# ---------------------------------------------------------------------------- running

@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def trained(tmp_path_factory, cache):
    """``runs/train/NAME`` of the documented training runs, trained once (shrunk) on demand."""
    base = tmp_path_factory.mktemp("trained")
    done: dict[str, Path] = {}

    def get(run: str) -> Path:
        if run not in done:
            model, kwargs = RUNS[run]
            argv = ["train", "--model", model] + [x for kw in kwargs for x in ("--model-kwargs", kw)] + \
                ["--data", "synthetic:patch=0.75", "--epochs", "4", "-b", "32", "--output", str(base / run)]
            res = CliRunner().invoke(main, shrink(argv), env={"SPECTRASCOPE_CACHE": str(cache)})
            assert res.exit_code == 0, res.output
            done[run] = base / run
        return done[run]
    return get


def _plugin(monkeypatch):
    """The example plug-in (examples/sparsity) registered as if it were installed."""
    from spectrascope.cli.analyses import make_command
    from spectrascope.seam import registry
    registry.load()
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "sparsity"))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    import importlib
    mod = importlib.reload(importlib.import_module("spectrascope_sparsity"))
    monkeypatch.setitem(main.commands, "sparsity", make_command(mod.Sparsity()))


def _prepare(page_lines: list[Line], folder: Path, trained) -> None:
    """Link the training runs the page uses but does not make itself."""
    made = {m.group(1) for ln in page_lines if ln.argv[0] == "train" and not ln.tags
            for m in TRAINED.finditer(" ".join(ln.argv))}
    used = {m.group(1) for ln in page_lines if not ln.tags for m in TRAINED.finditer(" ".join(ln.argv))}
    for run in sorted(used - made):
        if run in RUNS:
            (folder / "runs" / "train").mkdir(parents=True, exist_ok=True)
            os.symlink(trained(run), folder / "runs" / "train" / run, target_is_directory=True)


LINES = {str(p.relative_to(ROOT)): command_lines(p) for p in PAGES}
#: shrunk command lines already run: a line repeated on another page runs once, unless a later line of
#: its page reads what it writes
DONE: set[tuple[str, ...]] = set()


@pytest.fixture
def light_figures(monkeypatch):
    """Figures at 72 dpi with Type 3 PDF fonts: the same files, a fraction of the drawing time."""
    from matplotlib.figure import Figure

    from spectrascope.report import style
    savefig = Figure.savefig

    def light(self, *args, **kwargs):
        kwargs["dpi"] = min(kwargs.get("dpi") or 72, 72)
        return savefig(self, *args, **kwargs)
    monkeypatch.setattr(Figure, "savefig", light)
    monkeypatch.setitem(style.PAPER_RC, "pdf.fonttype", 3)


@pytest.mark.parametrize("page", [p for p, lines in LINES.items() if lines])
def test_command_lines_run_or_parse(page, tmp_path, monkeypatch, trained, cache, light_figures):
    lines = LINES[page]
    if any(ln.argv[0] == "sparsity" for ln in lines):
        _plugin(monkeypatch)
    for line in lines:
        check_parses(line)
    runnable = [ln for ln in lines if not ln.tags]
    if not runnable:
        return
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPECTRASCOPE_CACHE", str(cache))
    _prepare(lines, tmp_path, trained)
    runner = CliRunner()
    for i, line in enumerate(runnable):
        argv = shrink(line.argv)
        out = _values(argv, "--output")
        read_later = out and any(out[0] in " ".join(later.argv) for later in runnable[i + 1:])
        if tuple(argv) in DONE and not read_later:
            continue
        res = runner.invoke(main, argv)
        assert res.exit_code == 0, f"{line}\n  ran as: spectrascope {shlex.join(argv)}\n{res.output[-3000:]}"
        DONE.add(tuple(argv))


def test_torchrun_tutorial_line_runs_under_the_launcher(tmp_path):
    line = next(ln for ln in LINES["docs/tutorials/distributed.md"] if ln.torchrun and not ln.tags)
    argv = shrink(line.argv)
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", SPECTRASCOPE_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "-m", "spectrascope.cli", *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert '"world_size": 2' in next(tmp_path.rglob("results.json")).read_text()


def test_the_pages_have_command_lines():
    """The parser finds the lines (a change of the block syntax must not silence this test)."""
    assert sum(len(v) for v in LINES.values()) > 50
    assert all(set(ln.tags) <= set(TAGS) for v in LINES.values() for ln in v)


def test_python_blocks_compile():
    """Every ```python block of the pages is valid Python."""
    for page in PAGES:
        for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S):
            if block.lstrip().startswith("--8<--"):
                continue
            ast.parse(block, filename=str(page))
