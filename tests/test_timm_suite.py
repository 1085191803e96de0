"""timm's own model test suite (``tests/test_models.py`` of the installed timm's source
distribution) on every family and every ablation flag of the zoo, through timm's entry points,
in the shrunken configurations of ``timm_suite.SHRINK`` (the same code paths, one block per stage,
64 px): each passes every test timm selects for it, and nothing is left out but ``EXCLUDE``'s
reasoned rows. ``make test-timm`` runs the full-size entry points (docs/timm.md). An offline
machine without the cached source distribution skips with the reason."""
from __future__ import annotations

from collections import Counter

import pytest

import timm_suite

#: the model tests timm's file selects for a zoo entry point (the hub-download tests list none)
STANDARD = {"test_model_default_cfgs", "test_model_forward", "test_model_backward", "test_model_forward_features",
            "test_model_forward_torchscript", "test_model_forward_fx", "test_model_backward_fx",
            "test_model_forward_fx_torchscript"}
#: token models (``NON_STD``): timm's non-standard config test, no plain features test (as its ViTs)
TOKEN = STANDARD - {"test_model_default_cfgs", "test_model_forward_features"} | {"test_model_default_cfgs_non_std"}


def test_timm_model_suite_on_every_family_and_ablation_flag(tmp_path):
    from spectrascope.compat import timm_available
    if not timm_available():
        pytest.skip("timm is not installed (optional extra 'timm')")
    models = ["spectrascope_" + m for m in timm_suite.REPRESENTATIVE]
    res = timm_suite.run(models, tmp_path, shrink=True)
    if "unavailable" in res:
        pytest.skip(res["unavailable"])
    assert not res["failures"], "\n".join(f"{t}: {m}" for t, m in res["failures"][:10])
    ran = Counter()
    for case in res["cases"]:
        test, params = case.split("[", 1)
        ran[(test, params.rstrip("]").split("-")[-1])] += 1
    expected = Counter()
    for m in models:
        tests = TOKEN if m.startswith("spectrascope_gfnet") else STANDARD
        expected.update((t, m) for t in tests)
    assert ran == expected
    assert res["passed"] + res["excluded"] == res["total"] == len(res["cases"])
