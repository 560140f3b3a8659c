"""What several commands share: where the manifest comes from, and the analysis scope flags.

`--manifest FILE` or `--zoo PROFILE_OR_DIR` mean the same in every command: a manifest file
(or a folder holding manifest.yaml), or the demo zoo given as a profile name (`ci`, `full`;
built if missing) or as a zoo folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from graft_ui.models.manifest import Manifest, load_manifest
from graft_ui.recipe import ALL_MODULES, Scope
from graft_ui.zoo import PROFILES, ensure_zoo


def add_manifest_args(p: argparse.ArgumentParser, *, required: bool = False, manifest_help: str | None = None) -> None:
    src = p.add_mutually_exclusive_group(required=required)
    src.add_argument("--manifest", metavar="FILE",
                     help=manifest_help or "manifest YAML/JSON (or a folder holding manifest.yaml)")
    src.add_argument("--zoo", metavar="PROFILE_OR_DIR",
                     help="the demo zoo: a profile (ci, full; built if missing) or a zoo folder")


def load_manifest_arg(args: argparse.Namespace, *, default_zoo: str | None = None,
                      progress: bool | None = None) -> Manifest | None:
    """The manifest `--manifest` / `--zoo` name; `default_zoo` (a profile) when neither is
    given, else None."""
    if getattr(args, "manifest", None):
        return load_manifest(args.manifest)
    zoo = getattr(args, "zoo", None) or default_zoo
    if zoo is None:
        return None
    if Path(zoo).exists():
        return load_manifest(zoo)
    if zoo not in PROFILES:
        raise ValueError(f"--zoo {zoo!r} is neither a zoo folder nor a profile ({', '.join(sorted(PROFILES))})")
    return load_manifest(ensure_zoo(zoo, progress=progress))


def add_scope_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--modules", help="comma-separated module types in scope (default: all of q,k,v,o,gate,up,down)")
    p.add_argument("--layers", default="all", help="'all' or FIRST-LAST (inclusive language-model layers)")
    p.add_argument("--vision", action="store_true", help="include the vision tower's blocks")
    p.add_argument("--eps", type=float, default=None, help="sparsity threshold |a| < eps (default 1e-3)")
    p.add_argument("-k", "--k", type=int, default=32, help="number of target samples K (default 32)")
    p.add_argument("--seed", type=int, default=0, help="sample selection seed (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--no-png", action="store_true", help="HTML figures only, even if kaleido is installed")


def scope_arg(args: argparse.Namespace) -> Scope:
    modules = tuple(m.strip() for m in args.modules.split(",") if m.strip()) if args.modules else ALL_MODULES
    layers: str | tuple[int, int] = "all"
    if args.layers != "all":
        try:
            lo, hi = (int(x) for x in args.layers.split("-"))
        except ValueError:
            raise ValueError(f"--layers={args.layers!r} must be 'all' or FIRST-LAST, e.g. 0-11") from None
        layers = (lo, hi)
    return Scope(modules=modules, layers=layers, vision=bool(args.vision))


def split_names(text: str | None) -> list[str] | None:
    """Comma-separated names, or None for an empty / missing value."""
    return [e.strip() for e in text.split(",") if e.strip()] if text else None
