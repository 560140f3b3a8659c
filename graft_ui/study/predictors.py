"""From cached measurements to the study's tables and statistics (pure Python + numpy/scipy).

Definitions (docs/STUDY.md has the long form):

    B(M; D)      mean accuracy (%) of model M over domains D (the pair's domains)
    gain         B(fused) - max(B(Ea), B(Eb)) on the pair's domains
    kept_e       fused accuracy on expert e's own domain / e's own accuracy there (None if that is 0)
    kept_min     min(kept_a, kept_b): the weaker-kept skill of the pair
    gain_graft   gain of Graft at its defaults; gain_best: the best default method's gain

Predictors of the gain (each: Spearman rho, p, bootstrap 95% interval over pairs):

    pair_score         the paper's activation compatibility of the pair (analysis.scores.pair_score)
    score_mean         mean of the two experts' separately normalised compatibilities
    two_factor_rank    rank(pair_score) + rank(-best_single): compatible pairs whose stronger
                       expert leaves headroom should gain most (the paper's two factors, no fitting)
    two_factor_linear  gain ~ 1 + pair_score + best_single by least squares, each pair predicted by
                       the fit on the others (leave-one-out), so its rho is an out-of-sample one
    tv_cosine          cosine of the experts' task vectors (study.weights)
    sign_agreement     fraction of entries where the task vectors agree in sign
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from graft_ui.analysis.pairstats import bench, bootstrap_spearman, kept, spearman

TARGETS = ("gain_graft", "gain_best")
PREDICTORS = ("pair_score", "score_mean", "two_factor_rank", "two_factor_linear", "tv_cosine", "sign_agreement")


def _ranks(x: Sequence[float]) -> list[float]:
    from scipy.stats import rankdata

    return [float(r) for r in rankdata(x)]


def loo_linear(features: list[list[float]], y: list[float]) -> list[float | None]:
    """Leave-one-out predictions of y from [1, *features] by least squares; None where too few points."""
    X = np.column_stack([np.ones(len(y)), np.asarray(features, dtype=float)])
    Y = np.asarray(y, dtype=float)
    out: list[float | None] = []
    for i in range(len(Y)):
        keep = np.arange(len(Y)) != i
        if keep.sum() <= X.shape[1]:  # a fit with as many points as parameters predicts nothing
            out.append(None)
            continue
        coef, *_ = np.linalg.lstsq(X[keep], Y[keep], rcond=None)
        out.append(float(X[i] @ coef))
    return out


def table1(singles: dict, infos: list[dict], fused: list[dict], variants: Sequence[str]) -> list[dict]:
    """One row per (pair, variant): accuracy on the evaluated domains, mean, kept fractions, gain, rank."""
    info = {i["pair"]: i for i in infos}
    rows = []
    for r in fused:
        i = info[r["pair"]]
        row: dict[str, Any] = {"pair": r["pair"], "kind": i["kind"], "relatedness": i["relatedness"],
                               "variant": r["variant"], "ablation": "[" in r["variant"]}
        if r.get("error"):
            rows.append({**row, "error": r["error"]})
            continue
        acc = r["accuracy"]
        sa, sb = singles[i["a"]], singles[i["b"]]
        ka, kb = kept(acc[i["domain_a"]], sa[i["domain_a"]]), kept(acc[i["domain_b"]], sb[i["domain_b"]])
        ks = [k for k in (ka, kb) if k is not None]
        row.update({"accuracy": acc, "mean": bench(acc, i["eval_domains"]),
                    "kept_a": ka, "kept_b": kb, "kept_min": min(ks) if ks else None,
                    "gain": bench(acc, i["domains"]) - max(bench(sa, i["domains"]), bench(sb, i["domains"])),
                    "fuse_seconds": r.get("fuse_seconds"), "eval_seconds": r.get("eval_seconds")})
        rows.append(row)
    # rank of each default method within its pair by gain (1 = best; ablations are not ranked)
    for pair in info:
        ranked = sorted((x for x in rows if x["pair"] == pair and not x["ablation"] and "gain" in x),
                        key=lambda x: -x["gain"])
        for x in ranked:
            x["rank"] = 1 + sum(1 for y in ranked if y["gain"] > x["gain"])
    return rows


def pair_rows(singles: dict, infos: list[dict], t1: list[dict]) -> list[dict]:
    """Table 2: per pair, compatibility, pair score, the stronger expert's score, gains, task-vector terms."""
    rows = []
    for i in infos:
        mine = [x for x in t1 if x["pair"] == i["pair"] and "gain" in x]
        defaults = [x for x in mine if not x["ablation"]]
        graft = next((x for x in mine if x["variant"] == "graft"), None)
        best = max(defaults, key=lambda x: x["gain"]) if defaults else None
        tied = [x["variant"] for x in defaults if best and x["gain"] == best["gain"]]
        # a tie names every tied method: picking the first one would invent a winner
        best_name = None if best is None else ("all tie" if len(tied) == len(defaults) > 1 else ", ".join(tied))
        sa, sb = bench(singles[i["a"]], i["domains"]), bench(singles[i["b"]], i["domains"])
        c, w = i.get("compat") or {}, i.get("weights") or {}
        rows.append({
            "pair": i["pair"], "a": i["a"], "b": i["b"], "kind": i["kind"], "relatedness": i["relatedness"],
            "domains": i["domains"], "compat_a": c.get("compat_a"), "compat_b": c.get("compat_b"),
            "pair_score": c.get("score"), "score_mean": c.get("score_mean"),
            "single_a": sa, "single_b": sb, "best_single": max(sa, sb), "stronger": i["a"] if sa >= sb else i["b"],
            "gain_graft": graft["gain"] if graft else None, "graft_rank": graft.get("rank") if graft else None,
            "n_methods": len(defaults), "gain_best": best["gain"] if best else None,
            "best_method": best_name,
            "kept_min_graft": graft.get("kept_min") if graft else None,
            "kept_min_best": max((x["kept_min"] for x in defaults if x.get("kept_min") is not None), default=None),
            "tv_cosine": w.get("cosine"), "sign_agreement": w.get("sign_agreement"),
        })
    return rows


def _predictor_values(rows: list[dict], target: str) -> dict[str, list[float | None]]:
    """Each predictor's value per row (None where it cannot be computed for that row)."""
    vals: dict[str, list[float | None]] = {k: [r.get(k) for r in rows] for k in
                                           ("pair_score", "score_mean", "tv_cosine", "sign_agreement")}
    ok = [i for i, r in enumerate(rows) if r.get("pair_score") is not None and r.get(target) is not None]
    rank: list[float | None] = [None] * len(rows)
    lin: list[float | None] = [None] * len(rows)
    if ok:
        rs = _ranks([rows[i]["pair_score"] for i in ok])
        rb = _ranks([-rows[i]["best_single"] for i in ok])
        preds = loo_linear([[rows[i]["pair_score"], rows[i]["best_single"]] for i in ok], [rows[i][target] for i in ok])
        for j, i in enumerate(ok):
            rank[i] = rs[j] + rb[j]
            lin[i] = preds[j]
    vals["two_factor_rank"] = rank
    vals["two_factor_linear"] = lin
    return vals


def correlations(rows: list[dict], *, resamples: int, seed: int) -> dict:
    """{target: {predictor: {rho, p, n, ci_lo, ci_hi, ...}}} over the rows given."""
    out: dict = {}
    for target in TARGETS:
        vals = _predictor_values(rows, target)
        out[target] = {}
        for name in PREDICTORS:
            xy = [(x, r[target]) for x, r in zip(vals[name], rows) if x is not None and r.get(target) is not None]
            xs, ys = [a for a, _ in xy], [b for _, b in xy]
            sp = spearman(xs, ys)
            ci = bootstrap_spearman(xs, ys, resamples=resamples, seed=seed)
            out[target][name] = {**sp, "ci_lo": ci["lo"], "ci_hi": ci["hi"], "ci_level": ci["level"],
                                 "resamples": ci["resamples"], "skipped": ci["skipped"]}
    return out


def method_summary(t1: list[dict]) -> list[dict]:
    """Per kind and variant: mean gain, mean and min kept_min, mean rank, pairs won."""
    out = []
    for kind in dict.fromkeys(r["kind"] for r in t1):
        for v in dict.fromkeys(r["variant"] for r in t1):
            rs = [r for r in t1 if r["kind"] == kind and r["variant"] == v and "gain" in r]
            if not rs:
                continue
            kms = [r["kept_min"] for r in rs if r.get("kept_min") is not None]
            ranks = [r["rank"] for r in rs if "rank" in r]
            out.append({"kind": kind, "variant": v, "pairs": len(rs),
                        "mean_gain": float(np.mean([r["gain"] for r in rs])),
                        "mean_kept_min": float(np.mean(kms)) if kms else None,
                        "pairs_kept_80": sum(1 for k in kms if k >= 0.8),
                        "mean_rank": float(np.mean(ranks)) if ranks else None,
                        "wins": sum(1 for x in ranks if x == 1),
                        "errors": sum(1 for r in t1 if r["kind"] == kind and r["variant"] == v and r.get("error"))})
    return out


def assemble(singles: dict, infos: list[dict], fused: list[dict], variants: Sequence[str], *, resamples: int,
             seed: int) -> dict:
    t1 = table1(singles, infos, fused, variants)
    rows = pair_rows(singles, infos, t1)
    groups = {k: [r for r in rows if r["kind"] == k] for k in dict.fromkeys(r["kind"] for r in rows)}
    if len(groups) > 1:
        groups["all"] = rows
    stats = {k: {"n_pairs": len(rs), **correlations(rs, resamples=resamples, seed=seed)} for k, rs in groups.items()}
    # the app shows a prediction for a pair from the linear two-factor fit of its kind (out of sample)
    for k, rs in groups.items():
        if k == "all":
            continue
        preds = _predictor_values(rs, "gain_graft")["two_factor_linear"]
        for r, p in zip(rs, preds):
            r["predicted_gain"] = p
    timing = [r for r in fused if "fuse_seconds" in r]
    return {"singles": singles, "table1": t1, "pairs": rows, "correlations": stats,
            "methods": method_summary(t1),
            "cost": {"fusions": len(timing),
                     "fuse_seconds_mean": float(np.mean([r["fuse_seconds"] for r in timing])) if timing else None,
                     "eval_seconds_mean": float(np.mean([r["eval_seconds"] for r in timing])) if timing else None},
            "definitions": __doc__}
