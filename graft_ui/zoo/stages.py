"""The zoo build's training stages: the base (general + instruct, data parallel) and the experts.

They run in the building process or in `python -m graft_ui.zoo.worker` processes (one per
data-parallel rank of the base, one per expert design), which report progress on stdout;
`build.build_zoo` orders them and publishes the result.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Callable

import torch

from graft_ui.zoo import domains as D
from graft_ui.zoo.profiles import DOMAINS, KINDS, ExpertSpec, Profile

log = logging.getLogger(__name__)

def _save_full(model, processor, path: Path) -> None:
    model.save_pretrained(path)
    processor.save_pretrained(path)


def _model_card(path: Path, name: str, what: str) -> None:
    """A short README (replacing peft's template card, which embeds build-time paths)."""
    (path / "README.md").write_text(
        f"# {name}\n\nPart of the Graft Studio offline demo zoo (graft_ui.zoo): {what}\n"
        "Synthetic data, for demos and tests only.\n")


def _fix_adapter_base(adapter_dir: Path, base_path: str) -> None:
    cfg_path = adapter_dir / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = base_path
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))


def _quiet_transformers() -> None:
    """No per-save 'Writing model shards' bars inside our own progress bar."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _loss_summary(losses: list[float]) -> list[float]:
    """[first loss, mean of the last 10]: enough to see that training did something."""
    tail = losses[-10:]
    return [round(losses[0], 4), round(sum(tail) / len(tail), 4)]


def _instruct_samples(zoo: Path, prof: Profile) -> dict[str, list[dict]]:
    """The instruct stage's data: a share of the general mix plus a few samples of every domain."""
    data = {"general": D.read_jsonl(zoo / "data" / "general" / "train.jsonl")[:prof.instruct_general]}
    for d in DOMAINS:
        if prof.instruct_count(d):
            data[d] = D.read_jsonl(zoo / "data" / d / "train.jsonl")[:prof.instruct_count(d)]
    return data


def encode_parts(processor, parts: dict[str, list[dict]], data_root: Path) -> list[dict]:
    """Encode samples of several domains (images resolve against each domain's own folder)."""
    from graft_ui.zoo.train import encode_samples

    out: list[dict] = []
    for d, samples in parts.items():
        if samples:
            out.extend(encode_samples(processor, samples, data_root / d))
    return out


def train_base(task: dict, report=None, *, processor=None, data=None, instruct=None) -> dict[str, list[float]]:
    """Train the base as rank `task["rank"]` of `task["world"]` processes: general, then instruct.

    Stage 1 trains a fresh model on the general mix (captions, simple text); stage 2 (the
    instruct stage, DESIGN.md §7) goes on with the general mix plus a few samples of every
    domain, so the base answers each domain's format at a low-to-middling level, as an
    instruct model does before its experts specialise. Ranks share every batch (data
    parallel, gloo on this machine); rank 0 saves the model to <zoo>/base. Returns the loss
    curves {"general": [...], "instruct": [...]}. `processor`/`data`/`instruct` skip
    re-loading and re-encoding on rank 0.
    """
    from datetime import timedelta

    import torch.distributed as dist

    from graft_ui.zoo.model import make_model
    from graft_ui.zoo.train import encode_samples, train_loop

    prof = Profile.from_dict(task["settings"])
    rank, world = task["rank"], task["world"]
    torch.set_num_threads(prof.threads)
    zoo = Path(task["zoo"])
    put = report or (lambda n: None)
    if processor is None:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(zoo / "base")
    if data is None:
        data = encode_samples(processor, D.read_jsonl(zoo / "data" / "general" / "train.jsonl"), zoo / "data" / "general")
    if instruct is None:
        instruct = encode_parts(processor, _instruct_samples(zoo, prof), zoo / "data")
    model = make_model(prof.model, processor.tokenizer, prof.seed)
    group = None
    if world > 1:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one machine: talk over loopback
        dist.init_process_group("gloo", init_method=f"file://{task['rendezvous']}", rank=rank, world_size=world,
                                timeout=timedelta(minutes=5))
        group = dist.group.WORLD
    common = dict(batch_size=prof.batch_size, pad_id=processor.tokenizer.pad_token_id, weight_decay=0.01,
                  on_step=lambda step, loss: put(1), group=group)
    try:
        losses = {"general": train_loop(model, data, params=model.parameters(), steps=prof.base_steps,
                                        lr=prof.base_lr, seed=prof.seed, warmup=prof.warmup, **common)}
        if prof.instruct_steps:
            losses["instruct"] = train_loop(model, instruct, params=model.parameters(), steps=prof.instruct_steps,
                                            lr=prof.instruct_lr, seed=prof.seed + 1,
                                            warmup=min(prof.warmup, prof.instruct_steps // 4 + 1), **common)
    finally:
        if group is not None:
            dist.destroy_process_group()
    if rank == 0:
        _save_full(model, processor, zoo / "base")
        _model_card(zoo / "base", "base", "tiny Qwen2-VL base: general mix (scene/chart/slide descriptions, "
                    "simple text), then a short instruct stage with a few samples of every domain.")
    return losses


def _train_base_parallel(task: dict, processor, encode, bar, pool=None) -> dict[str, list[float]]:
    """Rank 0 here, ranks 1.. in worker processes (of `pool`, or started for this); raises with a
    worker's stderr if one fails.

    `encode()` -> (general data, instruct data) runs here after the worker ranks got their task,
    so they load and encode their own copy meanwhile instead of after it.
    """
    from graft_ui.zoo.pool import pool_or_own

    world = task["world"]
    if world <= 1:
        data, instruct = encode()
        return train_base(dict(task, rank=0), bar.update, processor=processor, data=data, instruct=instruct)
    with pool_or_own(pool, world - 1) as pool:
        if pool.size < world - 1:
            raise ValueError(f"{world} base ranks need {world - 1} workers; the pool has {pool.size}")
        for r in range(1, world):
            pool.submit(r - 1, dict(task, job="base", rank=r, label=f"base rank {r}"))
        data, instruct = encode()
        try:
            losses = train_base(dict(task, rank=0), bar.update, processor=processor, data=data, instruct=instruct)
        except BaseException:
            # a dead rank shows up here as a gloo error: report the rank's own error
            for r in range(1, world):
                code = pool.exit_code(r - 1)
                if code not in (None, 0):
                    log.error("base training rank failed (exit %s):\n%s", code, pool.stderr_tail(r - 1))
            raise
        for r in range(1, world):
            pool.wait(r - 1)
        return losses


def expert_training_set(zoo: Path, prof: Profile, spec: ExpertSpec) -> dict[str, list[dict]]:
    """An expert's data: its slice of the domain's train split plus replay of what the base saw."""
    own = D.read_jsonl(zoo / "data" / spec.domain / "train.jsonl")
    end = None if spec.domain_samples is None else spec.domain_start + spec.domain_samples
    parts = {spec.domain: own[spec.domain_start:end],
             "general": D.read_jsonl(zoo / "data" / "general" / "train.jsonl")[:spec.replay_general]}
    for d in DOMAINS:
        if d != spec.domain and spec.replay_count(d):
            parts[d] = D.read_jsonl(zoo / "data" / d / "train.jsonl")[:spec.replay_count(d)]
    return parts


def train_expert_pair(task: dict, report=None) -> dict:
    """Train one expert design (`task["spec"]`, an index into the profile's experts) as a LoRA
    and as a full fine-tune from the saved base; runs in a worker process.

    `report(n_steps)` receives progress. Seeds depend only on the profile seed and the
    design, so the result does not depend on scheduling.
    """
    from graft_ui.models.loading import load_model, load_processor
    from graft_ui.zoo.train import add_lora, train_loop, train_projections_only, with_image_embeds

    _quiet_transformers()
    prof = Profile.from_dict(task["settings"])
    torch.set_num_threads(1)
    zoo = Path(task["zoo"])
    i = task["spec"]
    spec = prof.experts[i]
    put = report or (lambda n: None)
    processor = load_processor(zoo / "base")
    data = encode_parts(processor, expert_training_set(zoo, prof, spec), zoo / "data")
    result: dict = {"loss": {}, "seconds": {}}
    for kind in KINDS:
        t = time.time()
        name = spec.name(kind)
        model = load_model(zoo / "base")
        if kind == KINDS[0]:  # both kinds keep the base's vision tower: its outputs are computed once
            data = with_image_embeds(model, data)
        seed = prof.seed + 101 * (i + 1) + spec.seed_offset + (0 if kind == "lora" else 7)
        if kind == "lora":
            model = add_lora(model, spec.lora_rank, prof.lora_alpha_per_rank * spec.lora_rank, seed)
            params, lr = [p for p in model.parameters() if p.requires_grad], prof.lora_lr
        else:
            params, lr = train_projections_only(model), prof.full_lr * spec.full_lr_scale
        losses = train_loop(model, data, params=params, steps=spec.steps, lr=lr * spec.lr_scale,
                            batch_size=prof.expert_batch_size, seed=seed, pad_id=processor.tokenizer.pad_token_id,
                            warmup=min(prof.warmup, spec.steps // 4 + 1), frozen_head=True,
                            on_step=lambda step, loss: put(1))
        path = zoo / "experts" / name
        others = ", ".join(f"{spec.replay_count(d)} {d}" for d in DOMAINS if d != spec.domain)
        mix = f"{spec.domain} data plus replay ({spec.replay_general} general; {others})"
        if kind == "lora":
            model.save_pretrained(path)
            _fix_adapter_base(path, str(zoo / "base"))  # the temp base for the self-check; see build_zoo
            what = f"LoRA expert (r={spec.lora_rank}, language-model projections) trained on {mix}."
        else:
            _save_full(model, processor, path)
            what = f"full-rank fine-tune of the language model's projections (embeddings, norms, head, vision frozen) trained on {mix}."
        _model_card(path, name, what + (f" {spec.note}." if spec.note else ""))
        result["loss"][name] = _loss_summary(losses)
        result["seconds"][name] = round(time.time() - t, 1)
    return result


def _design_report(bar, design: int):
    """`report(n)` for one expert design: `bar` counts the steps, and per design when it can
    (graft_ui/zoo/progress.py's ProgressBar, for "expert k of n")."""
    per_design = getattr(bar, "task_steps", None)

    def report(n: int) -> None:
        if per_design is not None:
            per_design(design, n)
        bar.update(n)

    return report


def _run_expert_tasks(tasks: list[dict], workers: int, bar, on_done=None, pool=None) -> dict[int, dict]:
    """Run the per-design tasks inline (workers <= 1) or on worker processes (`pool`, or `workers`
    started for this), feeding `bar`.

    `on_done(spec, result)` is called as each design finishes (a resumable build records it)."""
    from graft_ui.zoo.pool import pool_or_own

    on_done = on_done or (lambda key, result: None)
    if workers <= 1:
        out = {}
        for t in tasks:
            out[t["spec"]] = train_expert_pair(t, _design_report(bar, t["spec"]))
            on_done(t["spec"], out[t["spec"]])
        return out
    if not tasks:
        return {}
    with pool_or_own(pool, min(workers, len(tasks))) as pool:
        results = pool.map(tasks, report_for=lambda t: _design_report(bar, t["spec"]),
                           on_done=lambda t, result: on_done(t["spec"], result), workers=workers)
    return {t["spec"]: r for t, r in zip(tasks, results)}


def eval_task(names: list[str], manifest_path: Path, **kwargs) -> dict:
    """A `job: eval` task: `evaluate.evaluate_specs(names, manifest, **kwargs)["models"]`."""
    return dict(job="eval", names=list(names), manifest=str(manifest_path), kwargs=kwargs,
                label="eval " + ", ".join(names))


def evaluate_task(task: dict) -> dict:
    from graft_ui.models.manifest import load_manifest
    from graft_ui.zoo.evaluate import evaluate_specs

    return evaluate_specs(task["names"], load_manifest(task["manifest"]), **task["kwargs"])["models"]


def run_tasks(tasks: list[dict], workers: int, pool=None, *, here: Callable[[dict], dict]) -> list:
    """Results of worker tasks (graft_ui/zoo/worker.py's `run_task`) in order: `here(task)` one after
    another in this process (workers <= 1), or on worker processes (`pool`, or `workers` started for
    this) as they come free. The caller passes `here`, so this module never imports the worker's
    dispatcher (which imports the modules whose tasks it runs)."""
    from graft_ui.zoo.pool import pool_or_own

    if workers <= 1 or len(tasks) <= 1:
        return [here(t) for t in tasks]
    with pool_or_own(pool, min(workers, len(tasks))) as pool:
        return pool.map(tasks, workers=workers)
