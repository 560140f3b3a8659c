"""Build the demo zoo: data, tokenizer, base, experts, manifest — seeded and atomic.

Stages (each timed into build_info.json):
1. data: the four domains' train/eval splits and the general mix, drawn from the seed;
2. tokenizer + processor (byte-level BPE trained on the corpora, stock Qwen2-VL processor);
3. base: a fresh tiny Qwen2-VL trained on the general mix (vision tower included);
4. experts: per domain a LoRA expert (language-model projections) and a full fine-tune of
   the language model (vision frozen), both from the base on that domain only;
5. manifest.yaml (docs/CONTRACTS.md format) and an optional self-check of each expert
   against the base on its own domain's held-out split.

Everything is written under a temporary sibling folder that is renamed into place at the
end, so an interrupted build leaves no half-made zoo behind.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from graft_ui.atomic import publish_folder, recover_folder
from graft_ui.zoo import domains as D
from graft_ui.zoo.pool import WorkerPool, process_cpu_seconds
from graft_ui.zoo.prebuilt import cpu_name, take_base
from graft_ui.zoo.profiles import DOMAINS, KINDS, Profile, get_profile
from graft_ui.zoo.reuse import BASE_DONE, STAMP, design_key, reuse_base, reuse_experts, weights_hash, work_folder
from graft_ui.zoo.stages import (_fix_adapter_base, _instruct_samples, _loss_summary, _quiet_transformers,
                                  _run_expert_tasks, _train_base_parallel, encode_parts)
from graft_ui.zoo.selfcheck import self_check, self_check_markdown

log = logging.getLogger(__name__)

BUILD_INFO = "build_info.json"
MANIFEST = "manifest.yaml"
FORMAT_VERSION = 9  # bump when the layout changes; older zoos are rebuilt (7: zoo v2, instruct base; 8: block charts;
# 9: margins on every regime target, 150 held-out items, weights_hash)


@contextmanager
def torch_threads(n: int):
    """torch intra-op threads set to `n` for the block, restored after.

    The zoo's models are tiny: with 2 threads on 2 busy cores, OpenMP's spinning made a
    study ~7x slower (209 s vs 27 s, same work) than with 1 thread.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _versions() -> dict:
    import peft
    import tokenizers
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "tokenizers": tokenizers.__version__}


def _corpus(samples: list[dict]):
    """Texts the tokenizer is trained on: questions, answers, and the chat template's words."""
    for s in samples:
        for m in s["messages"]:
            for item in m["content"]:
                if item.get("type") == "text":
                    yield item["text"]
        yield s["answer"]
    for _ in range(50):
        yield "system\nYou are a helpful assistant.\nuser\nassistant\n"


def _parameters(model_dir: Path) -> dict[str, int]:
    """Parameter counts of a saved checkpoint (vision = the `visual.*` tensors)."""
    from safetensors import safe_open

    total = vision = 0
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        for key in f.keys():
            n = 1
            for d in f.get_slice(key).get_shape():
                n *= d
            total += n
            vision += n if key.startswith(("visual.", "model.visual.")) else 0
    return {"total": total, "vision": vision, "language": total - vision}


def _cpu_seconds(pool=None) -> float:
    """CPU time of this process, its finished children and the tasks `pool`'s workers finished so far."""
    return process_cpu_seconds() + (pool.cpu_seconds if pool else 0.0)


def _self_check(zoo: Path, prof: Profile, pool, info: dict, stages: dict, cpu: dict, bar) -> dict:
    """Run the zoo's self-check (graft_ui/zoo/selfcheck.py) into `info`, timed as a stage."""
    bar.set_postfix_str("self-check")
    t = time.time()
    c = _cpu_seconds(pool)
    check = self_check(zoo, limit=prof.self_check_limit, fusions=prof.self_check_fusions,
                       workers=prof.workers, pool=pool)
    info["self_check"] = check
    stages["self_check"] = time.time() - t
    cpu["self_check"] = _cpu_seconds(pool) - c
    return check


def _write_info(zoo: Path, info: dict, stages: dict, cpu: dict, t_start: float) -> None:
    """build_info.json of `zoo`, written whole (replaced at once: the app may be reading it)."""
    from graft_ui.atomic import write_bytes

    info["stages_seconds"] = {k: round(v, 1) for k, v in stages.items()}
    info["cpu_seconds"] = {k: round(v, 1) for k, v in cpu.items()}
    info["seconds"] = round(time.time() - t_start, 1)
    info.setdefault("built_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    write_bytes(zoo / BUILD_INFO, json.dumps(info, indent=2).encode())


def _built_zoo(where: str | Path) -> tuple[Path, dict]:
    """(folder, build info) of a built zoo: a folder, or a profile name (built first when missing)."""
    from graft_ui.zoo import PROFILES, ensure_zoo, is_built

    source = ensure_zoo(where) if str(where) in PROFILES else Path(where).expanduser().resolve()
    if not is_built(source):
        raise FileNotFoundError(f"{str(source)!r} is not a built zoo of format {FORMAT_VERSION}")
    return source, json.loads((source / BUILD_INFO).read_text())


def build_zoo(out_dir: str | Path, profile: str | Profile = "full", *, force: bool = False,
              progress: bool = True, base_from: str | Path | None = None, report=None) -> Path:
    """Build the zoo into `out_dir` (replaced only when `force`); returns `out_dir`.

    `base_from`: the built zoo whose base a profile with `base_from` reuses (default: that
    profile's zoo folder, built first when missing). `report(snapshot)`, when given, receives
    the build's progress (graft_ui/zoo/progress.py).
    """
    from tqdm.auto import tqdm

    prof = get_profile(profile) if isinstance(profile, str) else profile
    out_dir = Path(out_dir).expanduser().resolve()
    recover_folder(out_dir, ("building",))  # a killed build or rebuild: its leftovers go, an old zoo comes back
    if (out_dir / MANIFEST).is_file() and not force:
        raise FileExistsError(f"zoo {str(out_dir)!r} already exists; pass force=True (--force) to rebuild")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _quiet_transformers()
    tmp = work_folder(out_dir, prof, FORMAT_VERSION)
    t_start = time.time()
    stages: dict[str, float] = {}
    cpu: dict[str, float] = {}  # CPU seconds per stage (workers included): the cost on an idle machine
    info: dict = {"format": FORMAT_VERSION, "profile": prof.name, "seed": prof.seed, "settings": prof.to_dict(),
                  "versions": _versions(), "host": {"cpus": os.cpu_count(), "threads": prof.threads, "cpu": cpu_name()}}
    base_steps = 0 if prof.base_from else prof.base_steps + prof.instruct_steps
    total_steps = base_steps + len(KINDS) * sum(e.steps for e in prof.experts)
    bar = tqdm(total=total_steps, desc=f"zoo build ({prof.name})", unit="step", disable=not progress,
               dynamic_ncols=True)
    if report is not None:
        from graft_ui.zoo.progress import ProgressBar

        bar = ProgressBar(bar, [e.steps for e in prof.experts], len(KINDS), report, profile=prof.name)
    # worker processes for everything that runs beside this one (base ranks 1.., experts, self-check),
    # started now so their imports overlap the data and tokenizer stages (graft_ui/zoo/pool.py)
    trains_base = not prof.base_from and not (prof.resumable and (tmp / "base" / BASE_DONE).is_file())
    pool_size = max(prof.workers if prof.workers > 1 else 0, prof.base_procs - 1 if trains_base else 0)
    pool = None
    try:
        pool = WorkerPool(pool_size) if pool_size else None
        with torch_threads(prof.threads):
            # 1. data
            t = time.time()
            c = _cpu_seconds(pool)
            bar.set_postfix_str("data")
            data_root = tmp / "data"
            resumed: list[str] = []  # stages and designs a resumed build took from its partial folder
            if (data_root / ".done").is_file():
                resumed.append("data")
            else:
                for d in DOMAINS:
                    D.build_domain(d, data_root, prof.domain_train, prof.domain_eval, prof.seed)
                D.build_domain("general", data_root, prof.general_train, 0, prof.seed)
                (data_root / ".done").write_text("")
            splits = {d: D.read_jsonl(data_root / d / "train.jsonl") for d in (*DOMAINS, "general")}
            stages["data"] = time.time() - t
            cpu["data"] = _cpu_seconds(pool) - c

            t, c = time.time(), _cpu_seconds(pool)
            if prof.base_from:
                # 2-3. the base (with its tokenizer and processor) of another built zoo
                bar.set_postfix_str("base (reused)")
                source, src_info = _built_zoo(base_from or prof.base_from)
                reuse_base(prof, tmp, source, src_info)
                info["base_from"] = {"profile": prof.base_from, "path": str(source),
                                     "built_at": src_info.get("built_at"), "weights_hash": src_info.get("weights_hash")}
                info["parameters"] = src_info.get("parameters")
                info["loss"] = {k: v for k, v in (src_info.get("loss") or {}).items() if k.startswith("base")}
                stages["base"] = time.time() - t
                cpu["base"] = _cpu_seconds(pool) - c
            elif prof.resumable and (tmp / "base" / BASE_DONE).is_file():
                done_base = json.loads((tmp / "base" / BASE_DONE).read_text())
                info["parameters"], info["loss"] = done_base["parameters"], done_base["loss"]
                info.update({k: v for k, v in done_base.items() if k == "base_prebuilt"})
                resumed.append("base")
                bar.update(base_steps)
            elif (prebuilt := take_base(prof, data_root, tmp / "base")) is not None:
                # 2-3. the base (with its tokenizer and processor) shipped for this profile, when it is
                # the one these settings and this data would train (graft_ui/zoo/prebuilt.py)
                bar.set_postfix_str("base (prebuilt)")
                info["base_prebuilt"] = {k: prebuilt.get(k) for k in ("trained_on", "built_at", "weights_sha256",
                                                                      "versions")}
                info["parameters"], info["loss"] = prebuilt["parameters"], dict(prebuilt["loss"])
                (tmp / "base" / BASE_DONE).write_text(json.dumps({k: info[k] for k in (
                    "parameters", "loss", "base_prebuilt")}))
                bar.reset(total=total_steps - base_steps)  # steps this build runs: the experts'
                stages["base"] = time.time() - t  # checking and copying it
                cpu["base"] = _cpu_seconds(pool) - c
            else:
                # 2. tokenizer + processor
                t = time.time()
                c = _cpu_seconds(pool)
                bar.set_postfix_str("tokenizer")
                from graft_ui.zoo.tokenizer import build_processor, build_tokenizer

                corpus = [x for d in splits for x in _corpus(splits[d])]
                tokenizer = build_tokenizer(corpus, prof.model.vocab_size)
                processor = build_processor(tokenizer)
                stages["tokenizer"] = time.time() - t
                cpu["tokenizer"] = _cpu_seconds(pool) - c

                # 3. encode once, then train the base on the general mix; the worker ranks get their
                # task first, so they encode their own copy while this process encodes
                from graft_ui.zoo.train import encode_samples

                t = time.time()
                c = _cpu_seconds(pool)
                bar.set_postfix_str("encode")
                base_dir = tmp / "base"
                processor.save_pretrained(base_dir)  # the worker ranks load the tokenizer from here
                task = dict(zoo=str(tmp), settings=prof.to_dict(), world=prof.base_procs,
                            rendezvous=str(tmp / f".rendezvous-{os.getpid()}"))

                def encode():
                    general = encode_samples(processor, splits["general"], data_root / "general")
                    instruct = encode_parts(processor, _instruct_samples(tmp, prof), data_root)
                    stages["encode"] = time.time() - t
                    cpu["encode"] = _cpu_seconds(pool) - c
                    bar.set_postfix_str("base")
                    return general, instruct

                losses = _train_base_parallel(task, processor, encode, bar, pool)
                t, c = t + stages["encode"], c + cpu["encode"]
                Path(task["rendezvous"]).unlink(missing_ok=True)
                info["parameters"] = _parameters(base_dir)
                info["loss"] = {f"base ({stage})": _loss_summary(curve) for stage, curve in losses.items()}
                (base_dir / BASE_DONE).write_text(json.dumps({"parameters": info["parameters"], "loss": info["loss"]}))
                stages["base"] = time.time() - t
                cpu["base"] = _cpu_seconds(pool) - c

            # 4. experts: one task per design (LoRA + full), in parallel single-threaded workers,
            # longest first so the two workers finish together; a resumed build skips finished designs
            t = time.time()
            c = _cpu_seconds(pool)
            bar.set_postfix_str("experts")
            done_file = lambda i: tmp / "experts" / f".design-{i}.json"  # noqa: E731
            done: dict[int, dict] = {}
            for i, spec in enumerate(prof.experts):
                mark = json.loads(done_file(i).read_text()) if prof.resumable and done_file(i).is_file() else {}
                if mark.get("key") == design_key(prof, i):
                    done[i] = mark["result"]
                    resumed.append(spec.name("*"))
                    # the partial folder may have moved since (or been made from a published zoo)
                    _fix_adapter_base(tmp / "experts" / spec.name("lora"), str(tmp / "base"))
                    bar.update(len(KINDS) * spec.steps)
            if prof.base_from:  # designs the base_from zoo already trained the same way: copied
                for i, result in reuse_experts(prof, tmp, source, src_info).items():
                    if i not in done:
                        done[i] = result
                        bar.update(len(KINDS) * prof.experts[i].steps)
            tasks = [dict(zoo=str(tmp), spec=i, label=spec.name("*"), profile=prof.name, settings=prof.to_dict())
                     for i, spec in enumerate(prof.experts) if i not in done]
            tasks.sort(key=lambda t: -prof.experts[t["spec"]].steps)

            def finished(i: int, result: dict) -> None:
                if prof.resumable:
                    done_file(i).write_text(json.dumps({"key": design_key(prof, i), "result": result}))

            done.update(_run_expert_tasks(tasks, prof.workers, bar, on_done=finished, pool=pool))
            experts, expert_times = [], {}
            for i, spec in enumerate(prof.experts):
                for kind in KINDS:
                    name = spec.name(kind)
                    experts.append({"name": name, "domain": spec.domain, "kind": kind, "path": f"experts/{name}"})
                    info["loss"][name] = done[i]["loss"][name]
                    expert_times[name] = done[i]["seconds"][name]
            stages["experts"] = time.time() - t
            cpu["experts"] = _cpu_seconds(pool) - c
            if resumed:  # their time is not in stages_seconds: the build is not a from-scratch timing
                info["resumed"] = resumed
            info["expert_seconds"] = expert_times
            info["experts"] = {spec.name(kind): {"domain": spec.domain, "kind": kind, "steps": spec.steps,
                                                 "rank": spec.lora_rank if kind == "lora" else None,
                                                 "note": spec.note,
                                                 **({"reused_from": done[i]["reused_from"]}
                                                    if "reused_from" in done[i] else {})}
                               for i, spec in enumerate(prof.experts) for kind in KINDS}

            # 5. manifest (+ self-check)
            from graft_ui.models.manifest import DatasetEntry, Manifest, ModelEntry

            manifest = Manifest(
                name=f"graft-demo-zoo-{prof.name}",
                base=ModelEntry(name="base", path="base", kind="full"),
                experts=tuple(ModelEntry(**e) for e in experts),
                datasets={d: DatasetEntry(eval=f"data/{d}/eval.jsonl", train=f"data/{d}/train.jsonl") for d in DOMAINS},
            )
            manifest.save(tmp / MANIFEST)
            info["weights_hash"] = weights_hash(tmp)
            if prof.self_check and prof.strict:  # a strict zoo is published only when it meets its targets
                check = _self_check(tmp, prof, pool, info, stages, cpu, bar)
                if check["missed_targets"]:
                    # kept aside (not used) so the miss can be inspected without rebuilding
                    rejected = out_dir.parent / f".{out_dir.name}.rejected"
                    shutil.rmtree(rejected, ignore_errors=True)
                    tmp.rename(rejected)
                    raise RuntimeError(f"the {prof.name} zoo missed its regime targets, so it is not used "
                                       f"(kept for inspection at {rejected}):\n" + self_check_markdown(check))
        bar.set_postfix_str("done")
    except BaseException:
        if pool is not None:
            pool.close(kill=True)
        bar.close()
        if not prof.resumable:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    for e in experts:  # adapters name the base where it will live, not the temp folder
        if e["kind"] == "lora":
            _fix_adapter_base(tmp / e["path"], str(out_dir / "base"))
    for marker in (tmp / STAMP, tmp / "data" / ".done", tmp / "base" / ".copied", tmp / "base" / BASE_DONE,
                   *(tmp / "experts").glob(".design-*.json")):
        marker.unlink(missing_ok=True)  # resume bookkeeping, not part of the zoo
    info["ready_seconds"] = round(time.time() - t_start, 1)  # published: usable from here on
    _write_info(tmp, info, stages, cpu, t_start)
    publish_folder(tmp, out_dir)  # force: the old zoo is moved aside first, so the swap is one rename
    if prof.self_check and not prof.strict:
        # the zoo is complete and published, so the app takes it now; its self-check (scores,
        # regime targets, showcase) follows and is added to build_info.json when done
        try:
            with torch_threads(prof.threads):
                _self_check(out_dir, prof, pool, info, stages, cpu, bar)
        except Exception as exc:  # the zoo is usable without it; say so, do not take it back
            log.exception("the self-check of zoo %s failed; the zoo is kept without it", out_dir)
            info["self_check_error"] = f"{type(exc).__name__}: {exc}"
        except BaseException:
            if pool is not None:
                pool.close(kill=True)
            bar.close()
            raise
        _write_info(out_dir, info, stages, cpu, t_start)
        bar.set_postfix_str("done")
    if pool is not None:
        pool.close()
    bar.close()
    log.info("zoo %s built in %.0f s, usable after %.0f s (%s)", out_dir, info["seconds"], info["ready_seconds"],
             info["stages_seconds"])
    return out_dir
