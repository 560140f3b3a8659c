"""`python -m graft_ui forecast`: fit and validate the kept-fraction forecast on a measured study.

    python -m graft_ui forecast --zoo DIR --study DIR/study.json --transfer-zoo full \
        --transfer-study docs/results/zoo-full/study.json --out docs/results/zoo-study

Computes every predictor on every (pair, method) of the zoo (advisor.signals; cached under
OUT/cache, resumable), fits the forecast of each kind, validates it leave-one-expert-out with
intervals over experts, transfers it to the second zoo's measured pairs, and writes
OUT/predictors.json, OUT/study.md and OUT/kept_<kind>.html.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

from graft_ui.commands.common import add_manifest_args, load_manifest_arg

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("forecast", help="fit and validate the kept-fraction forecast on a fusion study",
                              description=__doc__.splitlines()[0])
    add_manifest_args(p)
    p.add_argument("--study", required=True, metavar="PATH", help="the zoo's study.json (the measured kept fractions)")
    p.add_argument("--transfer-zoo", metavar="PROFILE_OR_DIR", help="a second zoo whose measured pairs test transfer")
    p.add_argument("--transfer-study", metavar="PATH", help="that zoo's study.json")
    p.add_argument("--reliability", metavar="JSON", help="split-half reliability of kept_min per kind "
                   "({kind: {kept_min, per_method}}); default: the study's own 'reliability' entry")
    p.add_argument("--methods", nargs="+", default=None, help="methods (default task_arithmetic ties graft average)")
    p.add_argument("--kinds", nargs="+", choices=("lora", "full"), default=["lora", "full"])
    p.add_argument("-k", "--k", type=int, default=32, help="preview prompts per expert domain (default 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples over experts (default 1000)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu): the same code on either")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest for the zoo's tiny "
                   "models on busy cores, see docs/STUDY.md)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=cmd_forecast)


def _rows(manifest, study_path, args, out):
    from graft_ui.advisor.signals import METHODS, collect
    from graft_ui.advisor.source import load_study

    study = load_study(study_path)
    return study, collect(manifest, study, out, kinds=args.kinds, methods=args.methods or METHODS, k=args.k,
                          seed=args.seed, device=args.device, progress=lambda m: log.info("signals %s", m))


def reliability(study: dict, study_path: Path, methods, seed: int) -> dict | None:
    """{kind: {"kept_min": pooled over `methods`, "per_method": {method: r}}} from the study's split-half
    reliability ({kind: {variant: {"reliability"}}}) and, for the pooled figure, its per-item file
    (items.json beside study.json, graft_ui.study.reliability); None when the study has none."""
    by = study.get("reliability")
    if not by:
        return None
    out = {kind: {"per_method": {m: (v.get(m) or {}).get("reliability") for m in methods}, "kept_min": None}
           for kind, v in by.items()}
    items_path = (study_path if study_path.is_dir() else study_path.parent) / "items.json"
    try:
        from graft_ui.study.reliability import split_half_reliability

        items = json.loads(items_path.read_text())
    except (ImportError, OSError, json.JSONDecodeError) as exc:
        log.warning("pooled split-half reliability not computed (%s)", exc)
        return out
    for kind in out:
        fus = [f for f in items["fusions"] if f["kind"] == kind and f["variant"] in methods]
        out[kind]["kept_min"] = split_half_reliability(fus, items["singles"], seed=seed)["reliability"] if fus else None
    return out


def cmd_forecast(args: argparse.Namespace) -> int:
    import torch

    from graft_ui.advisor import kept, report
    from graft_ui.advisor.signals import METHODS

    torch.set_num_threads(max(1, args.threads))

    if (args.transfer_zoo is None) != (args.transfer_study is None):
        raise ValueError("--transfer-zoo and --transfer-study go together")
    out = Path(args.out)
    manifest = load_manifest_arg(args)
    study, rows = _rows(manifest, args.study, args, out)
    transfer, tzoo = [], {}
    if args.transfer_zoo:
        tman = load_manifest_arg(argparse.Namespace(manifest=None, zoo=args.transfer_zoo))
        tstudy, transfer = _rows(tman, args.transfer_study, args, out)
        tzoo = {**(tstudy.get("zoo") or {}), "manifest": str(tman.source)}
    methods = args.methods or METHODS
    rel = (json.loads(Path(args.reliability).read_text()) if args.reliability
           else reliability(study, Path(args.study), methods, args.seed))
    art = kept.build(rows, transfer=transfer, reliability=rel, seed=args.seed, resamples=args.resamples,
                     zoo={**(study.get("zoo") or {}), "manifest": str(manifest.source)}, transfer_zoo=tzoo)
    art["config"] = {"k": args.k, "seed": args.seed, "device": args.device, "resamples": args.resamples}
    cmd = "python -m graft_ui " + " ".join(shlex.quote(a) for a in sys.argv[1:] if a)
    for path in report.write(art, out, cmd):
        log.info("wrote %s", path)
    for kind, k in art["kinds"].items():
        print(report.validation_line(kind, k["validation"]))
    return 0


__all__ = ["add_parser", "cmd_forecast"]
