"""Where the advisor's training data comes from, and the predictor of each kind fitted on it.

The training data is a fusion-quality study (`python -m graft_ui study`, docs/STUDY.md): its
Table-2 rows give, per expert pair, the signals and the measured gain. The study used is,
in this order:

    1. a path the caller gives (`advise --study PATH`), which must exist;
    2. $GRAFT_ADVISOR_STUDY (how a user points the app at a study), which must exist;
    3. the committed full-zoo study, docs/results/zoo-full/study.json, when it is there;

else there is no fitted predictor, and `NoPredictor` says how to make one. An explicit path
wins over the committed study so that a test or a user can fit on another zoo on purpose.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from graft_ui.advisor.fit import DEFAULT_LAMBDA, MIN_PAIRS, Ridge, fit_ridge, heldout_metrics, loo_predictions
from graft_ui.study.lookup import COMMITTED

log = logging.getLogger(__name__)

ENV = "GRAFT_ADVISOR_STUDY"
# the study's informative, cheap-to-get signals: activation compatibility of the pair (paper §3.4),
# task-vector cosine (no forward pass), and the stronger expert's standalone score on the pair's domains
FEATURES = ("pair_score", "tv_cosine", "best_single")
TARGET = "gain_graft"  # Graft at its defaults; "gain_best" = the best default method's gain
HOW_TO_FIT = ("run `python -m graft_ui study --zoo full --out docs/results/zoo-full`, or point to a study.json "
              f"with --study PATH (the app: ${ENV})")


class NoPredictor(ValueError):
    """No study to fit on, or too few usable pairs of a kind."""


def locate_study(explicit: str | Path | None = None) -> Path:
    """The study file to fit on (order in the module docstring); raises NoPredictor when there is none."""
    for given, what in ((explicit, "the study given"), (os.environ.get(ENV) or None, f"${ENV}")):
        if given:
            path = Path(given)
            path = path / "study.json" if path.is_dir() else path
            if not path.is_file():
                raise FileNotFoundError(f"{what}, {str(path)!r}, is not a study.json file")
            return path
    if COMMITTED.is_file():
        return COMMITTED
    raise NoPredictor(f"No fitted predictor exists: there is no study to fit on ({COMMITTED} is absent); {HOW_TO_FIT}.")


def load_study(path: str | Path) -> dict:
    try:
        study = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(study, Mapping) or not isinstance(study.get("pairs"), list):
        raise ValueError(f"{path} is not a fusion study (no 'pairs' table); {HOW_TO_FIT}")
    return dict(study, _path=str(path))


@dataclass(frozen=True)
class Predictor:
    """The gain predictor of one kind (lora | full), fitted on a study's pairs of that kind."""

    kind: str
    target: str
    model: Ridge
    heldout: dict  # rho, p, rmse, mae, n (leave-one-pair-out)
    training: list = field(default_factory=list)  # [{pair, measured, heldout_prediction}]
    source: str = ""  # the study file
    zoo: dict = field(default_factory=dict)  # the study's zoo: fingerprint, manifest

    @property
    def features(self) -> tuple[str, ...]:
        return self.model.features

    @property
    def error(self) -> float:
        """The ± of a prediction: the held-out RMSE, in points of mean accuracy."""
        return float(self.heldout["rmse"])

    def predict(self, signals: Mapping[str, float | None]) -> float:
        missing = [f for f in self.features if signals.get(f) is None]
        if missing:
            raise ValueError(f"cannot predict without the signal(s) {missing}")
        return self.model.predict([float(signals[f]) for f in self.features])

    def quality(self) -> str:
        """'held-out Spearman ρ +0.29, RMSE 3.1 points (leave-one-pair-out over 6 lora pairs)'."""
        h = self.heldout
        rho = f"{h['rho']:+.2f}" if h["rho"] is not None else f"undefined ({h['rho_note']})"
        return (f"held-out Spearman ρ {rho}, RMSE {h['rmse']:.1f}, MAE {h['mae']:.1f} points "
                f"(leave-one-pair-out over {h['n']} {self.kind} pairs)")


def usable_rows(study: Mapping, kind: str, features: Sequence[str] = FEATURES, target: str = TARGET) -> list[dict]:
    return [r for r in study["pairs"] if r.get("kind") == kind and r.get(target) is not None
            and all(r.get(f) is not None for f in features)]


def fit_kind(study: Mapping, kind: str, *, features: Sequence[str] = FEATURES, target: str = TARGET,
             lam: float = DEFAULT_LAMBDA) -> Predictor:
    """The predictor of `kind` fitted on the study's pairs; NoPredictor when it has too few."""
    rows = usable_rows(study, kind, features, target)
    if len(rows) < MIN_PAIRS:
        raise NoPredictor(f"the study {study.get('_path', '')} has {len(rows)} {kind} pair(s) with "
                          f"{', '.join([*features, target])}; a predictor needs {MIN_PAIRS}")
    X = [[float(r[f]) for f in features] for r in rows]
    y = [float(r[target]) for r in rows]
    loo = loo_predictions(X, y, features, lam)
    model = fit_ridge(X, y, features, lam)
    zoo = dict(study.get("zoo") or {})
    return Predictor(kind=kind, target=target, model=model, heldout=heldout_metrics(loo, y),
                     training=[{"pair": r["pair"], "measured": v, "heldout_prediction": p}
                               for r, v, p in zip(rows, y, loo)],
                     source=str(study.get("_path", "")), zoo={"fingerprint": zoo.get("fingerprint"),
                                                             "manifest": zoo.get("manifest")})


def fit_all(study: Mapping, **kwargs) -> dict[str, Predictor | str]:
    """{kind: Predictor, or the reason it could not be fitted} for every kind in the study."""
    out: dict[str, Predictor | str] = {}
    for kind in dict.fromkeys(r.get("kind") for r in study["pairs"]):
        try:
            out[kind] = fit_kind(study, kind, **kwargs)
        except NoPredictor as exc:
            out[kind] = str(exc)
    return out


def provenance(pred: Predictor, zoo_fingerprint: Mapping | None) -> str:
    """One sentence: what the predictor was fitted on, and whether that is the loaded model set."""
    fp = pred.zoo.get("fingerprint") or {}
    where = f"the {fp.get('profile')} demo zoo" if fp.get("profile") else f"the study {pred.source}"
    if zoo_fingerprint and fp and dict(zoo_fingerprint) == dict(fp):
        return f"Fitted on this zoo's own study ({where}); {pred.quality()}."
    return (f"The predictor was fitted on {where}, not on the loaded experts: for your own experts its forecast is "
            f"a prior from that zoo, not a measurement ({pred.quality()}).")


def load_predictor(kind: str, explicit: str | Path | None = None, **kwargs) -> tuple[Predictor, dict]:
    """(the predictor of `kind`, the study it was fitted on), from the study `locate_study` finds."""
    study = load_study(locate_study(explicit))
    return fit_kind(study, kind, **kwargs), study
