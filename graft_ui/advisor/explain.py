"""What stands beside a compatibility bar: the expert's accuracy on the target, its forecast, and what
the score has been measured to predict (for ② Analyze and the stakeholder report; no gradio here).

    score_statement(art)             one line: the compatibility score's and the preview's measured rho
                                     with kept_min (leave-one-expert-out study), weak or not
    expert_context(manifest, names, domains, art=art, study=study, method=None)
                                     {expert: {"accuracy": % on the target's held-out split or None,
                                               "forecast": "kept 0.84 ± 0.12 with code-lora (ties)" or "—"}}

The forecast of an expert is its best (pair, method) among the given experts' pairs, from the fitted
artifact's rows of this zoo (no model is run here); "—" when the artifact has no rows for this zoo
(the merge advisor computes them).
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

from graft_ui.models.manifest import Manifest

log = logging.getLogger(__name__)


def _rho(sc: Mapping | None) -> str:
    if not sc or sc.get("rho") is None:
        return "not measured"
    ci = sc.get("ci") or [None, None]
    return f"ρ {sc['rho']:+.2f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci[0] is not None else "")


def score_statement(art: Mapping | None) -> str:
    """The measured meaning of the compatibility score here, in one line."""
    if not art:
        return ("Compatibility is activation overlap (paper §3.4); it has not been measured to predict what a fusion "
                "keeps on these experts — judge the experts by their accuracy.")
    parts = []
    for kind, k in (art.get("kinds") or {}).items():
        alone = k.get("signals_alone") or {}
        weak = "" if k["validation"].get("meets_targets") else ", weak"
        parts.append(f"{kind}: compatibility {_rho(alone.get('pair_score'))}, merge preview "
                     f"{_rho(alone.get('agree_min'))}, fitted forecast {_rho(k['validation'])}{weak}")
    zoo = ((art.get("zoo") or {}).get("fingerprint") or {}).get("profile") or "study"
    return (f"Measured on the {zoo} zoo (Spearman with the kept fraction of the weaker-kept expert, "
            "leave-one-expert-out, 95% intervals over experts) — " + "; ".join(parts)
            + ". The bars show activation overlap, not a forecast.")


def expert_context(manifest: Manifest, names: Sequence[str], domains: Sequence[str], *, art: Mapping | None = None,
                   study: Mapping | None = None, method: str | None = None) -> dict[str, dict]:
    """The module docstring's per-expert accuracy and forecast (only cached figures: nothing is run)."""
    from graft_ui.advisor.kept import KeptForecast
    from graft_ui.advisor.plan import artifact_rows

    singles = (study or {}).get("singles") or {}
    out = {}
    for n in names:
        s = singles.get(n) or {}
        acc = sum(s[d] for d in domains) / len(domains) if domains and all(d in s for d in domains) else None
        out[n] = {"accuracy": acc, "forecast": "—"}
    rows = artifact_rows(art, manifest) if art else None
    if not rows:
        return out
    best: dict[str, tuple] = {}
    models: dict[str, KeptForecast] = {}
    for r in rows:
        if r["a"] not in out or r["b"] not in out or (method and r["method"] != method):
            continue
        try:
            fc = models.get(r["kind"]) or models.setdefault(r["kind"], KeptForecast.from_artifact(art, r["kind"]))
            p = fc.predict(r)
        except (KeyError, ValueError) as exc:
            log.debug("no forecast for %s (%s): %s", r["pair"], r["method"], exc)
            continue
        err = art["kinds"][r["kind"]]["side_validation"]["rmse"]  # held-out RMSE of one expert's kept fraction
        for me, other, side in ((r["a"], r["b"], "a"), (r["b"], r["a"], "b")):
            cand = (p[f"kept_{side}"], other, r["method"], err, fc.weak)
            if me not in best or cand[0] > best[me][0]:
                best[me] = cand
    for n, (k, other, m, err, weak) in best.items():
        out[n]["forecast"] = f"keeps {k:.2f} ± {err:.2f} of its skill with {other} ({m}){' · weak' if weak else ''}"
    return out
