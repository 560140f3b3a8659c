"""What the fusion-quality study tells the app : gains in ② Analyze, warnings in ③ Fuse.

The study of the loaded zoo is found by graft_ui.study.lookup (the zoo's own
`study/study.json`, else the committed one). A study whose build fingerprint (weights hash
included) differs from the loaded zoo's is quoted as "measured on another build of this
zoo", never as a measurement of the loaded weights. It is
looked up at call time, keyed by the manifest and the candidate files' modification
times, so a study written while the app runs is picked up and another manifest gets its own.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from graft_ui.analysis.scores import DEFAULT_THRESHOLD
from graft_ui.study.lookup import COMMITTED, find_study, pair_gain, pair_row
from graft_ui.study.lookup import fuse_warning as sentence

log = logging.getLogger(__name__)

_CACHE: dict[tuple, Any] = {}


def _candidates(folder: Path) -> list[Path]:
    return [folder / "study" / "study.json", COMMITTED]


def study_for(studio) -> dict | None:
    """The study of the studio's current manifest, or None (not a zoo, or no matching study)."""
    source = getattr(studio.manifest, "source", None)
    if not source:
        return None
    folder = Path(source).parent
    files = _candidates(folder)
    key = (str(folder), *[(p.stat().st_mtime_ns if p.is_file() else None) for p in files])
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = find_study(folder, files)
    return _CACHE[key]


def gain_cell(study: dict | None, a: str, b: str) -> str:
    """'+3.2 (measured)', '−5.0 (predicted)', '+3.2 (measured on another build of this zoo)' or '—'
    for the Analyze tab's pair table."""
    g = pair_gain(study, a, b)
    if g is None:
        return "—"
    return f"{g['gain']:+.1f} ({g['source']}" + (" on another build of this zoo)" if "build" in g else ")")


def pair_compatibility(study: dict | None, a: str, b: str) -> float | None:
    row = pair_row(study, a, b)
    return None if row is None or row.get("pair_score") is None else float(row["pair_score"])


def fuse_warning(studio, experts: list[str] | None, threshold: float | None = None) -> str:
    """A sentence warning about the first two selected experts, or '' when there is nothing to say.

    The pair's compatibility comes from the study (measured on the union of the two experts'
    domains), compared with the Analyze tab's default threshold.
    """
    if not experts or len(experts) < 2:
        return ""
    study = study_for(studio)
    if study is None:
        return ""
    a, b = experts[0], experts[1]
    text = sentence(study, a, b, pair_compatibility(study, a, b), DEFAULT_THRESHOLD if threshold is None else threshold)
    return text or ""
