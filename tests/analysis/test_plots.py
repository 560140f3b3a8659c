"""Figures build from a small synthetic result with the expected axes, shapes and hover text."""

from __future__ import annotations

import json

import numpy as np
import plotly.graph_objects as go
import pytest

from graft_ui.analysis import plots
from graft_ui.analysis.analyze import AnalysisResult, ExpertAnalysis, pair_rows
from graft_ui.analysis.stats import ActivationStats, ModuleStats

TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def name(layer, t):
    block = "self_attn" if t in TYPES[:4] else "mlp"
    return f"model.language_model.layers.{layer}.{block}.{t}"


def synthetic(n_layers=3, seed=0, vision=False, expert="e1", kind="lora"):
    rng = np.random.default_rng(seed)
    mods = {}
    for layer in range(n_layers):
        for t in TYPES:
            mods[name(layer, t)] = ModuleStats(name(layer, t), mu=float(rng.uniform(0.1, 1)),
                                               s=float(rng.uniform(0, 0.5)), v=float(rng.uniform(0.01, 2)))
    if vision:
        n = "model.visual.blocks.0.attn.qkv"
        mods[n] = ModuleStats(n, mu=0.5, s=0.1, v=0.3)
    st = ActivationStats(source="adapter", eps=1e-3, k=4, modules=mods, sample_ids=["a", "b", "c", "d"])
    return ExpertAnalysis.from_stats({"name": expert, "kind": kind, "domain": "math"}, st, 0.2)


@pytest.fixture
def result():
    experts = {"e1": synthetic(seed=0, expert="e1"), "e2": synthetic(seed=1, expert="e2")}
    return AnalysisResult(dataset="math", k=4, seed=0, eps=1e-3, threshold=0.2, experts=experts,
                          pairs=pair_rows(experts, 0.2), sample_ids=["a", "b", "c", "d"])


def test_heatmap_axes_shape_and_hover(result):
    e = result.experts["e1"]
    fig = plots.sensitivity_heatmap(e)
    hm = fig.data[0]
    assert isinstance(hm, go.Heatmap)
    assert list(hm.x) == list(TYPES) and list(hm.y) == ["L0", "L1", "L2"]
    z = np.asarray(hm.z, dtype=float)
    assert z.shape == (3, 7)
    assert z[1, TYPES.index("up_proj")] == pytest.approx(e.modules[name(1, "up_proj")]["rho_n"])
    hover = hm.text[2][TYPES.index("o_proj")]
    assert name(2, "o_proj") in hover and f"mu = {e.modules[name(2, 'o_proj')]['mu']:.4f}" in hover
    assert fig.layout.height >= 320 and fig.layout.xaxis.title.text == "module type"
    assert fig.layout.yaxis.title.text == "layer"


def test_heatmap_with_vision_rows_and_missing_cells():
    e = synthetic(n_layers=2, vision=True)
    fig = plots.sensitivity_heatmap(e)
    hm = fig.data[0]
    assert list(hm.y) == ["V0", "L0", "L1"] and list(hm.x)[-1] == "vis.qkv"
    z = np.asarray(hm.z, dtype=float)
    assert z.shape == (3, 8) and np.isnan(z[0, 0]) and not np.isnan(z[0, 7])


def test_difference_view(result):
    a, b = result.experts["e1"], result.experts["e2"]
    fig = plots.sensitivity_difference(a, b)
    z = np.asarray(fig.data[0].z, dtype=float)
    n = name(0, "q_proj")
    assert z[0, 0] == pytest.approx(a.modules[n]["rho_n"] - b.modules[n]["rho_n"])
    assert fig.data[0].zmid == 0.0 and "e1 − e2" in fig.layout.title.text


def test_compatibility_bars_with_threshold(result):
    fig = plots.compatibility_bars(result, 0.2)
    bar = fig.data[0]
    assert list(bar.x) == ["e1", "e2"]
    assert list(bar.y) == pytest.approx([result.experts["e1"].compatibility, result.experts["e2"].compatibility])
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert len(lines) == 1 and lines[0].y0 == lines[0].y1 == 0.2
    assert "score = " in bar.hovertext[0] and fig.layout.height == 420


def test_gate_maps_from_gates_json(tmp_path):
    mods = {name(l, t): {"w_glob": 0.5 + 0.01 * l, "wb_mean": 0.4 + 0.02 * i, "alpha": 1.0, "beta": 0.0}
            for l in range(2) for i, t in enumerate(TYPES)}
    (tmp_path / "gates.json").write_text(json.dumps({"method": "graft", "modules": mods}))
    fig = plots.gate_maps(tmp_path)
    assert len(fig.data) == 2
    wg, wb = (np.asarray(d.z, dtype=float) for d in fig.data)
    assert wg.shape == wb.shape == (2, 7)
    assert wg[1, 0] == pytest.approx(0.51) and wb[0, 6] == pytest.approx(0.52)
    assert "w_glob = 0.5100" in fig.data[0].text[1][0]
    with pytest.raises(ValueError, match="w_glob"):
        plots.gate_maps({"modules": {name(0, "q_proj"): {"other": 1.0}}})


def test_correlation_scatter():
    rows = [{"a": "x", "b": "y", "score": 0.3, "gain": 1.5}, {"a": "x", "b": "z", "score": 0.2, "gain": -0.5}]
    fig = plots.correlation_scatter(rows, rho=1.0, p=0.0)
    assert list(fig.data[0].x) == [0.3, 0.2] and list(fig.data[0].y) == [1.5, -0.5]
    assert "Spearman" in fig.layout.title.text


def test_analysis_figures_and_save(result, tmp_path):
    figs = plots.analysis_figures(result)
    assert set(figs) == {"heatmap-e1", "heatmap-e2", "diff-e1-vs-e2", "compatibility", "pairs"}
    files = plots.save_figures(figs, tmp_path, png=False)
    assert {f.name for f in files} == {f"{k}.html" for k in figs}
    assert (tmp_path / "plotly.min.js").is_file()  # figures work offline
    assert AnalysisResult.from_dict(json.loads(json.dumps(result.to_dict()))).to_dict() == result.to_dict()


def test_gate_maps_have_one_labelled_scale_each_and_baselines_their_stats(tmp_path):
    from graft_ui.analysis.gate_plots import fusion_view

    mods = {name(l, t): {"w_glob": 0.45 + 0.01 * l, "wb_mean": 0.4 + 0.02 * i}
            for l in range(2) for i, t in enumerate(TYPES)}
    fig, guide = fusion_view({"method": "graft", "modules": mods}, "graft", ["m", "c"])
    scales = [d.colorbar for d in fig.data if d.showscale]
    assert len(scales) == 2 and scales[0].x != scales[1].x
    assert all("expert 1" in s.title.text for s in scales) and "How to read" in guide and "(m)" in guide
    ties = {name(l, t): {"kept": [0.2, 0.3], "nonzero": 0.35, "lam": 1.0} for l in range(2) for t in TYPES}
    fig, text = fusion_view({"method": "ties", "modules": ties}, "ties", ["m", "c"])
    assert fig is not None and "kept fraction" in text and "m 20.0%, c 30.0%" in text
    fig, text = fusion_view({"method": "average", "modules": {name(0, "q_proj"): {"lam": 1.0}}}, "average")
    assert fig is None and "no per-module statistic" in text
