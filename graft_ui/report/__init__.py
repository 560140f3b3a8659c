"""The stakeholder report: one self-contained HTML file about one fused variant.

    from graft_ui.report import write_report
    write_report(manifest, "runs/studio/fused/graft-1", "graft-1-report.html", votes=store.votes())

It holds the recipe, base and experts, compatibility bars and sensitivity heatmaps on the
target data, the gate maps (a baseline: its own per-module statistics), held-out accuracy
of base, experts and the fused model, side-by-side answers, and the current leaderboard.
Nothing in it is fetched from the network (plotly.js and images are inline), and it has a
print stylesheet for PDF. `gather` computes, `html.render` writes the page.
"""

from __future__ import annotations

import logging
from pathlib import Path

from graft_ui.atomic import write_bytes
from graft_ui.report.gather import ReportData, gather
from graft_ui.report.html import render

log = logging.getLogger(__name__)

__all__ = ["ReportData", "gather", "render", "write_report"]


def write_report(manifest, folder: str | Path, out: str | Path, **kwargs) -> Path:
    """Gather the report of the variant in `folder` (keyword arguments: `gather`'s) and write it to `out`."""
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"report file {str(out)!r} should end in .html")
    data = gather(manifest, folder, **kwargs)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(out, render(data).encode("utf-8"), mode=0o644)
    log.info("wrote the report of %s to %s", data.name, out)
    return out
