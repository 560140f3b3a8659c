"""`python -m graft_ui advise --zoo full --dataset math+code`: ranked expert pairs with a predicted gain."""

from __future__ import annotations

import argparse
import json

from graft_ui.commands.common import add_manifest_args, load_manifest_arg


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
    p.add_argument("--json", action="store_true", help="print the forecast as JSON")
    p.set_defaults(func=cmd_advise)


def cmd_advise(args: argparse.Namespace) -> int:
    from graft_ui.advisor.forecast import forecast
    from graft_ui.advisor.source import fit_kind, load_study, locate_study

    for name in ("k", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name}={value} must be at least 1")
    study = load_study(locate_study(args.study))
    manifest = load_manifest_arg(args, default_zoo="full")
    out = []
    for kind in args.kinds:
        if sum(1 for e in manifest.experts if e.kind == kind) < 2:
            continue
        pred = fit_kind(study, kind, target=args.target)
        out.append(forecast(manifest, kind, args.dataset, pred, study=study, k=args.k, seed=args.seed,
                            limit=args.limit, device=args.device))
    if not out:
        raise ValueError(f"manifest {manifest.name!r} has no two experts of kind(s) {args.kinds}")
    if args.json:
        print(json.dumps([f.to_dict() for f in out], indent=1))
        return 0
    for fc in out:
        print(f"\n== {fc.kind} pairs on {'+'.join(fc.target)} ==")
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
    return 0


__all__ = ["add_parser", "cmd_advise"]
