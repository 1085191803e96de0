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
