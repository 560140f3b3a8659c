"""Find the study of a loaded zoo and read per-pair answers from it (no torch: the app calls this).

A study belongs to a zoo when its recorded build fingerprint equals the zoo's: the
`format`, `profile` and `seed` of build_info.json, a hash of its `settings` and the hash of
its weights (`weights_hash`, written by the build). The build is seeded, but training
amplifies float rounding, so the same settings give other weights on another CPU (a zoo
built on an AVX2 machine scored 5-20 points apart from one built on an AVX-512 machine in
some cells): the numbers of a study belong to the weights it measured.

A study of the same profile whose fingerprint differs is still returned, marked
`measured_on: "another build"`, so the app can quote it as "measured on another build of
this zoo" and never as a measurement of the loaded weights; an exact match is marked
`measured_on: "this build"`.

Search order: `<zoo>/study/study.json`, then the committed study.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger(__name__)

BUILD_INFO = "build_info.json"
COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "results" / "zoo-full" / "study.json"
LARGE_LOSS = -10.0  # points of mean accuracy below the better expert: worth a warning before fusing


def settings_hash(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


THIS_BUILD, ANOTHER_BUILD = "this build", "another build"


def fingerprint(build_info: Mapping[str, Any]) -> dict[str, Any]:
    return {"format": build_info.get("format"), "profile": build_info.get("profile"),
            "seed": build_info.get("seed"), "settings_hash": settings_hash(build_info.get("settings") or {}),
            "weights_hash": build_info.get("weights_hash")}


def zoo_fingerprint(zoo_dir: str | Path) -> dict[str, Any] | None:
    """The fingerprint of the zoo at `zoo_dir` (a folder or its manifest.yaml); None if it is no zoo."""
    path = Path(zoo_dir)
    folder = path.parent if path.is_file() else path
    try:
        return fingerprint(json.loads((folder / BUILD_INFO).read_text()))
    except (OSError, json.JSONDecodeError):
        return None


def find_study(zoo_dir: str | Path | None, candidates: list[Path] | None = None) -> dict | None:
    """The study of the zoo at `zoo_dir`, or None; its `measured_on` says whose weights it measured.

    A study whose fingerprint equals the zoo's is preferred ("this build"); else the first one of
    the zoo's profile ("another build": other weights or settings, e.g. built on another CPU).
    """
    if zoo_dir is None:
        return None
    fp = zoo_fingerprint(zoo_dir)
    if fp is None:
        return None
    folder = Path(zoo_dir).parent if Path(zoo_dir).is_file() else Path(zoo_dir)
    other = None
    for path in candidates if candidates is not None else [folder / "study" / "study.json", COMMITTED]:
        try:
            study = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        theirs = (study.get("zoo") or {}).get("fingerprint") or {}
        if theirs == fp and fp.get("weights_hash"):
            log.info("using the fusion study %s for the zoo at %s", path, folder)
            return {**study, "measured_on": THIS_BUILD}
        if other is None and theirs.get("profile") == fp.get("profile"):
            log.info("the fusion study %s measured another build of the %s zoo", path, fp.get("profile"))
            other = {**study, "measured_on": ANOTHER_BUILD}
    return other


def measured_on_this_build(study: Mapping | None) -> bool:
    """Whether the study measured the loaded zoo's own weights (see `find_study`)."""
    return bool(study) and study.get("measured_on") == THIS_BUILD


def pair_row(study: Mapping | None, a: str, b: str) -> dict | None:
    """The study's Table-2 row of the pair {a, b} (either order), or None."""
    if not study:
        return None
    for row in study.get("pairs") or []:
        if {row.get("a"), row.get("b")} == {a, b}:
            return row
    return None


def pair_gain(study: Mapping | None, a: str, b: str) -> dict | None:
    """{"gain", "source": "measured"|"predicted", "method"} for Graft at defaults on the pair, or None.

    Measured when the study fused the pair; otherwise the study's two-factor fit applied
    to the pair's scores when the study recorded them (a prediction, and labelled so).
    `build: "another build"` is added when the study measured other weights than the loaded zoo's.
    """
    row = pair_row(study, a, b)
    if row is None:
        return None
    build = {} if measured_on_this_build(study) or "measured_on" not in study else {"build": study["measured_on"]}
    if row.get("gain_graft") is not None:
        return {"gain": float(row["gain_graft"]), "source": "measured", "method": "graft",
                "best_method": row.get("best_method"), "best_gain": row.get("gain_best"), **build}
    if row.get("predicted_gain") is not None:
        return {"gain": float(row["predicted_gain"]), "source": "predicted", "method": "graft", **build}
    return None


def fuse_warning(study: Mapping | None, a: str, b: str, score: float | None, threshold: float) -> str | None:
    """One plain sentence for the Fuse tab, or None when nothing argues against fusing this pair."""
    parts = []
    if score is not None and score < threshold:
        parts.append(f"The pair {a} + {b} scores {score:.3f} on compatibility, below the threshold {threshold:g}")
    g = pair_gain(study, a, b)
    if g is not None and g["gain"] <= LARGE_LOSS:
        how = "measured" if g["source"] == "measured" else "predicted"
        where = "the fusion study" if "build" not in g else \
            "on another build of this zoo (other weights, not these), the fusion study"
        parts.append(f"{where} {how} that Graft at its defaults loses {-g['gain']:.1f} points of mean "
                     f"accuracy against the better of the two experts")
        if g.get("best_method") and g.get("best_method") != "graft" and g.get("best_gain") is not None:
            parts[-1] += f" ({g['best_method']} does best there: {g['best_gain']:+.1f})"
    if not parts:
        return None
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."
