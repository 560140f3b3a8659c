"""③ Fuse's Export report button: the chosen variant's report comes back as a downloadable HTML file."""

from __future__ import annotations

from pathlib import Path


def test_export_report_gives_a_downloadable_html_file(client, app_server):
    _, ctx = app_server
    studio = ctx.studio
    if "graft-ui-report" not in studio.variants:
        studio.fuse(studio.build_recipe("graft", ["math-lora", "code-lora"]), "graft-ui-report")

    update, msg = client.predict("graft-ui-report", api_name="/export_report")
    assert "Report of **graft-ui-report**" in msg
    path = Path(update["value"] if isinstance(update, dict) else update)  # the client's downloaded copy
    assert path.suffix == ".html" and path.is_file()
    text = path.read_text()
    assert "graft-ui-report: graft fusion of math-lora + code-lora" in text
    for sid in ("sec-recipe", "sec-analysis", "sec-gates", "sec-eval", "sec-answers", "sec-leaderboard"):
        assert f'<section id="{sid}"' in text

    update, msg = client.predict("", api_name="/export_report")
    assert "choose a fused variant" in msg  # nothing chosen: a sentence, no file
