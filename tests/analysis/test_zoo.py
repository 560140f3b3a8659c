"""Scores on the demo zoo's ci profile are deterministic for a fixed seed and K."""

from __future__ import annotations

import pytest

from graft_ui.analysis.analyze import analyze_experts


@pytest.mark.slow
def test_zoo_scores_deterministic(ci_zoo):
    from graft_ui.models.manifest import load_manifest

    m = load_manifest(ci_zoo)
    lora = [e.name for e in m.experts if e.kind == "lora"][:2]
    full = [e.name for e in m.experts if e.kind == "full"][:1]
    domain = m.expert(lora[0]).domain
    a = analyze_experts(m, lora + full, domain, k=4, seed=3, device="cpu")
    b = analyze_experts(m, lora + full, domain, k=4, seed=3, device="cpu")
    assert a.to_dict() == b.to_dict()
    assert a.experts[lora[0]].stats.source == "adapter" and a.experts[full[0]].stats.source == "output"
    n_layers = len({e["layer"] for e in a.to_dict()["experts"][lora[0]]["modules"].values()})
    assert len(a.experts[lora[0]].modules) == 7 * n_layers
    c = analyze_experts(m, lora[:1], domain, k=4, seed=4, device="cpu")
    assert c.sample_ids != a.sample_ids  # another seed, other samples
