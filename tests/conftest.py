import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("SPECTRASCOPE_FIXTURES", ROOT.parent / "shared" / "fixtures"))


def fixtures_dir(sub: str = "") -> Path:
    """The reference fixtures folder (../shared/fixtures); skips the test if absent."""
    path = FIXTURES / sub
    if not path.exists():
        pytest.skip(f"reference fixtures not found at {path} (set SPECTRASCOPE_FIXTURES)")
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def _refuse_constant(token):
    raise ValueError(f"bare {token} is not JSON")


@pytest.fixture(scope="session", autouse=True)
def _every_written_result_is_strict_json(tmp_path_factory):
    """After the session: every results.json / figure.json / summary.json that a test made
    spectrascope write parses with ``json.loads`` refusing NaN/Infinity tokens."""
    import json
    yield
    base = tmp_path_factory.getbasetemp()
    bad = []
    for name in ("results.json", "figure.json", "summary.json"):
        for f in base.rglob(name):
            if any(part.startswith(".") for part in f.relative_to(base).parts):
                continue                      # staging folders of interrupted runs are not results
            try:
                json.loads(f.read_text(), parse_constant=_refuse_constant)
            except (ValueError, UnicodeDecodeError) as exc:
                bad.append(f"{f}: {exc}")
    assert not bad, "results that are not strict JSON:\n" + "\n".join(bad[:10])
