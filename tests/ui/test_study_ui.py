"""The app uses the fusion study and the zoo's showcase."""

import json
import shutil
from pathlib import Path

import pytest

from graft_ui.ui.context import examples_for, load_examples, load_showcase

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _showcase_zoo(tmp_path, zoo_manifest_path):
    """A folder with the ci zoo's manifest (absolute paths) plus a hand-made showcase.json."""
    from graft_ui.models.manifest import load_manifest

    zoo = tmp_path / "zoo"
    (zoo / "images").mkdir(parents=True)
    load_manifest(zoo_manifest_path).save(zoo / "manifest.yaml")
    shutil.copy(EXAMPLES / "images" / "math-shapes.png", zoo / "images" / "m1.png")
    items = [
        {"domain": "math", "label": "Math · count the dots", "text": "How many dots?", "image": "images/m1.png",
         "answer": "3", "sample_id": "math-eval-7", "correct_by": ["math-lora", "math-full"]},
        {"domain": "code", "label": "Code · add one", "text": "def inc(x):", "image": None, "answer": "return x + 1",
         "sample_id": "code-eval-2", "correct_by": ["code-lora"]},
    ]
    (zoo / "showcase.json").write_text(json.dumps(items))
    return zoo


def test_showcase_replaces_the_stock_examples(tmp_path, zoo_manifest_path):
    from graft_ui.ui.app import build_app, make_context

    zoo = _showcase_zoo(tmp_path, zoo_manifest_path)
    got = load_showcase(zoo)
    assert [e["label"] for e in got] == ["Math · count the dots", "Code · add one"]
    assert got[0]["image"] == str((zoo / "images" / "m1.png").resolve()) and got[1]["image"] is None
    assert got[0]["correct_by"] == ["math-lora", "math-full"] and got[1]["answer"] == "return x + 1"
    assert examples_for(zoo / "manifest.yaml") == got
    assert examples_for(tmp_path) == load_examples()  # no showcase: examples/prompts.json

    ctx = make_context(zoo / "manifest.yaml", device="cpu", work_dir=tmp_path / "work")
    try:
        assert [e["label"] for e in ctx.examples] == ["Math · count the dots", "Code · add one"]
        assert ctx.check_image(got[0]["image"])  # a showcase image is accepted as a chat input
        config = json.dumps(build_app(ctx).config, default=str, ensure_ascii=False)
        # both the Chat and the Arena example lists show the showcase labels, not the stock ones
        assert config.count("Math · count the dots") >= 2 and "Code · complete a function" not in config
    finally:
        ctx.studio.close()


def test_malformed_showcase_is_refused_by_name(tmp_path):
    (tmp_path / "showcase.json").write_text(json.dumps([{"label": "x", "image": None}]))
    with pytest.raises(ValueError, match="example 0 needs a non-empty 'text'"):
        load_showcase(tmp_path)
    (tmp_path / "showcase.json").write_text(json.dumps([{"text": "q", "image": "images/missing.png"}]))
    with pytest.raises(ValueError, match="missing.png"):
        load_showcase(tmp_path)
    assert examples_for(tmp_path / "manifest.yaml") == load_examples()  # the app still starts


@pytest.fixture
def zoo_study(zoo_manifest_path):
    """A hand-made study of the ci zoo (matching fingerprint) at <zoo>/study/study.json, removed afterwards."""
    from graft_ui.study.lookup import zoo_fingerprint

    zoo = Path(zoo_manifest_path).parent
    path = zoo / "study" / "study.json"
    path.parent.mkdir(exist_ok=True)
    study = {"zoo": {"fingerprint": zoo_fingerprint(zoo)}, "pairs": [
        {"a": "math-lora", "b": "code-lora", "pair_score": 0.05, "gain_graft": -30.0, "gain_best": 1.5,
         "best_method": "task_arithmetic", "predicted_gain": -12.0},
        {"a": "math-lora", "b": "finance-lora", "pair_score": 0.4, "gain_graft": None, "predicted_gain": 2.5}]}
    path.write_text(json.dumps(study))
    yield study
    path.unlink()


def test_analyze_shows_gain_and_fuse_warns(client, zoo_study):
    out = client.predict("math", None, ["math-lora", "code-lora", "finance-lora"], 2, 1e-3, 0.2,
                         api_name="/run_analysis")
    pairs = out[2]
    assert pairs["headers"] == ["pair", "score", "pass", "gain (study)"]
    cells = {r[0]: r[3] for r in pairs["data"]}
    assert cells["math-lora + code-lora"] == "-30.0 (measured)"
    assert cells["math-lora + finance-lora"] == "+2.5 (predicted)"
    assert cells["code-lora + finance-lora"] == "—"

    warning = client.predict(["math-lora", "code-lora"], api_name="/fuse_warning")
    assert "below the threshold 0.2" in warning and "loses 30.0 points" in warning
    assert "task_arithmetic does best there" in warning and "None" not in warning
    assert client.predict(["math-lora", "finance-lora"], api_name="/fuse_warning") == ""


def test_fuse_tab_shows_the_warning_in_the_browser(app_server, zoo_study):
    import re

    import _browser
    from playwright.sync_api import expect

    if not Path(_browser.CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed")
    with _browser.app_page(app_server[0]) as page:  # a new page: the warning is computed on load
        page.get_by_role("tab", name=re.compile("Fuse", re.I)).click()
        warning = page.locator("#gs-fuse-warning")
        expect(warning).to_contain_text("loses 30.0 points", timeout=60_000)
        expect(warning).to_contain_text("math-lora + code-lora")
        assert "None" not in warning.inner_text() and "{" not in warning.inner_text()
