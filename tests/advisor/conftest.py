"""The ci-profile zoo, built once per session (cached under $GRAFT_ZOO_DIR, see tests/conftest.py)."""

import pytest


@pytest.fixture(scope="session")
def ci_zoo():
    from graft_ui.zoo import ensure_zoo

    return ensure_zoo("ci", progress=False)


def synthetic_rows(kind="lora", methods=("task_arithmetic", "ties", "graft"), experts=7, noise=0.0):
    """Fusions whose kept_min is a known function of the preview agreement, per method (no model runs)."""
    import itertools
    import random

    rng = random.Random(0)
    names = [f"e{i}" for i in range(experts)]
    rows = []
    for (a, b), m in itertools.product(itertools.combinations(names, 2), methods):
        agree, kl = rng.random(), rng.random() * 0.1
        km = 0.2 + 0.7 * agree + 0.1 * methods.index(m) + noise * rng.gauss(0, 1)
        rows.append({"pair": f"{a}+{b}", "a": a, "b": b, "kind": kind, "method": m, "agree_min": agree,
                     "kl_max": kl, "agree_a": agree, "agree_b": agree, "kl_a": kl, "kl_b": kl, "kept_min": km,
                     "kept_a": km, "kept_b": km, "single_a": 50.0, "single_b": 60.0, "mean": 40.0})
    return rows


@pytest.fixture(scope="session")
def tiny_forecast(tmp_path_factory):
    """A fitted forecast (predictors.json) of both kinds for Graft and TIES, fitted on synthetic fusions."""
    from graft_ui.advisor import kept, report

    out = tmp_path_factory.mktemp("forecast")
    rows = synthetic_rows("lora", ("graft", "ties")) + synthetic_rows("full", ("graft", "ties"))
    report.write(kept.build(rows, resamples=50), out)
    return out / "predictors.json"
