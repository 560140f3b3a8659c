"""The search: optuna's TPE sampler (seeded) over a method's parameters, scored on dev splits.

    tuner = Tuner(recipe, manifest, TuneConfig(dev_domains=("math", "code"), trials=40, budget_s=300))
    for trial in tuner.run():        # one TrialResult per finished trial (the UI redraws on each)
        ...
    result = tuner.finish()          # the best few + the default recipe scored on the held-out split

Honest by construction:
- trial 0 is the recipe as given (enqueued), so "default" is measured the same way as every trial;
- trials are scored on dev splits (tune.splits) that share no item with the held-out eval split,
  which is checked when the splits are made (SplitOverlap otherwise);
- the tuned recipe is the best trial *on dev* (ties: the earlier trial, so the defaults win a tie);
  the held-out numbers of it, of the next best few and of the defaults are reported side by side,
  and nothing is chosen on them;
- the sampler, the dev carving and every fusion are seeded (TuneConfig.seed, the recipe's seed).

The search stops at `trials`, when the next trial would likely end past `budget_s` (the
default trial always runs), or when `stop` is set (checked between trials). Held-out scoring
comes after the budget and is timed separately.

With `storage` (a database URL or a journal file, see tune.shared) and `study_name`, several
tuners on several machines fill one study: `trials` is then the study's count (a trial asked
once the study holds that many is pruned at once, never run), each tuner keeps its own time
budget, `results` lists every finished trial whoever ran it, and `Tuner.attach` rebuilds a
tuner from the stored study for the held-out report, run once when the workers are done.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from graft_ui.models import merge
from graft_ui.models.loading import is_adapter
from graft_ui.models.manifest import Manifest
from graft_ui.models.validate import num_layers
from graft_ui.recipe import Recipe
from graft_ui.study.worker import models_for, release_models
from graft_ui.tune import shared
from graft_ui.tune.space import apply, recipe_values, search_dims
from graft_ui.tune.splits import DEV_SIZE, DevSplit, dev_split
from graft_ui.zoo.evaluate import evaluate_model, generate_answers, score_domain

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuneConfig:
    dev_domains: tuple[str, ...]
    trials: int = 40
    budget_s: float = 300.0
    dev_size: int = DEV_SIZE
    top: int = 3  # trials besides the defaults scored on held-out data
    seed: int = 0
    scope: bool = True  # search the layer range and module types too
    heldout_limit: int | None = None  # first N held-out items per domain (None: all)
    batch_size: int = 16
    device: str = "cpu"

    def __post_init__(self):
        if not self.dev_domains:
            raise ValueError("name at least one dev domain to tune on")
        for name in ("trials", "dev_size", "top", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be at least 1")
        if not self.budget_s > 0:
            raise ValueError(f"budget_s={self.budget_s!r} must be a positive number of seconds")
        if self.heldout_limit is not None and self.heldout_limit < 1:
            raise ValueError(f"heldout_limit={self.heldout_limit!r} must be at least 1")


@dataclass
class TrialResult:
    number: int
    values: dict
    dev: dict  # domain -> accuracy %
    mean: float | None
    seconds: float
    elapsed: float  # since the search started
    default: bool = False
    error: str | None = None
    worker: str | None = None  # host:pid of the tuner that ran it

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Tuner:
    recipe: Recipe
    manifest: Manifest
    config: TuneConfig
    work_dir: Path
    stop: threading.Event = field(default_factory=threading.Event)
    storage: str | None = None  # shared study: a database URL or a journal file (tune.shared)
    study_name: str | None = None
    heartbeat_s: int = shared.HEARTBEAT_S

    def __post_init__(self):
        import optuna

        self.recipe = self.recipe.resolve_names(self.manifest)
        self.notes = []
        if self.recipe.calibrate is not None or self.recipe.phi:
            self.notes.append("the recipe's phi calibration / phi table is not used while tuning (alpha and beta "
                              "are searched as one value for every module)")
            self.recipe = self.recipe.replace(calibrate=None, phi={})
        self.n_layers = num_layers(self.manifest.base.path)
        self.dims = search_dims(self.recipe, self.n_layers, self.config.scope)
        self.splits: dict[str, DevSplit] = {d: dev_split(self.manifest, d, self.config.dev_size, self.config.seed)
                                            for d in dict.fromkeys(self.config.dev_domains)}
        self.work_dir = Path(self.work_dir)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.default_values = recipe_values(self.recipe, self.n_layers, self.config.scope)
        if self.storage:
            if not self.study_name:
                raise ValueError("a shared tuning storage needs a study name (--study-name)")
            self.study, self.created = shared.join_study(
                shared.open_storage(self.storage, self.heartbeat_s), self.study_name, self.spec(),
                seed=self.config.seed, defaults=self.default_values,
                attrs={"recipe": self.portable_recipe(), "manifest": str(self.manifest.source)})
        else:
            self.study = optuna.create_study(direction="maximize",
                                             sampler=optuna.samplers.TPESampler(seed=self.config.seed))
            self.study.enqueue_trial(self.default_values, user_attrs={"default": True})
            self.created = True
        self.results: list[TrialResult] = []
        self.own_seconds: list[float] = []  # this process's trial durations (its budget)
        self.experts_dev: dict[str, dict] = {}
        self.stopped = ""
        self.search_seconds = 0.0
        self._kind = None

    # ---- models -------------------------------------------------------------------------

    def _expert_entries(self) -> list:
        by_path = {e.path: e for e in self.manifest.experts}
        out = []
        for ref in self.recipe.experts:
            e = by_path.get(ref.path)
            if e is None:
                raise ValueError(f"recipe expert {ref.name or ref.path!r} is not an expert of manifest "
                                 f"{self.manifest.name!r}; tuning scores experts and fusions on its datasets")
            out.append(e)
        return out

    def _model(self, path: str | Path, kind: str):
        return models_for(self.manifest, self.config.device).model(str(path), kind)

    def _dev_scores(self, model) -> dict[str, float]:
        processor = models_for(self.manifest, self.config.device).processor
        out = {}
        for d, split in self.splits.items():
            answers = generate_answers(model, processor, list(split.items), split.root,
                                       batch_size=self.config.batch_size)
            ok = score_domain(list(split.items), answers)
            out[d] = 100.0 * sum(ok) / len(ok)
        return out

    def _fused(self, recipe: Recipe, tag: str) -> tuple[Path, str]:
        out = self.work_dir / tag
        merge.run_recipe(recipe, out, overwrite=True)
        return out, ("lora" if is_adapter(out) else "full")

    # ---- the search ---------------------------------------------------------------------

    def reference_scores(self) -> dict[str, dict]:
        """Each expert's dev accuracies (the Pareto plot's reference marks), once."""
        if not self.experts_dev:
            for e in self._expert_entries():
                self.experts_dev[e.name] = self._dev_scores(self._model(e.path, e.kind))
        return self.experts_dev

    def run(self) -> Iterator[TrialResult]:
        """Run the search, yielding each finished trial of this process (`results` has every one)."""
        self.reference_scores()
        t0 = time.perf_counter()
        cfg = self.config
        while True:
            elapsed = time.perf_counter() - t0
            if shared.started(self.study) >= cfg.trials:
                self.stopped = f"{cfg.trials} trial(s) done"
            elif self.stop.is_set():
                self.stopped = "stopped by the user"
            elif self.own_seconds and elapsed + sum(self.own_seconds) / len(self.own_seconds) > cfg.budget_s:
                self.stopped = f"time budget of {cfg.budget_s:.0f} s reached"
            if not self.stopped:
                r = self._trial(t0)
                if r is None:  # another worker took the last trial
                    self.stopped = f"{cfg.trials} trial(s) done"
            if self.stopped:
                break
            yield r
        self.refresh()
        self.search_seconds = time.perf_counter() - t0
        log.info("tuning: %d trial(s) in %.0f s (%s)", len(self.results), self.search_seconds, self.stopped)

    def _trial(self, t0: float) -> TrialResult | None:
        """One trial through Study.optimize (it fails stale trials first and sends this trial's
        heartbeat while it runs); None when the trial was pruned because the study is full."""
        ran: list[int] = []
        self.study.optimize(lambda trial: self._objective(trial, t0, ran), n_trials=1,
                            catch=(ValueError, RuntimeError, OSError))
        self.refresh()
        if not ran:
            return None
        mine = next(r for r in self.results if r.number == ran[0])
        self.own_seconds.append(mine.seconds)
        return mine

    def _objective(self, trial, t0: float, ran: list[int]) -> float:
        import optuna

        if trial.number >= self.config.trials:
            raise optuna.TrialPruned(f"the study already has its {self.config.trials} trial(s)")
        ran.append(trial.number)
        values = {d.name: d.suggest(trial) for d in self.dims}
        trial.set_user_attr("worker", shared.worker_name())
        start = time.perf_counter()
        out = self.work_dir / f"trial-{trial.number}"
        try:
            path, kind = self._fused(apply(self.recipe, values, self.n_layers), out.name)
            dev = self._dev_scores(self._model(path, kind))
        except (ValueError, RuntimeError, OSError) as exc:  # one bad point must not end the search
            log.warning("trial %d failed: %s", trial.number, exc)
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            shutil.rmtree(out, ignore_errors=True)
            trial.set_user_attr("seconds", time.perf_counter() - start)
            trial.set_user_attr("elapsed", time.perf_counter() - t0)
        trial.set_user_attr("dev", dev)
        return sum(dev.values()) / len(dev)

    def refresh(self) -> list[TrialResult]:
        """`results` from the study: every finished trial, by number."""
        names = [d.name for d in self.dims]
        self.results = [TrialResult(**shared.trial_record(t, names)) for t in shared.finished(self.study)]
        return self.results

    # ---- a shared study -------------------------------------------------------------------

    def spec(self) -> dict:
        """What every worker of a shared study must agree on (tune.shared.join_study compares it)."""
        c = self.config
        spec = {"method": self.recipe.method, "experts": [e.name or e.path for e in self.recipe.experts],
                "dims": [asdict(d) for d in self.dims], "defaults": self.default_values,
                "dev_domains": list(self.splits), "dev_size": c.dev_size, "seed": c.seed, "trials": c.trials}
        return json.loads(json.dumps(spec))  # as the storage gives it back (tuples become lists)

    def portable_recipe(self) -> dict:
        """The recipe with experts and base named, not located, so another machine's manifest resolves it."""
        experts = tuple(dataclasses.replace(e, path=e.name or e.path) for e in self.recipe.experts)
        return self.recipe.replace(experts=experts, base=None).to_dict()

    @classmethod
    def attach(cls, storage: str, study_name: str, manifest: Manifest | None, work_dir: Path, *,
               heldout_limit: int | None = None, top: int | None = None, device: str = "cpu",
               batch_size: int = 16) -> "Tuner":
        """A tuner on an existing shared study (for its held-out report): recipe and settings from the study;
        `manifest` None: the one its creator used (the same path must exist here)."""
        from graft_ui.models.manifest import load_manifest

        study, spec = shared.load_shared(storage, study_name)
        if manifest is None:
            manifest = load_manifest(study.user_attrs["manifest"])
        stored = study.user_attrs.get("recipe")
        if stored is None:
            raise ValueError(f"study {study_name!r} holds no recipe: it was not created by `python -m graft_ui tune`")
        config = TuneConfig(dev_domains=tuple(spec["dev_domains"]), trials=spec["trials"], dev_size=spec["dev_size"],
                            seed=spec["seed"], scope=any(d["name"] == "first_layer" for d in spec["dims"]),
                            heldout_limit=heldout_limit, top=top or TuneConfig.top, device=device,
                            batch_size=batch_size)
        tuner = cls(Recipe.from_dict(stored), manifest, config, work_dir, storage=storage, study_name=study_name)
        tuner.refresh()
        starts = [t.datetime_start for t in shared.finished(tuner.study) if t.datetime_start]
        ends = [t.datetime_complete for t in shared.finished(tuner.study) if t.datetime_complete]
        tuner.search_seconds = (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0
        workers = {r.worker for r in tuner.results if r.worker}
        tuner.stopped = f"shared study {study_name!r}: {len(tuner.results)} trial(s) from {len(workers)} worker(s)"
        return tuner

    # ---- after the search -----------------------------------------------------------------

    def ranked(self) -> list[TrialResult]:
        """Successful trials, best dev mean first; ties go to the earlier trial (the defaults win a tie)."""
        return sorted((r for r in self.results if r.mean is not None), key=lambda r: (-r.mean, r.number))

    def best(self) -> TrialResult | None:
        ranked = self.ranked()
        return ranked[0] if ranked else None

    def recipe_of(self, r: TrialResult) -> Recipe:
        return apply(self.recipe, r.values, self.n_layers)

    def finish(self) -> dict:
        """Score the defaults, the best `top` trials and the experts on the held-out split; the result dict."""
        t0 = time.perf_counter()
        default = next((r for r in self.results if r.default and r.mean is not None), None)
        candidates = [r for r in self.ranked() if not r.default][: self.config.top]
        best = self.best()
        datasets = {d: self.manifest.dataset(d).eval for d in self.splits}
        rows = []
        try:
            for e in self._expert_entries():
                rows.append(self._heldout_row(e.name, "expert", None, self._model(e.path, e.kind), datasets))
            for r in ([default] if default else []) + candidates:
                role = "default" if r.default else ("tuned" if r is best else "candidate")
                label = "defaults (trial 0)" if r.default else f"trial {r.number}"
                path, kind = self._fused(self.recipe_of(r), f"heldout-{r.number}")
                try:
                    rows.append(self._heldout_row(label, role, r.number, self._model(path, kind), datasets))
                finally:
                    shutil.rmtree(path, ignore_errors=True)
        finally:
            release_models()
        return self.result(rows, time.perf_counter() - t0)

    def _heldout_row(self, label, role, number, model, datasets) -> dict:
        processor = models_for(self.manifest, self.config.device).processor
        res = evaluate_model(model, processor, datasets, limit=self.config.heldout_limit,
                             batch_size=self.config.batch_size)
        return {"label": label, "role": role, "trial": number,
                "accuracy": {d: v["accuracy"] for d, v in res["domains"].items()},
                "n": {d: v["n"] for d, v in res["domains"].items()}, "mean": res["mean"]}

    def result(self, heldout: Sequence[dict], heldout_seconds: float) -> dict:
        best = self.best()
        by_role = {r["role"]: r for r in heldout}
        tuned = by_role.get("tuned") or (by_role.get("default") if best is not None and best.default else None)
        default = by_role.get("default")
        verdict = None
        if tuned is not None and default is not None:
            diff = tuned["mean"] - default["mean"]
            which = "the defaults themselves (no trial beat them on dev)" if tuned is default else f"trial {best.number}"
            verdict = (f"held-out mean over {'+'.join(self.splits)}: tuned ({which}) {tuned['mean']:.1f}% vs "
                       f"defaults {default['mean']:.1f}% ({diff:+.1f} points)")
        return {
            "method": self.recipe.method, "experts": [e.name or e.path for e in self.recipe.experts],
            "config": asdict(self.config), "notes": self.notes, "dims": [asdict(d) for d in self.dims],
            "splits": {d: s.describe() for d, s in self.splits.items()}, "dev_eval_disjoint": True,
            "experts_dev": self.experts_dev, "trials": [r.to_dict() for r in self.results],
            "stopped": self.stopped, "search_seconds": self.search_seconds,
            "study": ({"name": self.study_name, "storage": shared.redact(self.storage),
                       "workers": sorted({r.worker for r in self.results if r.worker})} if self.storage else None),
            "best": best.to_dict() if best else None,
            "default_recipe": self.recipe.to_dict(),
            "tuned_recipe": self.recipe_of(best).to_dict() if best else None,
            "heldout": {"rows": list(heldout), "seconds": heldout_seconds, "limit": self.config.heldout_limit},
            "verdict": verdict,
        }


def values_text(values: dict[str, Any]) -> str:
    """'a=0.31, c=120, gates=dual, layers 0-3, modules mlp' for tables and hover text."""
    parts = []
    for k, v in values.items():
        if k in ("first_layer", "last_layer"):
            continue
        parts.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    if "first_layer" in values:
        lo, hi = sorted((values["first_layer"], values["last_layer"]))
        parts.append(f"layers {lo}-{hi}")
    return ", ".join(parts)
