"""The app's analysis path (warm-up, the chat pool's base, the session cache) gives the plain path's numbers."""

import pytest

from graft_ui.analysis.analyze import analyze_experts

EXPERTS = ["math-lora", "medical-lora", "math-full"]


def test_warm_studio_analysis_equals_the_plain_path_and_is_reused(mini_manifest, tmp_path, monkeypatch):
    from graft_ui.analysis import analyze
    from graft_ui.studio import Studio
    from graft_ui.warmup import warm_up

    want = analyze_experts(str(mini_manifest), EXPERTS, "math", k=3)
    studio = Studio.from_manifest(mini_manifest, device="cpu", work_dir=tmp_path)
    try:
        times = warm_up(studio, k=3)
        # everything warmed: kernels, the base with both LoRA experts, the first dataset's samples
        assert set(times) == {"native kernels", "base and LoRA experts", "processor and samples", "plotting"}
        assert studio.pool.is_loaded("math-lora") and studio.pool.is_loaded("medical-lora")
        assert len(studio.analysis_cache._inputs) == 1
        got = studio.analyze("math", EXPERTS, k=3)
        for n in EXPERTS:
            assert got.experts[n].compatibility == pytest.approx(want.experts[n].compatibility, rel=1e-5)
            for m, v in want.experts[n].modules.items():
                assert got.experts[n].modules[m]["rho_n"] == pytest.approx(v["rho_n"], rel=1e-5, abs=1e-9)
        assert [p["score"] for p in got.pairs] == pytest.approx([p["score"] for p in want.pairs], rel=1e-5)
        # the same experts and data again: no forward pass at all, same numbers, another threshold applied
        monkeypatch.setattr(analyze, "collect_stats", lambda *a, **k: pytest.fail("statistics were recomputed"))
        again = studio.analyze("math", EXPERTS[:2], k=3, threshold=0.99)
        assert again.experts["math-lora"].compatibility == got.experts["math-lora"].compatibility
        assert again.threshold == 0.99
        # a new manifest forgets the session's cache
        studio.set_manifest(studio.manifest)
        assert not studio.analysis_cache._stats
    finally:
        studio.close()
