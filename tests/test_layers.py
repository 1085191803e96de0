"""The shape of the package, as tests: imports only go downward through the layers (function-level
imports counted), no import cycles, hooks only in the probe layer, one ``init_process_group``, no
function over 80 lines outside models/, and an opening docstring in every module."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"spectrascope": ROOT / "spectrascope", "spectrascope.models": ROOT / "models",
           "spectrascope.analyses": ROOT / "analyses"}

#: the layers from the bottom up; a module may import its own layer and the layers below it
LAYERS = [
    ("spectrascope.errors", "spectrascope.compat", "spectrascope.probe.spec"),
    ("spectrascope.models",),
    ("spectrascope.zoo",),
    ("spectrascope.probe",),
    ("spectrascope.ops",),
    ("spectrascope.engine",),
    ("spectrascope.io",),
    ("spectrascope.report", "spectrascope.train"),
    ("spectrascope.seam",),
    ("spectrascope.analyses",),
    ("spectrascope.recipes",),
    ("spectrascope.cli", "spectrascope.__init__", "spectrascope.__main__"),
]


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg, folder in FOLDERS.items():
        for f in sorted(folder.rglob("*.py")):
            rel = f.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts]
            if pkg == "spectrascope" and parts[0] in ("models", "analyses"):
                continue
            name = ".".join([pkg, *parts])
            name = name[: -len(".__init__")] if name.endswith(".__init__") and name != "spectrascope.__init__" \
                else name
            mods[name] = f
    return mods


MODULES = _modules()


def _layer(name: str) -> int:
    best, rank = -1, None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    assert rank is not None, f"{name} is in no layer"
    return rank


def _imports(name: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:
                t = t.rsplit(".", 1)[0] if "." in t else ""
            if t and t != name and t.startswith("spectrascope"):
                out.add(t)
    return out


GRAPH = {n: _imports(n, p) for n, p in MODULES.items()}


def test_every_module_is_in_a_layer_and_imports_only_downward():
    wrong = [f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
             for a, deps in GRAPH.items() for b in deps
             if _layer(b) > _layer(a) and not (a == "spectrascope.__init__" or a.endswith("__init__"))]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(GRAPH.get(n, ())):
            if m.endswith("__init__") or m == "spectrascope":
                continue
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(GRAPH):
        if n not in state:
            visit(n)
    assert not cycles, cycles[:3]


def _calls(path: Path, attr: str) -> bool:
    tree = ast.parse(path.read_text())
    return any(isinstance(n, ast.Attribute) and n.attr == attr for n in ast.walk(tree))


@pytest.mark.parametrize("attr", ["register_forward_hook", "register_forward_pre_hook", "register_hook",
                                  "register_full_backward_hook"])
def test_hooks_are_installed_only_by_the_probe(attr):
    users = [n for n, p in MODULES.items() if _calls(p, attr)]
    assert all(n.startswith("spectrascope.probe.") for n in users), users


def test_one_process_group_initialisation():
    users = [n for n, p in MODULES.items() if _calls(p, "init_process_group")]
    assert users == ["spectrascope.engine.dist"], users


def test_no_function_over_80_lines_outside_models():
    long = []
    for n, p in MODULES.items():
        if n.startswith("spectrascope.models"):
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 80:
                    long.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, long


def test_every_module_says_what_it_holds():
    missing = [str(p.relative_to(ROOT)) for p in MODULES.values()
               if p.read_text().strip() and not ast.get_docstring(ast.parse(p.read_text()))]
    assert not missing, missing


def test_pure_maths_has_no_hooks_io_or_model_imports():
    for n, deps in GRAPH.items():
        if n.startswith("spectrascope.ops"):
            assert not [d for d in deps if d.startswith(("spectrascope.models", "spectrascope.io",
                                                         "spectrascope.probe.probe"))], (n, deps)
