"""`python -m graft_ui zoo ...`: build or list the offline demo zoo.

    python -m graft_ui zoo build [--profile full|ci] [--force] [--dir DIR] [--train-base]
    python -m graft_ui zoo list [--profile full|ci] [--dir DIR] [--json]
    python -m graft_ui zoo trial --zoo DIR --out DIR --design JSON [--design JSON ...] [--json]
    python -m graft_ui zoo export-base --zoo DIR [--dest DIR]
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from graft_ui.models.manifest import load_manifest
from graft_ui.zoo import PROFILES, ensure_zoo, get_profile, is_built, zoo_dir
from graft_ui.zoo.build import BUILD_INFO, build_zoo

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    profiles = sorted(PROFILES)
    zoo = subparsers.add_parser("zoo", help="build or list the offline demo zoo",
                                description="The offline demo zoo (tiny Qwen2-VL + four domain experts).")
    zsub = zoo.add_subparsers(dest="zoo_command", metavar="SUBCOMMAND")
    b = zsub.add_parser("build", help="build the zoo (seeded, with progress)")
    b.add_argument("--profile", choices=profiles, default="full")
    b.add_argument("--force", action="store_true", help="rebuild even if it exists")
    b.add_argument("--dir", help="build here instead of $GRAFT_ZOO_DIR/<profile> or ~/.cache/graft_ui/zoo/<profile>")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.add_argument("--base-from", metavar="DIR",
                   help="for a profile that reuses another zoo's base (study: the full zoo's): that built zoo's "
                        "folder (default: its profile's folder, built first when missing)")
    b.add_argument("--train-base", action="store_true",
                   help="train the base here even when the profile ships a prebuilt one (graft_ui/zoo/prebuilt.py)")
    b.set_defaults(func=cmd_zoo_build)
    ls = zsub.add_parser("list", help="print the zoo manifest")
    ls.add_argument("--profile", choices=profiles, default="full")
    ls.add_argument("--dir", help="a zoo folder (default: the profile's cache folder)")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=cmd_zoo_list)
    t = zsub.add_parser("trial", help="train expert designs on a built zoo's base and print their gains",
                        description="Train expert designs on the base of a built zoo (which is not changed) and "
                                    "score them against the regime targets (graft_ui/zoo/trial.py).")
    t.add_argument("--zoo", required=True, help="a built zoo folder whose base the designs train on")
    t.add_argument("--out", required=True, help="the trial zoo's folder (replaced)")
    t.add_argument("--design", action="append", required=True, metavar="JSON",
                   help='an expert design, e.g. \'{"domain": "finance", "steps": 800, "seed_offset": 1000}\' '
                        "(ExpertSpec fields; repeat for more)")
    t.add_argument("--json", action="store_true", help="machine-readable output")
    t.set_defaults(func=cmd_zoo_trial)
    e = zsub.add_parser("export-base", help="ship a built zoo's base as its profile's prebuilt base",
                        description="Copy the base of a built zoo, with the settings and data hash it was trained "
                                    "with, to graft_ui/zoo/prebuilt/<profile> (graft_ui/zoo/export.py).")
    e.add_argument("--zoo", required=True, help="a built zoo folder that trained its own base")
    e.add_argument("--dest", help="write here instead of graft_ui/zoo/prebuilt/<profile>")
    e.set_defaults(func=cmd_zoo_export_base)
    zoo.set_defaults(func=lambda args: (zoo.print_help(), 2)[1])


def _zoo_path(args) -> Path:
    return Path(args.dir).expanduser() if getattr(args, "dir", None) else zoo_dir(args.profile)


def cmd_zoo_build(args) -> int:
    t = time.time()
    if args.dir or args.base_from or args.train_base:
        path = _zoo_path(args)
        if is_built(path) and not args.force:
            print(f"zoo already built: {path} (use --force to rebuild)")
            return 0
        prof = get_profile(args.profile)
        prof = prof.with_overrides(prebuilt_base=None) if args.train_base else prof
        path = build_zoo(path, prof, force=True, progress=not args.quiet, base_from=args.base_from)
    else:
        path = ensure_zoo(args.profile, force=args.force, progress=not args.quiet)
    info = json.loads((path / BUILD_INFO).read_text())
    print(f"zoo ({info['profile']}) ready at {path}  [built in {info['seconds']:.0f} s; this command {time.time() - t:.0f} s]")
    if info.get("self_check"):
        print((path / "self_check.md").read_text())
    return 0


def zoo_listing(path: Path) -> dict:
    """The manifest as JSON-able dict, with each expert's eval split, plus build info."""
    m = load_manifest(path)
    info_path = Path(path) / BUILD_INFO
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    experts = []
    for e in m.experts:
        ds = m.datasets.get(e.domain) if e.domain else None
        experts.append({"name": e.name, "domain": e.domain, "kind": e.kind, "path": e.path,
                        "eval": ds.eval if ds else None, "train": ds.train if ds else None})
    return {
        "zoo": str(Path(path).resolve()),
        "manifest": m.source,
        "name": m.name,
        "base": {"name": m.base.name, "path": m.base.path, "kind": m.base.kind},
        "experts": experts,
        "datasets": {d: {"eval": v.eval, "train": v.train} for d, v in m.datasets.items()},
        "build": {k: info.get(k) for k in ("profile", "seed", "seconds", "built_at", "host", "parameters", "versions",
                                           "weights_hash", "base_prebuilt", "base_from") if k in info},
    }


def cmd_zoo_list(args) -> int:
    path = _zoo_path(args)
    if not is_built(path):
        raise FileNotFoundError(
            f"no {args.profile} zoo at {str(path)!r}; build it with `python -m graft_ui zoo build --profile {args.profile}`")
    listing = zoo_listing(path)
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    print(f"zoo {listing['name']} at {listing['zoo']}")
    build = listing["build"]
    origin = ""
    if build.get("base_prebuilt"):
        origin = f"  (prebuilt, trained on {build['base_prebuilt'].get('trained_on')})"
    elif build.get("base_from"):
        origin = f"  (from {build['base_from'].get('path')})"
    print(f"  base     {listing['base']['path']}{origin}")
    for e in listing["experts"]:
        print(f"  {e['name']:<14} {e['kind']:<5} {e['domain']:<8} {e['path']}")
    for d, v in listing["datasets"].items():
        print(f"  data {d:<9} eval {v['eval']}")
    return 0


def cmd_zoo_trial(args) -> int:
    from graft_ui.zoo.trial import trial_designs, trial_markdown

    designs = []
    for text in args.design:
        try:
            designs.append(json.loads(text))
        except json.JSONDecodeError as e:
            raise ValueError(f"--design {text!r} is not JSON: {e}") from None
        if not isinstance(designs[-1], dict):
            raise ValueError(f"--design {text!r} is not a JSON object")
    rows = trial_designs(args.zoo, designs, args.out)
    print(json.dumps(rows, indent=1) if args.json else trial_markdown(rows))
    return 0


def cmd_zoo_export_base(args) -> int:
    from graft_ui.zoo.export import export_base
    from graft_ui.zoo.prebuilt import META

    dest = export_base(args.zoo, args.dest)
    print(f"prebuilt base written to {dest}")
    print((dest / META).read_text())
    return 0
