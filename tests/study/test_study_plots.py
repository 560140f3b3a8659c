"""The study's figures share one plotly.js: studies written side by side hold no copy each, and
their pages (and the committed study's) still draw offline."""

import subprocess
from pathlib import Path

import plotly.graph_objects as go
import pytest

from graft_ui.study import plots

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


def _figs():
    return {"one": go.Figure(go.Scatter(x=[0, 1], y=[1, 0]))}


def test_studies_side_by_side_share_one_plotly_js(tmp_path):
    old = tmp_path / "b" / "plotly.min.js"  # a study written before pages shared the file
    old.parent.mkdir()
    old.write_text("// old copy")
    for study in ("a", "b"):
        files = plots.save(_figs(), tmp_path / study, png=False)
        assert [f.name for f in files] == ["one.html"]
        assert 'src="../plotly.min.js"' in files[0].read_text()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("plotly.min.js")) == ["plotly.min.js"]
    assert (tmp_path / "plotly.min.js").stat().st_size > 1_000_000


def _draws(page: Path) -> bool:
    browser = plots.chromium()
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=8000",
                          "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True, timeout=120).stdout
    return 'class="main-svg"' in dom  # plotly drew the figure: its script loaded


@pytest.mark.skipif(plots.chromium() is None, reason="no chromium to load the pages")
def test_pages_draw_offline_from_the_shared_copy(tmp_path):
    plots.save(_figs(), tmp_path / "a", png=False)
    assert _draws(tmp_path / "a" / "one.html")
    committed = sorted(RESULTS.glob("*/*.html"))
    assert committed and (RESULTS / "plotly.min.js").is_file()
    assert not list(RESULTS.glob("*/plotly.min.js"))
    assert _draws(committed[0])
