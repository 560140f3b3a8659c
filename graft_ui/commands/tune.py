"""`python -m graft_ui tune RECIPE.yaml --dev-domains math code --trials 40 --out DIR`: auto-tune a recipe.

    python -m graft_ui tune RECIPE.yaml ... --storage URL_OR_JOURNAL --study-name NAME   # one worker of N
    python -m graft_ui tune report --storage URL_OR_JOURNAL --study-name NAME --out DIR  # once, at the end
"""

from __future__ import annotations

import argparse
import os
import shlex
import tempfile

from graft_ui.commands.common import add_manifest_args, load_manifest_arg
from graft_ui.tune.shared import redact


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "tune", help="auto-tune a recipe's method parameters on dev data, then score the best on held-out data",
        description="Search the recipe's method parameters (and its layer range and module types) with optuna's TPE "
        "sampler, seeded, scoring each trial on a dev split of the given domains (carved from their train split, "
        "disjoint from the held-out eval split: checked), within a time budget; then score the defaults and the best "
        "few trials on the held-out split. Writes DIR/tune.json, tune.md, tuned-recipe.yaml, default-recipe.yaml "
        "and pareto.html. With --storage and --study-name, N tune processes on N machines fill one optuna study "
        "(--trials is then the study's total; no held-out scoring per worker); `tune report --storage URL "
        "--study-name NAME --out DIR` scores it on held-out data once, after the workers end.")
    p.add_argument("recipe", metavar="RECIPE.yaml|report",
                   help="the recipe to tune (its values are trial 0, the defaults); or `report`: the held-out report "
                        "of the shared study --storage/--study-name")
    p.add_argument("--dev-domains", nargs="+", metavar="DOMAIN", help="domains to tune on (required to tune)")
    p.add_argument("--out", metavar="DIR", help="output folder (required, except for a shared-study worker)")
    p.add_argument("--storage", metavar="URL|JOURNAL",
                   help="share the study with other tune processes: a database URL (postgresql://USER@HOST/DB; "
                        "sqlite:///FILE on one machine) or an optuna journal file on a shared filesystem")
    p.add_argument("--study-name", metavar="NAME", help="the shared study's name (the same in every worker)")
    p.add_argument("--heartbeat", type=int, default=20, metavar="SECONDS",
                   help="with --storage: a worker's running trial sends a heartbeat this often; one silent for "
                        "twice as long (its worker was killed) is marked failed (default 20)")
    p.add_argument("--trials", type=int, default=40, help="most trials, the defaults included (default 40)")
    p.add_argument("--budget", type=float, default=300.0, metavar="SECONDS",
                   help="time budget of the search (default 300); held-out scoring comes after it")
    p.add_argument("--dev-size", type=int, default=32, help="dev items per domain (default 32)")
    p.add_argument("--top", type=int, default=3, help="best trials scored on held-out data (default 3)")
    p.add_argument("--limit", type=int, help="first N held-out items per domain (default: all)")
    p.add_argument("--no-scope", action="store_true", help="search the method's parameters only, not layers/modules")
    p.add_argument("--seed", type=int, default=0, help="sampler and dev-split seed (default 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--batch-size", type=int, default=16, help="evaluation batch size (default 16)")
    add_manifest_args(p, manifest_help="manifest whose experts the recipe names and whose datasets are tuned on "
                      "(default: the full demo zoo)")
    p.set_defaults(func=cmd_tune)


def canonical_command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run (defaults included)."""
    src = ["--manifest", args.manifest] if args.manifest else (["--zoo", args.zoo] if args.zoo else [])
    parts = [args.recipe, *src, "--dev-domains", *args.dev_domains, "--trials", str(args.trials), "--budget",
             f"{args.budget:g}", "--dev-size", str(args.dev_size), "--top", str(args.top), "--seed", str(args.seed)]
    parts += (["--limit", str(args.limit)] if args.limit else []) + (["--no-scope"] if args.no_scope else [])
    return " ".join(["python -m graft_ui tune", *map(shlex.quote, parts), "--out", shlex.quote(args.out)])


def cmd_tune(args: argparse.Namespace) -> int:
    from graft_ui.recipe import Recipe
    from graft_ui.tune.tuner import TuneConfig, Tuner

    os.environ.setdefault("TQDM_DISABLE", "1")  # one line per trial instead of a bar per merge
    if bool(args.storage) != bool(args.study_name):
        raise ValueError("--storage and --study-name go together (a shared study is named in its storage)")
    if args.recipe == "report" and not os.path.isfile(args.recipe):
        return cmd_report(args)
    if not args.dev_domains:
        raise ValueError("--dev-domains DOMAIN [...] is required to tune")
    if not args.out and not args.storage:
        raise ValueError("--out DIR is required (only a shared-study worker, with --storage, writes no report)")
    config = TuneConfig(dev_domains=tuple(args.dev_domains), trials=args.trials, budget_s=args.budget,
                        dev_size=args.dev_size, top=args.top, seed=args.seed, scope=not args.no_scope,
                        heldout_limit=args.limit, batch_size=args.batch_size, device=args.device)
    manifest = load_manifest_arg(args, default_zoo="full")
    with tempfile.TemporaryDirectory(prefix="graft-tune-") as tmp:
        tuner = Tuner(Recipe.load(args.recipe), manifest, config, work_dir=os.path.join(args.out or tmp, "work"),
                      storage=args.storage, study_name=args.study_name, heartbeat_s=args.heartbeat)
        return _search(args, tuner, config)


def _search(args: argparse.Namespace, tuner, config) -> int:
    if args.storage:
        role = "created" if tuner.created else "joined"
        print(f"{role} shared study {args.study_name!r} in {redact(args.storage)}: {config.trials} trial(s) in all",
              flush=True)
    print(f"tuning {tuner.recipe.method} on {', '.join(f'{d} ({len(s.items)} dev items)' for d, s in tuner.splits.items())}: "
          f"{len(tuner.dims)} dimension(s), at most {config.trials} trial(s) in {config.budget_s:.0f} s", flush=True)
    for t in tuner.run():
        dev = ", ".join(f"{d} {a:.1f}" for d, a in t.dev.items()) or t.error
        tag = " (defaults)" if t.default else ""
        print(f"trial {t.number}{tag}: mean {t.mean if t.mean is None else round(t.mean, 1)} ({dev}); "
              f"{t.seconds:.1f} s, elapsed {t.elapsed:.0f} s", flush=True)
    if args.storage:
        print(f"search over: {tuner.stopped}; this worker ran {len(tuner.own_seconds)} trial(s). Once every worker has "
              f"ended: python -m graft_ui tune report --storage {shlex.quote(redact(args.storage))} "
              f"--study-name {shlex.quote(args.study_name)} --out DIR", flush=True)
        return 0
    print(f"search over: {tuner.stopped}; scoring the defaults and the best {config.top} on held-out data", flush=True)
    return _report(args, tuner, canonical_command(args))


def cmd_report(args: argparse.Namespace) -> int:
    """`tune report`: the held-out report of a shared study, from what the study stores."""
    from graft_ui.tune.tuner import Tuner

    if not (args.storage and args.out):
        raise ValueError("tune report needs --storage URL, --study-name NAME and --out DIR")
    manifest = load_manifest_arg(args)  # None: the manifest the study was created with
    tuner = Tuner.attach(args.storage, args.study_name, manifest, os.path.join(args.out, "work"),
                         heldout_limit=args.limit, top=args.top, device=args.device, batch_size=args.batch_size)
    tuner.reference_scores()  # the experts' dev marks on the Pareto figure
    print(f"{tuner.stopped}; scoring the defaults and the best {tuner.config.top} on held-out data", flush=True)
    command = (f"python -m graft_ui tune report --storage {shlex.quote(redact(args.storage))} "
               f"--study-name {shlex.quote(args.study_name)} --out {shlex.quote(args.out)}")
    return _report(args, tuner, command)


def _report(args: argparse.Namespace, tuner, command: str) -> int:
    from graft_ui.tune.report import write

    result = tuner.finish()
    paths = write(result, args.out, command)
    try:
        os.rmdir(os.path.join(args.out, "work"))  # each trial's fusion is deleted once scored: drop the empty folder
    except OSError:
        pass
    for r in result["heldout"]["rows"]:
        print(f"held-out {r['label']:<20} " + "  ".join(f"{d} {a:5.1f}" for d, a in r["accuracy"].items())
              + f"  mean {r['mean']:5.1f}")
    if result["verdict"]:
        print(result["verdict"])
    print(f"wrote {paths['markdown']} and {paths['json']}")
    return 0


__all__ = ["add_parser", "cmd_tune"]
