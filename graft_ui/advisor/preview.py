"""The label-free merge preview, and the gradient distance of "Demystifying Mergeability" (arXiv 2601.22285).

Merge preview of experts a + b with a method, on K unlabeled prompts P_e of each expert e's
domain (the train split's prompts, seeded; or the caller's own prompts for both):

    fuse a + b (the merge engine, into a temporary folder; < 1 s on the demo zoo)
    agree_e = fraction of p in P_e where the fused model's greedy answer equals e's (token ids)
    kl_e    = mean over p in P_e and over the tokens t of e's greedy answer of
              KL(e(. | p, t<) || fused(. | p, t<))            teacher forced on e's answer, in nats
    agree_min = min(agree_a, agree_b), kl_max = max(kl_a, kl_b)

No label is read: a user's own prompts are enough. It measures how much of each expert's
behaviour the fusion keeps, which is what kept_e = acc_fused(e's domain) / acc_e measures with
labels.

Gradient distance (2601.22285's cheapest useful signal): on K unlabeled target prompts,

    g_e = gradient of the mean next-token loss on the prompt text (not on answers: no labels and no
          generation) with respect to the language model's fused-module weights, for each expert
    grad_l2  = |g_a - g_b|_2,   grad_cos = <g_a, g_b> / (|g_a| |g_b|)

Per expert the greedy answers, their log-probs and the gradient are computed once per Previewer
and reused for every pair and method. Everything runs on the device given (cpu or cuda): same code.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from graft_ui.advisor import probes
from graft_ui.analysis.data import load_target
from graft_ui.models import merge
from graft_ui.models.manifest import Manifest
from graft_ui.study.worker import models_for, pair_recipe
from graft_ui.zoo.evaluate import MAX_NEW_TOKENS

log = logging.getLogger(__name__)

DEFAULT_K = 32
Progress = Callable[[float, str], None]


class Stopped(RuntimeError):
    """The caller asked the preview to stop (between models)."""


@dataclass
class _Side:
    """One expert's reference behaviour on one prompt set."""

    answers: list  # token ids per prompt
    logp: list  # (T, V) log-probs per prompt


def kl_mean(p_logp: Sequence[torch.Tensor], q_logp: Sequence[torch.Tensor]) -> float:
    """Mean over prompts and tokens of KL(p || q), each (T, V) log-probs; prompts with no token are skipped."""
    tot, n = 0.0, 0
    for p, q in zip(p_logp, q_logp):
        if p.shape[0]:
            tot += float((p.exp() * (p - q)).sum(-1).sum())
            n += p.shape[0]
    return tot / n if n else 0.0


class Previewer:
    """Previews of fusions of one manifest's experts (one processor, expert behaviour cached by prompt set)."""

    def __init__(self, manifest: Manifest, *, k: int = DEFAULT_K, seed: int = 0, device: str = "cpu",
                 work: str | Path | None = None):
        if not 1 <= int(k) <= 256:
            raise ValueError(f"k={k!r} preview prompts must be between 1 and 256")
        self.manifest, self.k, self.seed, self.device = manifest, int(k), int(seed), str(device)
        self.models = models_for(manifest, self.device)
        self.pad, self.eos = probes.end_tokens(self.models.processor)
        self.work = Path(work) if work else None
        self._prompts: dict[str, tuple[list, int]] = {}
        self._sides: dict[tuple[str, str], _Side] = {}
        self._grads: dict[tuple[str, str], torch.Tensor] = {}

    # ---------------------------------------------------------------- prompt sets and experts

    def prompts(self, spec: str) -> tuple[list, int]:
        """(encoded items, max new tokens) of K prompts of `spec`: a domain (its train split) or a JSONL path."""
        if spec not in self._prompts:
            samples = load_target(spec, self.k, manifest=self.manifest, seed=self.seed, split="train")
            # code answers are longer (the zoo's scorers: "code" for the code domain, "exact" otherwise)
            max_new = max(MAX_NEW_TOKENS["code" if s.domain == "code" else "exact"] for s in samples)
            self._prompts[spec] = (probes.encode(self.models.processor, samples), max_new)
        return self._prompts[spec]

    def _model(self, entry_or_path, kind: str):
        path = entry_or_path.path if hasattr(entry_or_path, "path") else str(entry_or_path)
        return self.models.model(path, kind)

    def side(self, expert: str, spec: str) -> _Side:
        key = (expert, spec)
        if key not in self._sides:
            e = self.manifest.expert(expert)
            items, max_new = self.prompts(spec)
            model = self._model(e, e.kind)
            answers = probes.greedy(model, items, self.pad, self.eos, max_new)
            self._sides[key] = _Side(answers, probes.answer_logprobs(model, items, answers, self.pad))
            del model
        return self._sides[key]

    def gradient(self, expert: str, spec: str) -> torch.Tensor:
        key = (expert, spec)
        if key not in self._grads:
            e = self.manifest.expert(expert)
            items, _ = self.prompts(spec)
            self._grads[key] = probes.prompt_gradient(self._model(e, e.kind), items, self.pad)
        return self._grads[key]

    def gradient_distance(self, a: str, b: str, spec: str) -> dict:
        ga, gb = self.gradient(a, spec), self.gradient(b, spec)
        den = float(ga.norm() * gb.norm())
        return {"grad_l2": float((ga - gb).norm()), "grad_cos": float(ga @ gb) / den if den > 0 else None}

    # ---------------------------------------------------------------- the preview

    def preview(self, a: str, b: str, method: str, *, target: str | None = None,
                progress: Progress | None = None, stop: Callable[[], bool] | None = None) -> dict:
        """The module docstring's preview of a + b fused with `method` (a label such as "ties" or
        "graft[a=0.2]"). `target`: one prompt set for both experts (a domain or a JSONL path);
        default each expert's own domain. Checks `stop` between models (raises Stopped)."""
        ea, eb = self.manifest.expert(a), self.manifest.expert(b)
        if ea.kind != eb.kind:
            raise ValueError(f"{a!r} ({ea.kind}) and {b!r} ({eb.kind}) are not of one kind: they cannot be fused")
        specs = {a: target or _domain(ea), b: target or _domain(eb)}
        t0 = time.perf_counter()
        steps = ["expert " + a, "expert " + b, "fuse", "fused answers"]

        def step(i: int) -> None:
            if stop is not None and stop():
                raise Stopped("preview stopped")
            if progress is not None:
                progress(i / len(steps), f"{steps[i]} ({i + 1} of {len(steps)})")

        step(0)
        side_a = self.side(a, specs[a])
        step(1)
        side_b = self.side(b, specs[b])
        step(2)
        tmp = Path(tempfile.mkdtemp(prefix="preview-", dir=self.work))
        try:
            out = tmp / "fused"
            t1 = time.perf_counter()
            merge.run_recipe(pair_recipe(self.manifest, ea, eb, method, self.seed, self.device), out, overwrite=True)
            fuse_s = time.perf_counter() - t1
            step(3)
            fused = self._model(out, ea.kind)
            res = {"pair": f"{a}+{b}", "method": method, "k": self.k, "fuse_seconds": round(fuse_s, 3)}
            for tag, name, side in (("a", a, side_a), ("b", b, side_b)):
                items, max_new = self.prompts(specs[name])
                mine = probes.greedy(fused, items, self.pad, self.eos, max_new)
                res[f"agree_{tag}"] = sum(x == y for x, y in zip(mine, side.answers)) / len(items)
                res[f"kl_{tag}"] = kl_mean(side.logp, probes.answer_logprobs(fused, items, side.answers, self.pad))
            del fused
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        res["agree_min"] = min(res["agree_a"], res["agree_b"])
        res["kl_max"] = max(res["kl_a"], res["kl_b"])
        res["seconds"] = round(time.perf_counter() - t0, 3)
        res["prompts"] = {a: specs[a], b: specs[b]}
        if progress is not None:
            progress(1.0, "done")
        log.info("preview %s + %s (%s): agreement %.2f / %.2f, KL %.3f / %.3f in %.1f s", a, b, method,
                 res["agree_a"], res["agree_b"], res["kl_a"], res["kl_b"], res["seconds"])
        return res


def _domain(entry) -> str:
    if not entry.domain:
        raise ValueError(f"expert {entry.name!r} has no domain: give the preview a target (a domain or a JSONL file)")
    return entry.domain

