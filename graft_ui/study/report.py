"""Write the study: study.json (everything), study.md (tables, command, machine) and figures.

Files are written atomically (temp file + rename), so a crash never leaves half a report.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from pathlib import Path
from typing import Any, Mapping, Sequence

from graft_ui.study import plots

log = logging.getLogger(__name__)

PREDICTOR_NAMES = {
    "pair_score": "pair compatibility score (paper §3.4)",
    "score_mean": "mean of the two compatibilities",
    "two_factor_rank": "two-factor rank sum (score, headroom)",
    "two_factor_linear": "two-factor linear fit, leave-one-out",
    "tv_cosine": "task-vector cosine",
    "sign_agreement": "task-vector sign agreement",
}


def machine() -> dict[str, Any]:
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"python": platform.python_version()}
    for mod in ("torch", "transformers", "peft", "numpy", "scipy", "plotly"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            continue
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"machine": {"nproc": nproc, "cpu_model": cpu, "platform": platform.platform(), "versions": versions}}


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _f(x, spec: str = ".1f", none: str = "—") -> str:
    return none if x is None else format(x, spec)


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _headline(study: Mapping) -> list[str]:
    """Plain sentences derived from the numbers (where Graft ranks, how the predictors did)."""
    out = []
    own = [p["single_a"] for p in study["pairs"]] + [p["single_b"] for p in study["pairs"]]
    if own and not any(own):
        out.append("- **Every expert scores 0 on its pair's domains**, so gains and kept fractions carry no "
                   "information here: this zoo is outside the regime where merging can be judged (DESIGN.md §7).")
    for m in study["methods"]:
        if m["variant"] != "graft":
            continue
        out.append(f"- **{m['kind']}**: Graft (defaults) ranks {_f(m['mean_rank'], '.1f')} on average among the "
                   f"default methods, best (ties included) on {m['wins']} of {m['pairs']} pairs; mean gain {_f(m['mean_gain'], '+.1f')} "
                   f"points, mean kept_min {_f(m['mean_kept_min'], '.2f')}, kept ≥ 0.8 of both experts on "
                   f"{m['pairs_kept_80']} pairs.")
    for kind in dict.fromkeys(m["kind"] for m in study["methods"]):
        ms = [m for m in study["methods"] if m["kind"] == kind and "[" not in m["variant"]]
        if not ms:
            continue
        top = max(m["mean_gain"] for m in ms)
        tied = [m for m in ms if m["mean_gain"] == top]
        who = ("every method ties" if len(tied) == len(ms) > 1
               else "the best method by mean gain is " + " = ".join(m["variant"] for m in tied))
        out.append(f"- **{kind}**: {who} ({top:+.1f} points, kept_min {_f(tied[0]['mean_kept_min'], '.2f')}).")
    for kind in dict.fromkeys(m["kind"] for m in study["methods"]):
        abl = {m["variant"]: m for m in study["methods"] if m["kind"] == kind and m["variant"].startswith("graft")}
        if len(abl) > 1:
            out.append(f"- **{kind}**, Graft ablations (mean gain): "
                       + ", ".join(f"{v} {_f(m['mean_gain'], '+.1f')}" for v, m in abl.items()) + ".")
    for group, c in study["correlations"].items():
        s = c["gain_graft"]["pair_score"]
        if s["rho"] is None:
            out.append(f"- **{group}**: the compatibility-vs-gain correlation is undefined ({s.get('note')}).")
        else:
            out.append(f"- **{group}**: compatibility vs Graft gain: ρ = {s['rho']:+.2f} "
                       f"(95% CI {_f(s['ci_lo'], '+.2f')} to {_f(s['ci_hi'], '+.2f')}, n = {s['n']}); the paper "
                       f"reports 0.86 on about 7 pairs.")
    return out


def markdown(study: Mapping, figures: Sequence[Path] = ()) -> str:
    run, m = study["run"], study["run"]["machine"]
    zoo = study["zoo"]
    fp = zoo.get("fingerprint") or {}
    cost = study["cost"]
    parts = ["# Fusion-quality study", ""]
    if run.get("command"):
        parts += ["```bash", run["command"], "```", ""]
    parts += [f"- zoo: `{zoo.get('manifest')}`; build fingerprint: format {fp.get('format')}, profile "
              f"{fp.get('profile')}, seed {fp.get('seed')}, settings hash `{fp.get('settings_hash')}`",
              f"- machine: {m['nproc']} CPU(s) ({m.get('cpu_model')}), {m['platform']}; "
              + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
              f"- settings: K = {study['config']['k']} compatibility samples, eval limit "
              f"{study['config']['limit'] or 'all'} per domain, seed {study['config']['seed']}, "
              f"{study['config']['resamples']} bootstrap resamples, {study['config']['workers']} worker(s) x "
              f"{study['config'].get('threads', 1)} torch thread(s)",
              f"- run: {run['wall_seconds']:.0f} s wall; {run['fusions_done']} fusion(s) run, "
              f"{run['fusions_cached']} from the cache; per fusion {_f(cost['fuse_seconds_mean'], '.2f')} s to fuse + "
              f"{_f(cost['eval_seconds_mean'], '.2f')} s to evaluate (mean over {cost['fusions']})",
              "", "## Headline", "", *_headline(study), "",
              "Definitions: `docs/STUDY.md` (gain, kept, predictors, interval).", "",
              "## Single experts (accuracy %, the domains their pairs need)", ""]
    singles = study["singles"]
    doms = list(dict.fromkeys(d for acc in singles.values() for d in acc))
    parts += [_table(["expert", *doms], [[e, *[_f(acc.get(d)) for d in doms]] for e, acc in singles.items()]), ""]

    info = {r["pair"]: r for r in study["pairs"]}
    parts += ["## Table 1: every method on every pair", "",
              "acc A / acc B: the fused model on expert A's / B's own domain; kept: that as a fraction of the "
              "expert's own accuracy; gain: mean over the pair's domains minus the better expert's; rank among "
              "the default methods (ablations unranked).", ""]
    for kind in dict.fromkeys(r["kind"] for r in study["table1"]):
        rows = []
        for r in (x for x in study["table1"] if x["kind"] == kind):
            p = info[r["pair"]]
            if r.get("error"):
                rows.append([r["pair"], r["relatedness"], r["variant"], "error", "", "", "", "", "", r["error"][:60]])
                continue
            da, db = p["domains"][0], p["domains"][-1]
            rows.append([r["pair"], r["relatedness"], r["variant"], f"{da} {_f(r['accuracy'].get(da))}",
                         f"{db} {_f(r['accuracy'].get(db))}", _f(r["mean"]), _f(r["kept_a"], ".2f"),
                         _f(r["kept_b"], ".2f"), _f(r["gain"], "+.1f"), r.get("rank", "")])
        parts += [f"### {kind}", "", _table(["pair", "rel.", "method", "acc A", "acc B", "mean", "kept A", "kept B",
                                              "gain", "rank"], rows), ""]
    parts += ["### Methods summarised", "",
              _table(["kind", "method", "pairs", "mean gain", "mean kept_min", "kept ≥ 0.8", "mean rank", "wins",
                      "errors"],
                     [[x["kind"], x["variant"], x["pairs"], _f(x["mean_gain"], "+.1f"), _f(x["mean_kept_min"], ".2f"),
                       x["pairs_kept_80"], _f(x["mean_rank"], ".1f"), x["wins"], x["errors"]]
                      for x in study["methods"]]), ""]
    parts += ["## Table 2: compatibility, baseline and gain per pair", "",
              _table(["pair", "kind", "rel.", "compat A", "compat B", "pair score", "stronger (B)", "gain graft",
                      "graft rank", "best method (gain)", "tv cos", "sign agr.", "predicted"],
                     [[r["pair"], r["kind"], r["relatedness"], _f(r["compat_a"], ".3f"), _f(r["compat_b"], ".3f"),
                       _f(r["pair_score"], ".3f"), f"{r['stronger']} ({_f(r['best_single'])})",
                       _f(r["gain_graft"], "+.1f"), f"{r['graft_rank'] or '—'}/{r['n_methods']}",
                       f"{r['best_method']} ({_f(r['gain_best'], '+.1f')})", _f(r["tv_cosine"], ".3f"),
                       _f(r["sign_agreement"], ".3f"), _f(r.get("predicted_gain"), "+.1f")]
                      for r in study["pairs"]]), ""]
    rows = []
    for group, c in study["correlations"].items():
        for target in ("gain_graft", "gain_best"):
            for pred, s in c[target].items():
                ci = f"[{_f(s['ci_lo'], '+.2f')}, {_f(s['ci_hi'], '+.2f')}]"
                rows.append([group, target, PREDICTOR_NAMES.get(pred, pred),
                             _f(s["rho"], "+.3f", s.get("note", "—")), _f(s["p"], ".3g"), ci, s["n"],
                             s["skipped"]])
    parts += ["## Predictors of the gain: Spearman ρ over pairs", "",
              "Interval: percentile bootstrap over pairs (resampled with replacement, seeded); resamples whose "
              "predictor or gain is constant have no ρ and are skipped (counted).", "",
              _table(["pairs", "gain of", "predictor", "ρ", "p", "95% CI", "n", "skipped"], rows), ""]
    parts += reliability_markdown(study)
    pngs = [f for f in figures if f.suffix == ".png"]
    if figures:
        parts += ["## Figures", ""]
        for f in figures:
            if f.suffix == ".html":
                png = f.with_suffix(".png")
                parts.append(f"- [{f.stem}]({f.name})" + ("" if png in pngs else " (HTML only)"))
        parts += [""] + [f"![{p.stem}]({p.name})" for p in pngs] + [""]
    return "\n".join(parts)


def reliability_markdown(study: dict) -> list[str]:
    """The split-half reliability section (lines), empty when the study recorded no items."""
    if not study.get("reliability"):
        return []
    rel = [[kind, v, _f(r["reliability"], ".2f"), _f(r["half_rho"], ".2f"), r["n_fusions"],
            ", ".join(f"{d} {n}" for d, n in r["items"].items())]
           for kind, by in study["reliability"].items() for v, r in by.items()]
    return ["## Split-half reliability of the measured kept_min", "",
            "Each domain's held-out items split in two seeded halves; kept_min per half; Spearman ρ "
            "between the halves across the pairs, averaged over 20 splits, Spearman–Brown corrected "
            "(graft_ui/study/reliability.py). A forecast of kept_min cannot correlate with it better "
            "than this; per-item correctness is in items.json.", "",
            _table(["kind", "method", "reliability", "half ρ", "fusions", "items per domain"], rel), ""]


def write(study: dict, out_dir: str | Path, *, png: bool = True) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = plots.save(plots.study_figures(study), out, png=png)
    study["figures"] = [f.name for f in figures]
    js, md = out / "study.json", out / "study.md"
    _atomic(js, json.dumps(study, indent=1, allow_nan=False) + "\n")
    _atomic(md, markdown(study, figures) + "\n")
    log.info("wrote %s, %s and %d figure file(s)", js, md, len(figures))
    return {"json": js, "markdown": md}
