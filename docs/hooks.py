"""Build hooks of the documentation site (mkdocs ``hooks:``).

The package installs ``analyses/`` and ``models/`` as ``spectrascope.analyses`` and
``spectrascope.models`` (``package-dir`` in pyproject.toml). The API reference reads the
sources statically (griffe), which follows directories, not install mappings, so the build
first lays out the package as it is installed: ``build/docs-src/spectrascope`` with links to
the real files.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from mkdocs.plugins import event_priority

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / "build" / "docs-src"
MAPPED = {"analyses": ROOT / "analyses", "models": ROOT / "models"}


def _link_tree(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        if entry.name == "__pycache__":
            continue
        os.symlink(entry, dst / entry.name, target_is_directory=entry.is_dir())


@event_priority(100)   # before mkdocstrings reads its handler paths (it drops paths that do not exist)
def on_config(config, **kwargs):
    """Lay out ``build/docs-src/spectrascope`` (the installed package's shape) before any page is read."""
    if TREE.exists():
        shutil.rmtree(TREE)
    pkg = TREE / "spectrascope"
    _link_tree(ROOT / "spectrascope", pkg)
    for name, src in MAPPED.items():
        os.symlink(src, pkg / name, target_is_directory=True)
    return config
