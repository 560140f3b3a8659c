"""Trial expert designs on a built zoo's base: does a design meet the regime targets, and by how much?

Training amplifies float rounding, so a design that gains +30 points with one seed may gain +20
with another, or on another CPU. Before a design goes into a profile, train it (and its seed
variants, `seed_offset`) on the base of a zoo built on the CPU in question and read the gains:

    python -m graft_ui zoo trial --zoo ~/.cache/graft_ui/zoo/full --out /tmp/trial \\
        --design '{"domain": "finance", "steps": 800}' --design '{"domain": "finance", "steps": 800, "seed_offset": 1000}'

Each design is built as a zoo of its own profile (the source zoo's profile with `experts`
replaced) that reuses the source's base (`build.build_zoo` with `base_from`), so nothing of
the source zoo changes; the self-check scores base and trial experts on every domain. A
design's training seed depends on its index in the list (`stages.train_expert_pair`), so the
same design at another position is another seed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, replace
from pathlib import Path

from graft_ui.zoo.build import BUILD_INFO, build_zoo
from graft_ui.zoo.profiles import KINDS, REPLAY, ExpertSpec, get_profile
from graft_ui.zoo.selfcheck import expert_deltas

log = logging.getLogger(__name__)


def design_spec(design: dict) -> ExpertSpec:
    """An ExpertSpec from a design dict; the profiles' REPLAY mix is the default, as in `full`."""
    if "domain" not in design or "steps" not in design:
        raise ValueError(f"a trial design needs 'domain' and 'steps'; got {design!r}")
    fields = set(ExpertSpec.__dataclass_fields__)
    unknown = sorted(set(design) - fields)
    if unknown:
        raise ValueError(f"unknown design field(s) {unknown}; known: {sorted(fields)}")
    return ExpertSpec(**{**REPLAY, **design})


def trial_designs(zoo: str | Path, designs: list[dict], out_dir: str | Path) -> list[dict]:
    """Train `designs` on the base of the built zoo `zoo` into `out_dir` (replaced) and return one
    row per expert: name, domain, kind, gain over the base on its own domain and the largest drop
    elsewhere (points), with the regime targets' verdict."""
    zoo = Path(zoo).expanduser().resolve()
    info = json.loads((zoo / BUILD_INFO).read_text())
    specs = [design_spec(d) for d in designs]
    names = [s.name(k) for s in specs for k in KINDS]
    if len(set(names)) != len(names):
        raise ValueError(f"trial designs need distinct names (set 'variant'); got {names}")
    prof = replace(get_profile(info["profile"]), name=f"{info['profile']}-trial", experts=tuple(specs),
                   base_from=info["profile"], self_check=True, self_check_fusions=False, resumable=False,
                   strict=False)
    out = build_zoo(out_dir, prof, force=True, progress=False, base_from=zoo)
    check = json.loads((out / BUILD_INFO).read_text())["self_check"]
    rows = []
    for spec in specs:
        for kind in KINDS:
            name = spec.name(kind)
            gain, drops = expert_deltas(check["models"], name, spec.domain)
            worst = max(drops, key=drops.get)
            rows.append({"name": name, "domain": spec.domain, "kind": kind, "design": asdict(spec),
                         "gain": round(gain, 1), "worst_drop": round(drops[worst], 1), "worst_drop_on": worst,
                         "accuracy": {d: r["accuracy"] for d, r in check["models"][name]["domains"].items()},
                         "missed": [m for m in check["missed_targets"] if m.startswith(name + " ")]})
    log.info("trial of %d design(s) on %s written to %s", len(specs), zoo, out)
    return rows


def trial_markdown(rows: list[dict]) -> str:
    lines = ["| expert | gain on own domain | largest drop elsewhere | targets |", "|---|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['gain']:+.1f} | {r['worst_drop']:+.1f} ({r['worst_drop_on']}) | "
                     + ("; ".join(r["missed"]) or "met") + " |")
    return "\n".join(lines)
