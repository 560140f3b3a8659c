"""`python -m graft_ui advise --zoo full --dataset math+code`: ranked expert pairs with a predicted gain."""

from __future__ import annotations

import argparse
import json
import logging

from graft_ui.commands.common import add_manifest_args, load_manifest_arg
from graft_ui.fanout import Backend

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "advise", help="merge advisor: every expert pair's predicted fusion gain on a target dataset",
        description="For the experts of one kind and a target dataset, predict every pair's Graft gain over the "
        "better single expert (± the held-out error) from the pair's compatibility, task-vector cosine and the "
        "stronger expert's score, with a predictor fitted on a fusion study and validated leave-one-pair-out. "
        "The study: --study PATH, else $GRAFT_ADVISOR_STUDY, else docs/results/zoo-full/study.json.")
    add_manifest_args(p)
    p.add_argument("--dataset", required=True, metavar="DOMAINS", help="target domains joined by '+', e.g. math+code")
    p.add_argument("--kinds", nargs="+", choices=("lora", "full"), default=["lora", "full"])
    p.add_argument("--study", metavar="PATH", help="the study.json (or its folder) to fit on")
    p.add_argument("--target", choices=("gain_graft", "gain_best"), default="gain_graft",
                   help="predict Graft's gain at its defaults (default) or the best default method's gain")
    p.add_argument("-k", "--k", type=int, default=16, help="compatibility samples K on the target (default 16)")
    p.add_argument("--limit", type=int, help="first N held-out samples per domain when an expert must be evaluated")
    p.add_argument("--seed", type=int, default=0, help="sample selection seed (default 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--forecast", metavar="PATH", help="the fitted kept-fraction forecast (predictors.json or its "
                   "folder; default docs/results/zoo-study/predictors.json)")
    p.add_argument("--methods", nargs="+", help="methods to forecast (default: task_arithmetic ties graft average)")
    p.add_argument("--preview-k", type=int, default=32,
                   help="merge-preview prompts per expert domain when the zoo's previews must be computed (default 32)")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes for merge previews the zoo has no cache of (default 1: this process)")
    p.add_argument("--ray", metavar="auto|ADDRESS",
                   help="compute those previews as Ray tasks on this cluster, one per pair, into the same cache "
                        "(needs requirements-ray.txt; the zoo at the same path on every node)")
    p.add_argument("--json", action="store_true", help="print the forecast as JSON")
    p.set_defaults(func=cmd_advise)


def cmd_advise(args: argparse.Namespace) -> int:
    from graft_ui.advisor.forecast import forecast
    from graft_ui.advisor.source import fit_kind, load_study, locate_study

    for name in ("k", "limit", "preview_k", "workers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name}={value} must be at least 1")
    study = load_study(locate_study(args.study))
    manifest = load_manifest_arg(args, default_zoo="full")
    kinds = [k for k in args.kinds if sum(1 for e in manifest.experts if e.kind == k) >= 2]
    if not kinds:
        raise ValueError(f"manifest {manifest.name!r} has no two experts of kind(s) {args.kinds}")
    gains = [forecast(manifest, kind, args.dataset, fit_kind(study, kind, target=args.target), study=study, k=args.k,
                      seed=args.seed, limit=args.limit, device=args.device) for kind in kinds]
    plans, art = _plans(manifest, kinds, study, args)
    if args.json:
        print(json.dumps({"validation": {p.kind: p.validation for p in plans},
                          "pairs": [r.to_dict() for p in plans for r in p.rows],
                          "recommendation": {p.kind: p.recommendation for p in plans},
                          "kept_forecast": [p.to_dict() for p in plans],
                          "forecast_source": art.get("_path") if art else None,
                          "gain_forecasts": [f.to_dict() for f in gains]}, indent=1))
        return 0
    for plan in plans:
        _print_plan(plan)
    for fc in gains:
        _print_gains(fc)
    return 0


def _plans(manifest, kinds, study, args):
    """The kept-fraction forecast per kind ([] with a logged reason when no fitted forecast exists)."""
    from graft_ui.advisor.kept import KeptForecast, load_artifact
    from graft_ui.advisor.plan import plan

    try:
        art = load_artifact(args.forecast)
    except FileNotFoundError as exc:
        log.warning("%s", exc)
        return [], None
    plans = []
    for kind in kinds:
        try:
            fc = KeptForecast.from_artifact(art, kind, art["_path"])
        except KeyError as exc:
            log.warning("%s", exc.args[0])
            continue
        plans.append(plan(manifest, kind, args.dataset, fc, art=art, study=study, methods=args.methods,
                          k=args.preview_k, seed=args.seed, limit=args.limit, device=args.device,
                          backend=Backend(workers=args.workers, ray=args.ray,
                                          gpus=0 if args.device == "cpu" else None)))
    return plans, art


def _print_plan(p) -> None:
    print(f"\n== {p.kind} pairs on {'+'.join(p.target)}: kept fraction per method ==")
    print("validation: " + p.validation_line)
    print(f"signals: {p.sources['signals']}; expert scores: {p.sources['singles']}")
    print(f"{'pair':<34} {'method':<16} {'kept_min':>13} {'kept a / b':>11} {'pred. acc':>9} {'agree':>5} measured")
    for r in p.rows:
        measured = "—" if r.measured_kept_min is None else f"{r.measured_kept_min:.2f}"
        print(f"{r.a + ' + ' + r.b:<34} {r.method:<16} {f'{r.kept_min:.2f} ± {r.error:.2f}':>13} "
              f"{f'{r.kept_a:.2f}/{r.kept_b:.2f}':>11} {r.accuracy:>8.1f}% {r.preview['agree_min']:>5.2f} {measured}"
              + ("  (extrapolated)" if r.extrapolated else ""))
    print(f"recommendation: {p.recommendation}")


def _print_gains(fc) -> None:
    print(f"\n== {fc.kind} pairs on {'+'.join(fc.target)}: Graft gain (the earlier advisor) ==")
    print(fc.note)
    print("signals: " + "; ".join(f"{k}: {v}" for k, v in fc.sources.items()))
    print(f"{'#':>2}  {'pair':<34} {'pred. gain':>12} {'pred. acc':>9} {'compat':>7} {'tv cos':>7} "
          f"{'stronger (score)':<24} measured")
    for i, r in enumerate(fc.rows, 1):
        gain = f"{r.predicted_gain:+.1f} ± {r.error:.1f}"
        measured = "—" if r.measured_gain is None else f"{r.measured_gain:+.1f}"
        flag = "  (extrapolated)" if r.extrapolated else ""
        print(f"{i:>2}  {r.a + ' + ' + r.b:<34} {gain:>12} {r.predicted_accuracy:>8.1f}% {r.compatibility:>7.3f} "
              f"{r.tv_cosine:>7.3f} {r.stronger + f' ({r.best_single:.0f}%)':<24} {measured}{flag}")
    print(f"recommendation: {fc.recommendation}")


__all__ = ["add_parser", "cmd_advise"]
