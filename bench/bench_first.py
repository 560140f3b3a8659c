"""First analysis and first fusion in a fresh process, through the library (no gradio): what a user waits for.

    .venv/bin/python bench/bench_first.py                          # CPU, the ci zoo (built if missing)
    python3 bench/bench_first.py --device cuda --json first.json   # on a GPU machine (bench/gpu.sh)

Times, each right after the previous, in one process: importing torch, transformers and the
library; the first analysis of two LoRA experts on one domain (K = 16, as the Analyze tab), then
one on another domain (warm: models and processor loaded, as in the app; the same domain again
would be a cache hit); the first Graft
fusion of the two (exact adapter, as examples/recipe-graft.yaml), and a second. The cold cost is
the first minus the second, measured in the same run. bench/bench_cold.py measures the same steps
through the app, where start-up warm-up (graft_ui/warmup.py) takes most of the cold cost.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
EXPERTS = ["math-lora", "code-lora"]


def log(msg: str) -> None:
    print(f"[bench_first {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo-profile", default="ci", choices=["ci", "full"])
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--dataset", default="math", help="the target domain of the analysis")
    ap.add_argument("-k", type=int, default=16, help="samples analysed (the Analyze tab's default)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--dry-run", action="store_true", help="check the arguments and imports (no gradio), then stop")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    t = time.perf_counter()
    import torch

    from graft_ui.analysis.analyze import analyze_experts
    from graft_ui.analysis.cache import AnalysisCache
    from graft_ui.fusion import fuse_recipe
    from graft_ui.models.manifest import load_manifest
    from graft_ui.recipe import Recipe
    from graft_ui.zoo import ensure_zoo

    imports = time.perf_counter() - t
    assert "gradio" not in sys.modules, "the library path imports gradio (not on the GPU machine)"
    if a.dry_run:
        log(f"dry run: arguments and imports fine (device {a.device}, {a.zoo_profile} zoo)")
        return 0
    cuda = a.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit(f"--device {a.device}: torch sees no CUDA device")

    def timed(fn):
        t0 = time.perf_counter()
        out = fn()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0, out

    zoo_s, zoo = timed(lambda: ensure_zoo(a.zoo_profile, progress=False))
    manifest = load_manifest(zoo)
    cache = AnalysisCache()

    def analysis(dataset):
        return analyze_experts(manifest, EXPERTS, dataset, k=a.k, device=a.device, progress=False, cache=cache)

    first_a, _ = timed(lambda: analysis(a.dataset))
    log(f"first analysis {first_a:.2f} s")
    # another domain: the models and processor are loaded, its samples are not (the same one again is a cache hit)
    other = next(d for d in manifest.datasets if d != a.dataset)
    second_a, _ = timed(lambda: analysis(other))
    recipe = Recipe.from_dict({"method": "graft", "experts": [{"path": manifest.expert(e).path, "name": e} for e in EXPERTS],
                               "device": "cuda" if cuda else "cpu"})
    with tempfile.TemporaryDirectory() as tmp:
        first_f, _ = timed(lambda: fuse_recipe(recipe, Path(tmp) / "f1", manifest=manifest, overwrite=True))
        log(f"first fusion {first_f:.2f} s")
        second_f, _ = timed(lambda: fuse_recipe(recipe, Path(tmp) / "f2", manifest=manifest, overwrite=True))
    res = {"device": a.device, "device_name": torch.cuda.get_device_name() if cuda else "cpu",
           "zoo": a.zoo_profile, "zoo_seconds": round(zoo_s, 2), "dataset": a.dataset, "k": a.k,
           "import_seconds": round(imports, 2),
           "analysis_first_s": round(first_a, 3), "analysis_second_s": round(second_a, 3),
           "fusion_first_s": round(first_f, 3), "fusion_second_s": round(second_f, 3),
           "torch": torch.__version__}
    print(f"first analysis {first_a:.2f} s (then {second_a:.2f} s), first fusion {first_f:.2f} s "
          f"(then {second_f:.2f} s) on {res['device_name']}; imports {imports:.1f} s")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
