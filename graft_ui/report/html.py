"""The report as one self-contained HTML page: inline CSS, inline plotly.js, images as data: URIs.

Every string that comes from a user, a model, a dataset or a vote goes through `esc`
(html.escape); figure data is escaped for <script> in `figures.figure_html`. Sections
carry stable ids (`sec-summary`, `sec-recipe`, ...) for navigation and tests.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from graft_ui.report import figures as F

CSS_PATH = Path(__file__).with_name("report.css")
SECTIONS = (
    ("sec-summary", "Summary"), ("sec-recipe", "Recipe"), ("sec-models", "Base and experts"),
    ("sec-analysis", "Compatibility and sensitivity"), ("sec-gates", "Gate maps"),
    ("sec-eval", "Held-out accuracy"), ("sec-answers", "Side-by-side answers"), ("sec-leaderboard", "Leaderboard"),
)
GATE_GUIDE = {
    "graft": ("Left: the global gate w_glob per module, from the entropies of the two experts' weights "
              "(0.5 = no preference). Right: the mean share of the first expert in each fused row (w_b); "
              "1 keeps the first expert, 0 the second, 0.5 an even mix. Each map uses the same 0–1 scale."),
}
BASELINE_GUIDE = ("This method has no gates: the map and the table show its own per-module statistics from the "
                  "merge (for TIES/DARE-style methods 'kept' is the fraction of each expert's entries kept, "
                  "'nonzero' the fraction left after the sign election).")


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], *, num: Sequence[int] = (),
           row_class: Sequence[str] | None = None) -> str:
    """A table from already-escaped cells; columns in `num` are right-aligned numbers."""
    ths = "".join(f'<th class="num">{h}</th>' if i in num else f"<th>{h}</th>" for i, h in enumerate(head))
    body = []
    for r, cells in enumerate(rows):
        cls = f' class="{row_class[r]}"' if row_class and row_class[r] else ""
        tds = "".join(f'<td class="num">{c}</td>' if i in num else f"<td>{c}</td>" for i, c in enumerate(cells))
        body.append(f"<tr{cls}>{tds}</tr>")
    # a wide table scrolls inside its own box on a phone instead of widening the page
    return f'<div class="tablewrap"><table><thead><tr>{ths}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _num(x: Any, spec: str = ".3f") -> str:
    return format(x, spec) if isinstance(x, (int, float)) else esc(x)


class _Figures:
    """Numbers the figure divs of one page."""

    def __init__(self):
        self.count = 0

    def html(self, fig, key: str) -> str:
        if fig is None:
            return ""
        self.count += 1
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in key)
        return F.figure_html(fig, f"fig-{self.count}-{safe}")


def _accuracy(row: Mapping, domain: str) -> tuple[float | None, str]:
    d = (row.get("domains") or {}).get(domain)
    if not d:
        return None, "—"
    return d["accuracy"], f"{d['accuracy']:.1f}% <span class=\"tag\">{d['correct']}/{d['n']}</span>"


def summary_section(data) -> str:
    rows = (data.results or {}).get("models", {})
    fused, base = rows.get(data.name, {}), rows.get(data.base.name, {})
    experts = [(e, rows.get(e.name, {})) for e in data.experts]
    best = max(experts, key=lambda x: x[1].get("mean", -1.0), default=(None, {}))
    cards = []
    if fused.get("domains"):
        cards.append((f"{fused['mean']:.1f}%", f"{esc(data.name)}: mean held-out accuracy on {esc(', '.join(data.domains))}"))
    if best[0] is not None and best[1].get("domains"):
        cards.append((f"{best[1]['mean']:.1f}%", f"best single expert ({esc(best[0].name)})"))
        if fused.get("domains"):
            gain = fused["mean"] - best[1]["mean"]
            cards.append((f"{gain:+.1f}", "points against the best single expert"))
    if base.get("domains"):
        cards.append((f"{base['mean']:.1f}%", f"base ({esc(data.base.name)})"))
    kept = []
    for e, row in experts:
        if e.domain in data.domains and row.get("domains", {}).get(e.domain) and fused.get("domains", {}).get(e.domain):
            own = row["domains"][e.domain]["accuracy"]
            got = fused["domains"][e.domain]["accuracy"]
            kept.append(f"{esc(e.domain)}: {got:.1f}% fused vs {own:.1f}% for {esc(e.name)}")
    html_cards = "".join(f'<div class="card"><div class="big">{esc(big)}</div><div class="label">{label}</div></div>'
                         for big, label in cards)
    extra = f'<p class="note">On each expert\'s own domain: {"; ".join(kept)}.</p>' if kept else ""
    return f'<div class="cards">{html_cards}</div>{extra}'


def kept_by_expert(data) -> dict[str, str]:
    """{expert: "0.94 (code: 83.3% fused vs 88.3%)"}: the fused accuracy on the expert's own domain over its own."""
    rows = (data.results or {}).get("models", {})
    fused = rows.get(data.name, {})
    out = {}
    for e in data.experts:
        own, got = _accuracy(rows.get(e.name, {}), e.domain)[0], _accuracy(fused, e.domain)[0]
        if own and got is not None:
            out[e.name] = f"{got / own:.2f} ({e.domain}: {got:.1f}% fused vs {own:.1f}%)"
    return out


def _target_accuracy(data, expert: str) -> str:
    row = (data.results or {}).get("models", {}).get(expert, {})
    return f"{row['mean']:.1f}%" if row.get("domains") else "—"


def recipe_section(data) -> str:
    return (f'<p class="guide">The recipe reproduces this fusion: <code>python -m graft_ui merge recipe.yaml --out DIR</code>.</p>'
            f"<pre><code>{esc(data.recipe.to_yaml())}</code></pre>")


def models_section(data) -> str:
    rows = [[esc(data.base.name), "base", esc(data.base.kind), "—", esc(data.base.path)]]
    for i, e in enumerate(data.experts, 1):
        rows.append([esc(e.name), f"expert {i}", esc(e.kind), esc(e.domain or "—"), esc(e.path)])
    rows.append([esc(data.name), "fused", esc(data.recipe.method), esc(" + ".join(data.domains)), esc(data.folder)])
    order = " → ".join(esc(e.name) for e in data.experts)
    return (f'<p class="guide">Fusion order: {order} (method <b>{esc(data.recipe.method)}</b>).</p>'
            + _table(["model", "role", "kind / method", "domain", "folder"], rows,
                     row_class=[""] * (len(rows) - 1) + ["fused"]))


def analysis_section(data, figs: _Figures) -> str:
    res = data.analysis
    if res is None:
        return '<p class="note">No analysis: see the notes at the end.</p>'
    parts = [f'<p class="guide">Activation statistics of each expert on K={res.k} samples of <b>{esc(res.dataset)}</b>. '
             f"Compatibility is the mean normalised sensitivity ρ′; bars below the threshold {res.threshold:g} are grey. "
             "Heatmaps show ρ′ per module (rows: layers, columns: module types). Beside each score: the expert's "
             "held-out accuracy on the target, what this fusion kept of it (measured), and the forecast.</p>"]
    if data.score_statement:
        parts.append(f'<p class="note">{esc(data.score_statement)}</p>')
    kept = kept_by_expert(data)
    rows = [[esc(r["expert"]), esc(r["kind"]), esc(r["domain"] or "—"), _num(r["compatibility"], ".4f"),
             "yes" if r["acceptable"] else "no", _target_accuracy(data, r["expert"]), esc(kept.get(r["expert"], "—")),
             esc((data.forecast.get(r["expert"]) or {}).get("forecast", "—"))] for r in res.table()]
    parts.append(_table(["expert", "kind", "domain", "compatibility", f"above {res.threshold:g}", "accuracy on target",
                         "kept in this fusion (measured)", "forecast"], rows, num=(3, 5)))
    for key, fig in F.analysis_figures(data).items():
        parts.append(figs.html(fig, key))
    return "".join(parts)


def gates_section(data, figs: _Figures) -> str:
    if not data.gates:
        return '<p class="note">This variant\'s folder has no gates.json.</p>'
    parts = [f'<p class="guide">{esc(GATE_GUIDE.get(data.recipe.method, BASELINE_GUIDE))}</p>',
             figs.html(F.gate_figure(data), "gates")]
    rows, constant = F.statistics_table(F.module_values(data.gates, [e.name for e in data.experts]))
    if rows:
        parts.append("<h3>Per-module statistics of the merge</h3>")
        parts.append(_table(["statistic", "mean", "min", "max", "modules"],
                            [[esc(r["statistic"]), _num(r["mean"], ".4g"), _num(r["min"], ".4g"), _num(r["max"], ".4g"),
                              str(r["modules"])] for r in rows], num=(1, 2, 3, 4)))
    if constant:
        # a per-expert entry ("ranks (math-lora)") says nothing more when the list's mean is constant too
        same = ", ".join(f"{esc(k)} = {_num(v, '.4g')}" for k, v in constant.items()
                         if not (" (" in k and k.split(" (")[0] in constant))
        parts.append(f'<p class="note">The same in every module: {same}.</p>')
    return "".join(parts)


def eval_section(data) -> str:
    res = data.results or {}
    rows = res.get("models", {})
    domains = list(res.get("domains", []))
    limit = res.get("limit")
    best = {d: max((_accuracy(rows[m], d)[0] or -1.0 for m in data.model_labels if m in rows), default=-1.0)
            for d in domains}
    body, classes = [], []
    for m in data.model_labels:
        row = rows.get(m, {})
        if row.get("error"):
            body.append([esc(m)] + ["error"] * len(domains) + [esc(row["error"])])
        else:
            cells = []
            for d in domains:
                acc, text = _accuracy(row, d)
                cells.append(f'<span class="{"best" if acc is not None and acc >= best[d] > 0 else ""}">{text}</span>')
            body.append([esc(m)] + cells + [f"{row.get('mean', 0.0):.1f}%"])
        classes.append("fused" if m == data.name else "")
    split = f"the first {limit} samples of each held-out split" if limit else "each domain's full held-out split"
    guide = (f'<p class="guide">Greedy answers, scored exactly (code: the tests run), on {esc(split)} — samples '
             "that no model trained on. The fused variant's row is highlighted; underlined = best in the column.</p>")
    return guide + _table(["model"] + [esc(d) for d in domains] + ["mean"], body,
                          num=tuple(range(1, len(domains) + 2)), row_class=classes)


def _verdict(ok: bool | None) -> str:
    if ok is None:
        return '<span class="verdict">—</span>'
    return '<span class="verdict ok">✓ correct</span>' if ok else '<span class="verdict bad">✗ incorrect</span>'


def answers_section(data) -> str:
    if not data.answers:
        return '<p class="note">No held-out answers were recorded.</p>'
    parts = ['<p class="guide">Held-out prompts where the models disagree come first. '
             "Each model's greedy answer, scored against the reference.</p>"]
    for a in data.answers:
        img = f'<img src="{esc(a.image)}" alt="{esc(a.id)} image">' if a.image else ""
        ref = f'<div class="meta">reference: <code>{esc(a.reference)}</code></div>' if a.reference is not None else ""
        rows = [[esc(m) + (' <span class="tag">fused</span>' if m == data.name else ""),
                 f"<pre>{esc(o['output']) or '<i>(empty)</i>'}</pre>", _verdict(o.get("ok"))]
                for m, o in a.outputs.items()]
        parts.append(f'<div class="answer" id="ans-{esc(a.id)}"><div class="head">{img}<div class="prompt">'
                     f'<div class="meta">{esc(a.domain)} · {esc(a.id)}</div><pre>{esc(a.prompt)}</pre>{ref}</div></div>'
                     + _table(["model", "answer", "scored"], rows,
                              row_class=["fused" if m == data.name else "" for m in a.outputs]) + "</div>")
    return "".join(parts)


def leaderboard_section(data, figs: _Figures) -> str:
    lb = data.leaderboard
    if lb is None or not lb.standings:
        return '<p class="note">No blind votes yet: run blind battles in the Arena tab.</p>'
    rows = [[str(r["rank"]), esc(r["variant"]), str(r["rating"]), f"{r['ci_low']} – {r['ci_high']}", str(r["battles"]),
             str(r["wins"]), str(r["losses"]), str(r["ties"]), str(r["both_bad"])] for r in lb.rows()]
    guide = (f'<p class="guide">Bradley–Terry ratings from {lb.n_votes} blind vote{"s" if lb.n_votes != 1 else ""} '
             f"(1000 = average, +400 = 10:1 odds) with {lb.level:.0%} intervals from {lb.n_bootstrap} bootstrap "
             "resamples. With few battles per model the intervals are wide and the ranks provisional.</p>")
    return (guide + _table(["rank", "model", "rating", f"{lb.level:.0%} interval", "battles", "wins", "losses", "ties",
                            "both bad"], rows, num=(0, 2, 3, 4, 5, 6, 7, 8),
                           row_class=["fused" if r["variant"] == data.name else "" for r in lb.rows()])
            + figs.html(F.leaderboard_figure(lb), "leaderboard"))


def render(data) -> str:
    """The whole page for a gathered `ReportData`."""
    figs = _Figures()
    bodies = {
        "sec-summary": summary_section(data), "sec-recipe": recipe_section(data), "sec-models": models_section(data),
        "sec-analysis": analysis_section(data, figs), "sec-gates": gates_section(data, figs),
        "sec-eval": eval_section(data), "sec-answers": answers_section(data),
        "sec-leaderboard": leaderboard_section(data, figs),
    }
    breaks = {"sec-answers": ' class="pagebreak"'}  # printed: the answers start a page
    sections = "".join(f'<section id="{sid}"{breaks.get(sid, "")}><h2>{title}</h2>{bodies[sid]}</section>'
                       for sid, title in SECTIONS)
    toc = "".join(f'<a href="#{sid}">{title}</a>' for sid, title in SECTIONS)
    notes = "".join(f"<li>{esc(n)}</li>" for n in data.notes)
    script = f"<script>{F.plotly_js()}</script>" if figs.count else ""
    title = f"{data.name}: {data.recipe.method} fusion of {' + '.join(e.name for e in data.experts)}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="Graft Studio report">
<title>Graft Studio report — {esc(title)}</title>
<style>{CSS_PATH.read_text()}</style>
{script}
</head><body><main>
<header class="report"><h1>{esc(title)}</h1>
<p class="meta">Graft Studio stakeholder report · {esc(data.created)} · base {esc(data.base.name)} ·
target domains {esc(', '.join(data.domains))}</p>
<p class="meta">manifest {esc(data.manifest_source or '—')} · variant folder {esc(data.folder)}</p></header>
<nav class="toc">{toc}</nav>
{sections}
<footer>{f'<ul>{notes}</ul>' if notes else ''}Generated by <code>python -m graft_ui report</code>. Self-contained:
this file loads nothing from the network.</footer>
</main></body></html>
"""
