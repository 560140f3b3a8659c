"""③ Fuse → Tune on target data → Attach: a shared study that workers elsewhere fill is drawn live."""

import re

import pytest

from _browser import ARTIFACTS, MARKS, app_page


@pytest.mark.parametrize("_", [0], ids=["browser"])
@MARKS[0]
@MARKS[1]
@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the test plays the worker with ask/tell
def test_attach_draws_a_shared_study_as_its_trials_finish(app_server, _):
    import optuna
    from playwright.sync_api import expect

    from graft_ui.tune import shared

    url, ctx = app_server
    path = str(ctx.studio.work_dir / "shared-tune.journal")  # the app's work dir is an allowed folder
    spec = {"dims": [{"name": "a"}], "dev_domains": ["math", "code"], "trials": 4}
    study, _ = shared.join_study(shared.open_storage(path), "live", spec, seed=0, defaults={"a": 0.4})

    def worker_finishes(math, code):
        t = study.ask({"a": optuna.distributions.FloatDistribution(0, 1)})
        t.set_user_attr("dev", {"math": math, "code": code})
        t.set_user_attr("worker", "elsewhere:1")
        study.tell(t, (math + code) / 2)

    worker_finishes(50.0, 30.0)
    expect.set_options(timeout=60_000)
    with app_page(url) as page:
        page.get_by_role("tab", name=re.compile("Fuse")).click()
        page.locator("#gs-tune").get_by_text("Tune on target data").click()
        page.locator("#gs-tune-storage").get_by_role("textbox").fill(path)
        page.locator("#gs-tune-study").get_by_role("textbox").fill("live")
        page.locator("#gs-tune-attach").click()
        progress = page.locator("#gs-tune-progress")
        expect(progress).to_contain_text("shared study live: trial 1 / 4 finished")
        expect(page.locator("#gs-tune-pareto .js-plotly-plot")).to_be_visible()
        worker_finishes(70.0, 60.0)  # while the page watches: the 5 s timer picks it up, no click
        expect(progress).to_contain_text("trial 2 / 4 finished", timeout=30_000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.locator("#gs-tune").screenshot(path=str(ARTIFACTS / "ui-tune-attach.png"))
        page.locator("#gs-tune-detach").click()
        page.locator("#gs-tune-storage").get_by_role("textbox").fill("/etc/passwd")
        page.locator("#gs-tune-attach").click()  # a server path outside the allowed folders is refused
        expect(page.locator("#gs-tune-result")).not_to_be_empty()
