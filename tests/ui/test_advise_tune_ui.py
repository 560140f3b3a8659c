"""The merge advisor on ② Analyze and tuning on ③ Fuse: API and browser."""

import itertools
import json
import re
import time

import pytest

from _browser import ARTIFACTS, MARKS, app_page

LORA = ["math-lora", "code-lora", "finance-lora", "medical-lora"]


@pytest.fixture
def ci_study(zoo_manifest_path, tmp_path, monkeypatch):
    """A hand-made study of the ci zoo (its fingerprint, its LoRA experts), pointed to by $GRAFT_ADVISOR_STUDY."""
    from graft_ui.advisor import source
    from graft_ui.study.lookup import zoo_fingerprint

    singles = {e: {d: (40.0 if e.startswith(d) else 5.0) for d in ("math", "code", "finance", "medical")} for e in LORA}
    pairs = [{"pair": f"{a}+{b}", "a": a, "b": b, "kind": "lora", "pair_score": 0.1 + 0.05 * i,
              "tv_cosine": 0.02 * i, "best_single": 40.0, "gain_graft": -8.0 + 3.0 * i}
             for i, (a, b) in enumerate(itertools.combinations(LORA, 2))]
    study = {"pairs": pairs, "singles": singles, "zoo": {"fingerprint": zoo_fingerprint(zoo_manifest_path)}}
    path = tmp_path / "study.json"
    path.write_text(json.dumps(study))
    monkeypatch.setenv(source.ENV, str(path))
    return path


@pytest.fixture
def forecast(tmp_path, monkeypatch):
    """A kept-fraction forecast for Graft only (fitted on synthetic fusions), pointed to by $GRAFT_FORECAST."""
    from _forecast import write_forecast

    from graft_ui.advisor import kept

    path = write_forecast(tmp_path / "forecast", methods=("graft",))
    monkeypatch.setenv(kept.ENV, str(path))
    return path


def test_advise_endpoint_returns_a_kept_heatmap_and_names_pair_and_method(client, forecast):
    out = client.predict(["math", "code"], "lora", "best method", 2, api_name="/advise")  # States stay server-side
    heat, rec, note = out[:3]
    assert re.match(r"⚠ Fuse (math|code|finance|medical)-lora \+ (math|code|finance|medical)-lora with graft:", rec)
    assert "predicted kept_min" in rec and "weak forecast" in rec  # synthetic and untransferred: labelled weak
    assert "leave-one-expert-out over 21 pairs" in note and "pooled ρ" in note
    fig = json.loads(heat["plot"]) if isinstance(heat, dict) and "plot" in heat else heat
    assert "preview agreement" in json.dumps(fig)  # the hover text


def test_advise_without_a_forecast_says_so(client, monkeypatch, tmp_path):
    from graft_ui.advisor import kept

    monkeypatch.setenv(kept.ENV, str(tmp_path / "absent.json"))
    out = client.predict(["math"], "lora", "best method", 2, api_name="/advise")
    assert "no fitted forecast" in out[1]


@pytest.mark.parametrize("_", [0], ids=["browser"])
@MARKS[0]
@MARKS[1]
def test_preview_merge_runs_on_the_target_prompts_with_progress_and_stop(app_server, forecast, _):
    from playwright.sync_api import expect

    expect.set_options(timeout=180_000)
    with app_page(app_server[0]) as page:
        page.get_by_role("tab", name=re.compile("Analyze")).click()
        pair = page.locator("#gs-preview-pair input")
        pair.fill("math-lora + code-lora")
        pair.press("Enter")
        page.locator("#gs-preview-run").click()
        expect(page.locator("#gs-preview-result")).to_contain_text("fused with", timeout=300_000)
        text = page.locator("#gs-preview-result").inner_text()
        assert re.search(r"answers exactly as math-lora on \d+/16", text) and "KL" in text
        ARTIFACTS.mkdir(exist_ok=True)
        page.locator("#gs-advise").screenshot(path=str(ARTIFACTS / "ui-preview.png"))
        # Stop while a preview runs (or waits): it ends stopped or done, never hangs, and leaves no set event
        page.locator("#gs-preview-run").click()
        page.locator("#gs-preview-stop").click()
        expect(page.locator("#gs-preview-result")).to_contain_text(re.compile("Preview stopped|fused with"))
        # the box may still show the first preview while the stopped one waits in the queue: give it time to end
        deadline = time.monotonic() + 120
        while [k for k, ev in app_server[1]._stops.items() if ev.is_set()] and time.monotonic() < deadline:
            time.sleep(0.5)
    assert not [k for k, ev in app_server[1]._stops.items() if ev.is_set()]


@pytest.mark.parametrize("_", [0], ids=["browser"])
@MARKS[0]
@MARKS[1]
def test_heatmap_hand_off_and_a_short_tuning_run_with_stop(app_server, ci_study, forecast, _):
    from playwright.sync_api import expect

    expect.set_options(timeout=180_000)
    with app_page(app_server[0]) as page:
        page.get_by_role("tab", name=re.compile("Analyze")).click()
        page.locator("#gs-advise-run").click()
        expect(page.locator("#gs-advise-heatmap .js-plotly-plot")).to_be_visible()
        expect(page.locator("#gs-advise-rec")).to_contain_text("Fuse ")
        ARTIFACTS.mkdir(exist_ok=True)
        page.locator("#gs-advise").screenshot(path=str(ARTIFACTS / "ui-advise.png"))
        rec = page.locator("#gs-advise-rec").inner_text()
        a, b = re.search(r"Fuse (\S+) \+ (\S+) with graft:", rec).groups()
        page.locator("#gs-advise-send").click()
        # the Fuse tab opens with the recommended pair, for Graft
        expect(page.locator("#gs-fuse-experts")).to_contain_text(a)
        expect(page.locator("#gs-fuse-experts")).to_contain_text(b)
        expect(page.locator("#gs-fuse-run")).to_be_visible()

        page.locator("#gs-tune").get_by_text("Tune on target data").click()
        budget = page.locator("#gs-tune-budget input")
        budget.fill("600")
        budget.press("Tab")
        page.locator("#gs-tune-start").click()
        expect(page.locator("#gs-tune-progress")).to_contain_text(re.compile(r"trial [1-9]\d* / 40"))
        page.locator("#gs-tune-stop").click()
        expect(page.locator("#gs-tune-result")).to_contain_text("Kept the best trial as", timeout=300_000)
        result = page.locator("#gs-tune-result").inner_text()
        assert "stopped by the user" in result and "defaults (trial 0)" in result
        # no target domains picked: the tuner used the handed-off experts' own domains
        assert f"held-out mean over {a.split('-')[0]}+{b.split('-')[0]}" in result
        expect(page.locator("#gs-tune-pareto .js-plotly-plot")).to_be_visible()
        expect(page.locator("#gs-variants")).to_contain_text("tuned-graft-1")
        page.locator("#gs-tune").screenshot(path=str(ARTIFACTS / "ui-tune.png"))
    # the stopped search is over: its Stop event is gone, so the next search does not start stopped
    assert not [k for k, ev in app_server[1]._stops.items() if ev.is_set()]
    studio = app_server[1].studio
    assert studio.variants["tuned-graft-1"].recipe.method == "graft"
    assert (studio.variants["tuned-graft-1"].out_dir / "tune" / "tune.json").is_file()
    studio.remove_variant("tuned-graft-1")  # the session's app is shared: leave it as it was
