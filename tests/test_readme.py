"""The README and the zoo page stay true: the zoo table of docs/zoo.md equals the registry, and
the README stays an overview (at most 400 lines; the details live in docs/). Its command lines
run in tests/test_docs.py with the documentation's."""
import re
from pathlib import Path

import spectrascope

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ZOO = ROOT / "docs" / "zoo.md"


def test_zoo_table_matches_the_registry():
    text = ZOO.read_text()
    table = text[text.index("<!-- zoo-table:start -->"):text.index("<!-- zoo-table:end -->")]
    rows = re.findall(r"^\| `([a-z0-9_]+)` \| ([a-z_0-9]+) \| ([0-9.]+)M \|", table, flags=re.M)
    assert {name for name, _, _ in rows} == set(spectrascope.list_models()), \
        "docs/zoo.md zoo table is out of date (spectrascope models --markdown)"
    for name, family, params in rows:
        card = spectrascope.get_card(name)
        assert float(params) == round(card.params / 1e6, 2), name
        assert family == card.family, name


def test_readme_is_an_overview():
    lines = README.read_text().splitlines()
    assert len(lines) <= 400, f"README.md has {len(lines)} lines; move details to docs/"
    links = re.findall(r"\]\(((?:docs/|CONTRIBUTING)[^)#]*)", README.read_text())
    missing = sorted({link for link in links if not (ROOT / link).exists()})
    assert not missing, f"README links to files that do not exist: {missing}"
