"""The timed runs of bench/bench_merge.py, each in its own process: `spawn(kind, args)` starts
this file with `--child KIND ARGS`, which runs one `child_*` function under a memory watch and
prints its wall seconds, peak RSS and peak anonymous memory as one JSON line.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qwen2vl_inputs import LORA_DIMS, LORA_MODULES  # noqa: E402  (bench/ is on sys.path: run as a script)


class MemWatch:
    """Peak anonymous memory (RssAnon sampled every 20 ms); VmHWM is read at the end."""

    def __init__(self):
        self.peak_anon = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self):
        while not self._stop.is_set():
            self.peak_anon = max(self.peak_anon, self._status("RssAnon"))
            time.sleep(0.02)

    def stop(self) -> dict:
        self._stop.set()
        self._t.join()
        self.peak_anon = max(self.peak_anon, self._status("RssAnon"))
        return {"peak_rss": self._status("VmHWM"), "peak_anon": self.peak_anon}


def child_floor(experts: list[str], out: str) -> dict:
    """Read every tensor of both experts (really read: pread backend), save_file one output in ~1 GB
    shards and fsync it (the merge fsyncs its output too)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    def opener(folder):
        index = Path(folder, "model.safetensors.index.json")
        files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
        return [safe_open(str(Path(folder, f)), "pt", backend="pread") for f in files]

    handles = [opener(e) for e in experts]
    Path(out).mkdir(parents=True)
    shard, size, k = {}, 0, 0
    for fa in handles[0]:
        for name in fa.keys():
            t = fa.get_tensor(name)
            for other in handles[1:]:
                for fb in other:
                    if name in fb.keys():
                        fb.get_tensor(name)  # read and drop
                        break
            shard[name] = t
            size += t.numel() * t.element_size()
            if size >= 1 << 30:
                k += 1
                save_file(shard, str(Path(out, f"model-{k:05d}.safetensors")), metadata={"format": "pt"})
                shard, size = {}, 0
    if shard:
        save_file(shard, str(Path(out, f"model-{k + 1:05d}.safetensors")), metadata={"format": "pt"})
    fsync_output(out)
    return {}


def fsync_output(out: str) -> None:
    """fsync every file and the folder, as the merge does before it publishes (graft_ui/atomic.py),
    so the floor pays the same write-back the merge pays."""
    from graft_ui.atomic import fsync_tree

    fsync_tree(out)


def child_merge(recipe: dict, out: str) -> dict:
    import logging

    from graft_ui.models.merge import run_recipe
    from graft_ui.recipe import Recipe

    logging.basicConfig(level=logging.WARNING)
    os.environ["TQDM_DISABLE"] = "1"
    res = run_recipe(Recipe.from_dict(recipe), out)
    extra = {"device": res.device, "modules": len(res.fused), "merge_s": res.seconds, **kernel_info()}
    errs = [st.get("lowrank_rel_err") for st in res.modules.values() if st.get("lowrank_rel_err") is not None]
    if errs:
        extra["lowrank_rel_err_mean"] = sum(errs) / len(errs)
        extra["lowrank_rel_err_max"] = max(errs)
    return extra


def kernel_info() -> dict:
    """This process's CPU vector ISA, torch's CPU kernels and the LoRA gate kernel's build target."""
    import torch

    from graft_ui.kernels.lora_gates import describe_kernel
    from graft_ui.native import cpu_vector_isa

    return {"cpu_isa": cpu_vector_isa(), "torch_cpu": torch.backends.cpu.get_cpu_capability(),
            "kernel": describe_kernel()}


def child_delta_floor(adapters: list[str]) -> dict:
    """Only the dense deltas scale * B @ A of every module of every adapter, into one reused buffer.

    Exact Graft gates on LoRA need every entry of both deltas (row L1 of their difference,
    a histogram of each), so computing them is a floor no exact method goes below; this
    child reads the adapters and does just those matmuls, nothing else.
    """
    import torch

    from graft_ui.models.lora_io import LoraAdapter

    ads = [LoraAdapter(a) for a in adapters]
    buf, elems, flops = None, 0, 0
    t0 = time.perf_counter()
    for key in ads[0].modules:
        for ad in ads:
            m = ad.modules[key]
            B, A = ad.read(m)
            n = B.shape[0] * A.shape[1]
            if buf is None or buf.numel() < n:
                buf = torch.empty(n)
            torch.matmul(B.float(), A.float(), out=buf[:n].view(B.shape[0], A.shape[1])).mul_(m.scale)
            elems, flops = elems + n, flops + 2 * n * B.shape[1]
    return {"delta_s": time.perf_counter() - t0, "delta_elements": elems, "gflop": flops / 1e9}


def child_svd_quality(adapters: list[str], layers: int, rank: int, sample: int) -> dict:
    """The merge's TIES + randomized SVD vs the exact truncated SVD (and torch.svd_lowrank) on a few modules."""
    import torch

    from graft_ui.merging.lora import RangeSketch, dense_to_lowrank, lowrank_from_sketch, sketch_basis, sketch_start
    from graft_ui.merging.ties import ties_merge
    from graft_ui.models.lora_io import LoraAdapter
    from graft_ui.models.merge import LOWRANK_OVERSAMPLE

    ads = [LoraAdapter(a) for a in adapters]
    rows = []
    mods = list(ads[0].modules)
    picks = [m for m in mods if m.layer == layers // 2][:sample]
    for key in picks:
        deltas, Bs, As = [], [], []
        for ad in ads:
            m = ad.modules[key]
            B, A = ad.read(m)
            deltas.append((B @ A) * m.scale)
            Bs.append(B * m.scale)
            As.append(A)
        merged, _ = ties_merge(torch.zeros_like(deltas[0]), deltas, density=0.2)
        M, N = merged.shape
        q = min(rank + LOWRANK_OVERSAMPLE, M, N)
        t0 = time.perf_counter()
        # as the merge does it (models/merge.py): sketch from the experts' dominant row directions
        # (the sketch is taken while the merge writes the delta there; here it costs one matmul)
        P = sketch_basis(N, q, torch.Generator().manual_seed(0), sketch_start(Bs, As, q))
        X = merged.float()
        _, _, e_ours = lowrank_from_sketch(X, rank, RangeSketch(X @ P, float(X.double().square().sum())))
        t1 = time.perf_counter()
        _, _, e_exact = dense_to_lowrank(merged, rank, exact=True)
        t2 = time.perf_counter()
        torch.manual_seed(0)
        U, S, V = torch.svd_lowrank(merged, q=q, niter=2)
        # float64 norms: a float32 norm of 13.8 M entries is off by ~1e-4, the size of the gaps compared
        resid = (merged - (U[:, :rank] * S[:rank]) @ V[:, :rank].T).double()
        e_torch = float(resid.norm() / merged.double().norm())
        t3 = time.perf_counter()
        rows.append({"module": key.name, "shape": [M, N], "rel_err_randomized": e_ours, "rel_err_exact_svd": e_exact,
                     "rel_err_svd_lowrank": e_torch, "s_randomized": t1 - t0, "s_exact_svd": t2 - t1,
                     "s_svd_lowrank": t3 - t2})
    return {"svd_quality": rows}


def child_lora_check(adapters: list[str], layers: int, sample: int) -> dict:
    """Exact LoRA Graft as the merge runs it (kernels/graft.py, the C kernel's statistics) against
    merging/lora.py's `graft_lora` (dense delta blocks in torch) on a few modules of the middle layer:
    the largest relative difference of the fused factors and of the gate inputs; and the kernel's
    statistics against float64 (`lora_gates.promise_problems`: the bounds _lora_gates.c states,
    true on any CPU), with how far its range and counts moved from the torch reference's (the two
    sum in different orders: an ulp at the extremes, entries within an ulp of a bin edge)."""
    from graft_ui.kernels import lora_gates
    from graft_ui.kernels.graft import graft_lora_fast
    from graft_ui.merging.lora import graft_lora
    from graft_ui.models.lora_io import LoraAdapter

    if lora_gates._LIB.load() is None:
        raise RuntimeError("the native LoRA gate kernel did not build: nothing to check")
    ads = [LoraAdapter(a) for a in adapters]
    mid = [m for m in ads[0].modules if m.layer == layers // 2]
    # one module of each shape first (square, wide, tall), then the rest
    first = ("self_attn.q_proj", "mlp.down_proj", "mlp.gate_proj")
    picks = sorted(mid, key=lambda m: next((i for i, f in enumerate(first) if m.name.endswith(f)), len(first)))
    rows = []

    def rel(x, y):  # largest |x - y| relative to y's largest magnitude
        return float((x.double() - y.double()).abs().max() / y.double().abs().max().clamp_min(1e-300))

    for key in picks[:sample]:
        (Bb, Ab), (Bg, Ag) = (ad.read(ad.modules[key]) for ad in ads)
        sb, sg = (ad.modules[key].scale for ad in ads)
        t0 = time.perf_counter()
        Bf, Af, stf = graft_lora_fast(Bb, Ab, sb, Bg, Ag, sg, {})
        t1 = time.perf_counter()
        Br, Ar, str_ = graft_lora(Bb, Ab, sb, Bg, Ag, sg)
        t2 = time.perf_counter()
        nat, ref = (f(Bb, Ab, sb, Bg, Ag, sg, 10) for f in (lora_gates.native, lora_gates.reference))
        rows.append({
            "module": key.name, "shape": [Bb.shape[0], Ab.shape[1]], "s_fast": t1 - t0, "s_reference": t2 - t1,
            "rel_B": rel(Bf, Br), "rel_A": rel(Af, Ar),
            "rel_gates": max(abs(stf[k] - str_[k]) / max(abs(str_[k]), 1e-300) for k in ("H_b", "H_g", "w_glob",
                                                                                       "wb_mean", "wb_min", "wb_max")),
            "rel_rowl1": rel(nat.d, ref.d),
            "range_ulps": max(abs(a - b) / _ulp32(b) for a, b in zip(nat.range_b + nat.range_g, ref.range_b + ref.range_g)),
            "counts_moved": int((nat.counts_b - ref.counts_b).abs().sum() + (nat.counts_g - ref.counts_g).abs().sum()),
            "promise_problems": lora_gates.promise_problems(nat, Bb, Ab, sb, Bg, Ag, sg, 10),
            "range_fraction": nat.range_entries / (2 * Bb.shape[0] * Ab.shape[1]),
        })
    return {"exact_check": rows, **kernel_info()}


def _ulp32(x: float) -> float:
    """The float32 spacing at x (its float64 spacing x 2^29)."""
    return math.ulp(abs(x)) * 2.0 ** 29 if x else 2.0 ** -149


def child_peft(adapters: list[str], layers: int, rank: int) -> dict:
    """peft's add_weighted_adapter(..., "ties_svd") on the adapters, on a skeleton model.

    The skeleton has the adapters' module names and shapes as nn.Linear with uninitialised
    weights (meta -> empty): ties_svd only reads the LoRA factors.
    """
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from torch import nn

    with torch.device("meta"):
        skel = nn.Module()
        skel.model = nn.Module()
        skel.model.layers = nn.ModuleList()
        for _ in range(layers):
            layer = nn.Module()
            layer.self_attn, layer.mlp = nn.Module(), nn.Module()
            for mod, o, i in LORA_MODULES:
                parent, name = mod.split(".")
                setattr(getattr(layer, parent), name, nn.Linear(LORA_DIMS[i], LORA_DIMS[o], bias=False))
            skel.model.layers.append(layer)
    skel = skel.to_empty(device="cpu")
    names = ["a", "b"]
    pm = None
    t0 = time.perf_counter()
    for name, folder in zip(names, adapters):
        raw = json.loads(Path(folder, "adapter_config.json").read_text())
        cfg = LoraConfig(r=raw["r"], lora_alpha=raw["lora_alpha"], target_modules=raw["target_modules"],
                         lora_dropout=0.0, bias="none")
        if pm is None:
            pm = get_peft_model(skel, cfg, adapter_name=name)
        else:
            pm.add_adapter(name, cfg)
        res = set_peft_model_state_dict(pm, load_file(str(Path(folder, "adapter_model.safetensors"))), adapter_name=name)
        if res.unexpected_keys:
            raise RuntimeError(f"peft did not place adapter keys {res.unexpected_keys[:3]}")
    t1 = time.perf_counter()
    pm.add_weighted_adapter(names, [1.0, 1.0], "merged", combination_type="ties_svd", svd_rank=rank, density=0.2)
    t2 = time.perf_counter()
    return {"load_s": t1 - t0, "peft_ties_svd_s": t2 - t1}


def run_child(kind: str, args: dict) -> dict:
    if args.get("cpus"):
        os.sched_setaffinity(0, set(args["cpus"]))
    watch = MemWatch()
    t0 = time.perf_counter()
    if kind == "floor":
        extra = child_floor(args["experts"], args["out"])
    elif kind == "merge":
        extra = child_merge(args["recipe"], args["out"])
    elif kind == "mergekit":
        subprocess.run(args["cmd"], check=True, stdout=subprocess.DEVNULL)
        extra = {}
    elif kind == "svd_quality":
        extra = child_svd_quality(args["adapters"], args["layers"], args["rank"], args["sample"])
    elif kind == "delta_floor":
        extra = child_delta_floor(args["adapters"])
    elif kind == "lora_check":
        extra = child_lora_check(args["adapters"], args["layers"], args["sample"])
    elif kind == "peft":
        extra = child_peft(args["adapters"], args["layers"], args["rank"])
    else:
        raise ValueError(kind)
    wall = time.perf_counter() - t0
    mem = watch.stop()
    import resource

    # CPU seconds (user + system): on a loaded machine wall time mostly measures the wait for a core
    use = resource.getrusage(resource.RUSAGE_CHILDREN if kind == "mergekit" else resource.RUSAGE_SELF)
    mem["cpu_s"] = use.ru_utime + use.ru_stime
    if kind == "mergekit":  # the work happened in a grandchild: use its rusage
        mem["peak_rss"] = use.ru_maxrss * 1024
        mem["peak_anon"] = None
    return {"wall": wall, **mem, **extra}


def spawn(kind: str, args: dict, threads: int | None, cpus: list[int] | None = None, env: dict | None = None) -> dict:
    """Run child `kind` in a new process (OMP_NUM_THREADS=threads, pinned to `cpus`, environment
    `env`, default os.environ); its result dict."""
    env = dict(os.environ if env is None else env, HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if cpus:
        args = dict(args, cpus=cpus)
    proc = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(args)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} run failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "--child":
        sys.exit("usage: merge_children.py --child KIND ARGS_JSON (bench_merge.py starts it)")
    print(json.dumps(run_child(sys.argv[2], json.loads(sys.argv[3]))))
