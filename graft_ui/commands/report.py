"""`python -m graft_ui report --variant NAME_OR_FOLDER --out FILE.html`: the stakeholder report.

    python -m graft_ui report --variant graft-1 --out graft-1.html [--zoo ci | --manifest FILE]
                              [--work-dir DIR] [--votes SQLITE_OR_URL] [-k K] [--limit N] [--answers N]

NAME is a fused variant of the app's work folder (`<work dir>/fused/NAME`); a folder is any
merge output holding recipe.yaml (and gates.json). Without --manifest/--zoo the manifest
next to the recipe's base (a zoo's `base/`) is used. One self-contained HTML file
(graft_ui.report): it opens offline and prints to PDF.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from graft_ui.commands.common import add_manifest_args, load_manifest_arg


def add_parser(subparsers) -> None:
    r = subparsers.add_parser(
        "report", help="one self-contained HTML report about a fused variant",
        description="Recipe, experts and base, compatibility and sensitivity on the target data, gate maps, "
        "held-out accuracy of base/experts/fused, side-by-side answers and the arena leaderboard, in one "
        "HTML file that loads nothing from the network.",
    )
    r.add_argument("--variant", required=True, metavar="NAME_OR_FOLDER",
                   help="a fused variant's name in the work folder, or a merge output folder")
    r.add_argument("--out", required=True, metavar="FILE.html", help="the report file to write")
    add_manifest_args(r)
    r.add_argument("--work-dir", metavar="DIR", help="the app's work folder (default: $GRAFT_STUDIO_DIR or runs/studio)")
    r.add_argument("--votes", metavar="SQLITE_OR_URL", help="the arena's vote store (default: the app's default)")
    r.add_argument("-k", "--k", type=int, default=16, help="target samples for the sensitivity analysis (default 16)")
    r.add_argument("--limit", type=int, help="first N samples of each held-out split (default: all)")
    r.add_argument("--answers", type=int, default=3, help="side-by-side answers per domain (default 3)")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    r.set_defaults(func=cmd_report)


def variant_folder(spec: str, work_dir: str | Path | None = None) -> Path:
    """A merge output folder, or the folder of the fused variant named `spec` in the work folder."""
    from graft_ui.studio import check_variant_name, default_work_dir

    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    fused = Path(work_dir or default_work_dir()) / "fused"
    if "/" not in spec and (fused / check_variant_name(spec)).is_dir():
        return fused / spec
    known = sorted(p.name for p in fused.iterdir() if (p / "recipe.yaml").is_file()) if fused.is_dir() else []
    raise FileNotFoundError(f"--variant {spec!r} is neither a folder nor a fused variant in {str(fused)!r} "
                            f"(variants there: {known or 'none'})")


def manifest_beside_base(folder: Path):
    """The manifest in the folder above the recipe's base (a zoo's manifest.yaml), or None."""
    from graft_ui.models.manifest import load_manifest
    from graft_ui.recipe import Recipe

    base = Recipe.load(folder / "recipe.yaml").base
    candidate = Path(base).parent / "manifest.yaml" if base else None
    return load_manifest(candidate) if candidate is not None and candidate.is_file() else None


def cmd_report(args: argparse.Namespace) -> int:
    from graft_ui.arena.store import open_store
    from graft_ui.checks import number
    from graft_ui.models.loading import resolve_device
    from graft_ui.report import write_report

    k = number("-k", args.k, integer=True, low=1, high=512)
    limit = None if args.limit is None else number("--limit", args.limit, integer=True, low=1)
    answers = number("--answers", args.answers, integer=True, low=0)
    folder = variant_folder(args.variant, args.work_dir)
    manifest = load_manifest_arg(args) or manifest_beside_base(folder)
    if manifest is None:
        raise ValueError(f"no manifest beside the base of {str(folder)!r}: give --manifest FILE or --zoo PROFILE_OR_DIR")
    with open_store(args.votes) as store:
        votes = store.votes()
    out = write_report(manifest, folder, args.out, votes=votes, k=k, limit=limit, answers_per_domain=answers,
                       device=str(resolve_device(args.device)))
    print(f"wrote {out}")
    return 0
