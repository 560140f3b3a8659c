"""The forecast's committed record: predictors.json, study.md (tables) and predicted-vs-measured plots.

The HTML pages load plotly from one shared `../plotly.min.js` (docs/results/plotly.min.js), not a
copy per folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import plotly.graph_objects as go

from graft_ui.advisor import validate as V
from graft_ui.atomic import write_bytes

SHARED_PLOTLY = "../plotly.min.js"
LABELS = {"agree_min": "preview agreement (min)", "kl_max": "preview KL (max)", "cosine": "task-vector cosine",
          "sign_agreement": "sign agreement", "norm_ratio": "delta-norm ratio", "b_overlap": "B-subspace overlap",
          "grad_l2": "gradient L2 distance", "grad_cos": "gradient cosine", "pair_score": "paper's compatibility",
          "single_min": "weaker expert's own accuracy"}


def _f(x, nd: int = 2) -> str:
    return "—" if x is None else f"{x:+.{nd}f}"


def _ci(ci) -> str:
    return "—" if not ci or ci[0] is None else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def _rel(x) -> str:
    return "—" if x is None else f"{x:.2f}"


def validation_line(kind: str, v: Mapping, method: str | None = None) -> str:
    """'lora: kept_min, leave-one-expert-out over 45 pairs (180 fusions, 10 experts): ρ +0.80 [+0.70, +0.88] ...'."""
    text = (f"{kind}: kept_min, {v['protocol']} over {v['pairs']} pairs ({v['n']} fusions, {v['experts']} experts): "
            f"pooled ρ {_f(v['rho'])} {_ci(v['ci'])}, RMSE {v['rmse']:.3f}")
    pm = (v.get("per_method") or {}).get(method) if method else None
    if pm:
        text += f"; within {method} ρ {_f(pm['rho'])} {_ci(pm['ci'])}, RMSE {pm['rmse']:.3f}"
    text += f"; transfer ρ {_f(v.get('transfer_rho'))}"
    rel = v.get("reliability")
    text += f"; split-half reliability of the measured kept_min {rel:.2f}" if rel is not None else "; reliability not measured"
    return text + (" — meets the targets" if v.get("meets_targets") else " — WEAK: below the targets")


def markdown(art: Mapping, command: str = "") -> str:
    out = ["# Kept-fraction forecast: validation", "",
           f"Study zoo: `{(art.get('zoo') or {}).get('manifest', '?')}`; transfer zoo: "
           f"`{(art.get('transfer_zoo') or {}).get('manifest', '—')}`.", ""]
    if command:
        out += [f"`{command}`", ""]
    out += [f"Targets: pooled ρ ≥ {V.TARGETS['rho']} (lower end ≥ {V.TARGETS['rho_lo']}); within task arithmetic, "
            f"TIES and Graft ρ ≥ {V.TARGETS['method_rho']} (lower end ≥ {V.TARGETS['method_lo']}); transfer ρ ≥ "
            f"{V.TARGETS['transfer_rho']}. Intervals: 95% bootstrap over experts.", ""]
    for kind, k in art["kinds"].items():
        v = k["validation"]
        out += [f"## {kind}", "", validation_line(kind, v), "",
                f"Model: kept_min ~ ridge({', '.join(k['features'])} + method), λ = 1.", "",
                "| method | n | ρ (held out) | 95% CI | RMSE | transfer ρ | reliability |", "|---|---|---|---|---|---|---|"]
        tpm = v.get("transfer_per_method") or {}
        rpm = v.get("reliability_per_method") or {}
        for m, pm in v["per_method"].items():
            rel = rpm.get(m)
            out.append(f"| {m} | {pm['n']} | {_f(pm['rho'])} | {_ci(pm['ci'])} | {pm['rmse']:.3f} | "
                       f"{_f((tpm.get(m) or {}).get('rho'))} | {_rel(rel)} |")
        out.append(f"| **pooled** | {v['n']} | {_f(v['rho'])} | {_ci(v['ci'])} | {v['rmse']:.3f} | "
                   f"{_f(v.get('transfer_rho'))} | {_rel(v.get('reliability'))} |")
        if v.get("transfer_pairs"):
            out += ["", f"Transfer: the model fitted on the {v.get('transfer_fit_pairs')} study pairs the transfer zoo "
                        f"does not have predicts its {v['transfer_pairs']} measured pairs: ρ {_f(v.get('transfer_rho'))} "
                        f"{_ci(v.get('transfer_ci'))}, RMSE {_rel(v.get('transfer_rmse'))}."]
        sv, mv = k.get("side_validation"), k.get("mean_validation")
        out += ["", f"Per-expert kept fraction (both sides, held out): ρ {_f(sv['rho'])} {_ci(sv['ci'])}, RMSE {sv['rmse']:.3f}."]
        if mv:
            out.append(f"Mean accuracy after merging from it (points): ρ {_f(mv['rho'])} {_ci(mv['ci'])}, RMSE {mv['rmse']:.1f}.")
        out += ["", "Each signal alone (Spearman ρ with kept_min, no fit):", "",
                "| signal | pooled ρ | 95% CI | " + " | ".join(k["methods"]) + " | transfer ρ |",
                "|---|---|---|" + "---|" * len(k["methods"]) + "---|"]
        for s, sc in k["signals_alone"].items():
            per = " | ".join(f"{_f((sc['per_method'].get(m) or {}).get('rho'))} {_ci((sc['per_method'].get(m) or {}).get('ci'))}"
                             for m in k["methods"])
            out.append(f"| {LABELS.get(s, s)} | {_f(sc['rho'])} | {_ci(sc['ci'])} | {per} | {_f(sc.get('transfer_rho'))} |")
        out += ["", "Per fold (held-out expert: ρ, RMSE over its pairs' fusions): " + "; ".join(
            f"{f['expert']} " + ("skipped" if f.get("skipped") else f"{_f(f['rho'])}/{f['rmse']:.3f}")
            for f in v["folds"]), ""]
    return "\n".join(out) + "\n"


def scatter(art: Mapping, kind: str) -> go.Figure:
    """Held-out predicted vs measured kept_min, one colour per method, the diagonal dashed."""
    k = art["kinds"][kind]
    fig = go.Figure()
    for m in k["methods"]:
        pts = [h for h in k["heldout"] if h["method"] == m]
        pm = k["validation"]["per_method"][m]
        fig.add_scatter(x=[h["predicted"] for h in pts], y=[h["kept_min"] for h in pts], mode="markers",
                        name=f"{m} (ρ {_f(pm['rho'])})", text=[h["pair"] for h in pts],
                        hovertemplate="%{text}<br>predicted %{x:.2f}<br>measured %{y:.2f}<extra>" + m + "</extra>")
    lo = min([0.0] + [h["kept_min"] for h in k["heldout"]] + [h["predicted"] for h in k["heldout"]])
    hi = max([1.0] + [h["kept_min"] for h in k["heldout"]] + [h["predicted"] for h in k["heldout"]])
    fig.add_scatter(x=[lo, hi], y=[lo, hi], mode="lines", line=dict(dash="dash", color="grey"), showlegend=False)
    v = k["validation"]
    fig.update_layout(title=f"{kind}: kept_min, {V.PROTOCOL} prediction vs measured (pooled ρ {_f(v['rho'])} {_ci(v['ci'])})",
                      xaxis_title="predicted kept_min (held out)", yaxis_title="measured kept_min", width=900, height=560)
    return fig


def write(art: Mapping, out: str | Path, command: str = "") -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "predictors.json", out / "study.md"]
    write_bytes(written[0], json.dumps({k: v for k, v in art.items() if not k.startswith("_")}, indent=1).encode())
    write_bytes(written[1], markdown(art, command).encode())
    for kind in art["kinds"]:
        path = out / f"kept_{kind}.html"
        write_bytes(path, scatter(art, kind).to_html(include_plotlyjs=SHARED_PLOTLY, full_html=True).encode())
        written.append(path)
    return written
