"""The stakeholder report end to end on the ci zoo: sections, offline-only resources, escaping,
baselines' own statistics, and the command's errors."""

from __future__ import annotations

import re

import pytest

from tests.report.conftest import EVIL, VARIANT

SECTIONS = ["sec-summary", "sec-recipe", "sec-models", "sec-analysis", "sec-gates", "sec-eval", "sec-answers",
            "sec-leaderboard"]


def section(text: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}"[^>]*>(.*?)</section>', text, re.S)
    assert m, f"section {sid} missing"
    return m.group(1)


def test_report_has_every_section_with_its_content(report_file):
    text = report_file.read_text()
    for sid in SECTIONS:
        section(text, sid)
    recipe = section(text, "sec-recipe")
    assert "method: graft" in recipe and "name: math-lora" in recipe and "name: code-lora" in recipe
    models = section(text, "sec-models")
    assert all(n in models for n in ("base", "math-lora", "code-lora", VARIANT))
    analysis = section(text, "sec-analysis")
    assert "Compatibility on math+code (K=4)" in analysis  # the bars' figure, on the target domains
    assert analysis.count('class="plot"') >= 3  # bars + one heatmap per expert
    # the score never stands alone: accuracy on the target, what the fusion kept, the forecast, what it predicts
    assert "accuracy on target" in analysis and "kept in this fusion (measured)" in analysis and "forecast" in analysis
    assert "not acceptable" not in analysis and ("not a forecast" in analysis or "by their accuracy" in analysis)
    assert 'id="fig-' in section(text, "sec-gates") and "Graft gates" in section(text, "sec-gates")
    ev = section(text, "sec-eval")
    assert "first 4 samples of each held-out split" in ev
    for model in ("base", "math-lora", "code-lora", VARIANT):
        assert re.search(rf"<td>{re.escape(model)}</td>(<td class=\"num\">.*?</td>){{3}}", ev), model
    assert ev.count("/4</span>") == 8  # 4 models x 2 domains, n = 4 each
    answers = section(text, "sec-answers")
    assert answers.count('class="answer"') == 4  # 2 per domain
    assert 'src="data:image/png;base64,' in answers  # the math prompts' thumbnails, inline
    assert re.search(r"✓ correct|✗ incorrect", answers)
    board = section(text, "sec-leaderboard")
    assert f"<td>{VARIANT}</td>" in board and re.search(r"\d+ – \d+", board)  # intervals
    assert "Plotly.newPlot" in text and "@media print" in text


def test_report_loads_nothing_from_the_network(report_file):
    from graft_ui.report.figures import plotly_js

    text = report_file.read_text()
    # plotly.js is inlined whole: its code mentions URLs (the browser test shows it fetches none)
    js = plotly_js()
    assert text.count(js) == 1
    text = text.replace(js, "")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", text, re.I)
    assert not re.search(r"<script[^>]*\ssrc=", text, re.I) and "<link" not in text.lower()
    assert "@import" not in text


def test_user_strings_are_escaped(report_file):
    text = report_file.read_text()
    assert EVIL not in text and "<img src=x" not in text
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in section(text, "sec-leaderboard")


def test_a_baseline_shows_its_own_statistics(studio, tmp_path):
    from graft_ui.report import write_report

    v = studio.fuse(studio.build_recipe("ties", ["math-lora", "code-lora"]), "ties-report")
    out = write_report(studio.manifest, v.out_dir, tmp_path / "ties.html", k=2, limit=2, answers_per_domain=1)
    gates = section(out.read_text(), "sec-gates")
    assert "Graft gates" not in gates and "ties: kept per module" in gates
    assert "<td>kept (math-lora)</td>" in gates and "<td>nonzero</td>" in gates


def test_unknown_variant_names_the_known_ones(studio):
    from graft_ui.commands.report import variant_folder

    assert variant_folder(VARIANT, studio.work_dir) == studio.work_dir / "fused" / VARIANT
    with pytest.raises(FileNotFoundError, match=VARIANT):
        variant_folder("no-such-variant", studio.work_dir)


def test_recipe_experts_outside_the_manifest_are_refused(studio):
    import dataclasses

    from graft_ui.report.gather import recipe_experts

    recipe = studio.variant(VARIANT).recipe
    other = dataclasses.replace(studio.manifest, experts=studio.manifest.experts[2:3])  # code-lora only
    with pytest.raises(ValueError, match="math-lora"):
        recipe_experts(recipe, other)


def test_statistics_split_varying_and_constant_values():
    from graft_ui.report.figures import module_values, statistics_table

    gates = {"modules": {"m1.weight": {"kept": [0.2, 0.4], "lam": 1.0, "ok": True},
                         "m2": [{"kept": [0.1, 0.1]}, {"kept": [0.3, 0.5], "lam": 1.0}]}}
    values = module_values(gates, ["a", "b"])
    assert values == {"m1": {"kept": pytest.approx(0.3), "kept (a)": 0.2, "kept (b)": 0.4, "lam": 1.0},
                      "m2": {"kept": pytest.approx(0.4), "kept (a)": 0.3, "kept (b)": 0.5, "lam": 1.0}}
    rows, constant = statistics_table(values)
    assert [r["statistic"] for r in rows] == ["kept", "kept (a)", "kept (b)"] and constant == {"lam": 1.0}


def test_figure_script_cannot_be_closed_by_data():
    import plotly.graph_objects as go

    from graft_ui.report.figures import figure_html

    html = figure_html(go.Figure(go.Bar(x=["</script><script>alert(1)</script>"], y=[1])), "fig-x")
    assert html.count("</script>") == 1 and "alert(1)" in html and "<script>alert" not in html
