"""The label-free merge preview and the per-(pair, method) signals, end to end on the ci zoo."""

import pytest

from graft_ui.advisor.preview import Previewer, Stopped, kl_mean


@pytest.fixture(scope="module")
def manifest(ci_zoo):
    from graft_ui.models.manifest import load_manifest

    return load_manifest(ci_zoo)


def test_kl_of_a_distribution_with_itself_is_zero_and_positive_otherwise():
    import torch

    p = torch.log_softmax(torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]]), -1)
    q = torch.log_softmax(torch.tensor([[2.0, 1.0, 0.5], [0.0, 1.0, 1.0]]), -1)
    assert kl_mean([p], [p]) == pytest.approx(0.0, abs=1e-7)
    assert kl_mean([p], [q]) > 0.05


def test_preview_of_a_lora_pair_on_the_ci_zoo(manifest, tmp_path):
    pv = Previewer(manifest, k=2, work=tmp_path)
    seen = []
    res = pv.preview("math-lora", "code-lora", "task_arithmetic", progress=lambda f, d: seen.append(f))
    assert res["k"] == 2 and res["prompts"] == {"math-lora": "math", "code-lora": "code"}
    for key in ("agree_a", "agree_b", "agree_min"):
        assert res[key] in (0.0, 0.5, 1.0)  # a fraction of 2 prompts
    assert res["agree_min"] == min(res["agree_a"], res["agree_b"]) and res["kl_max"] >= res["kl_a"] >= 0.0
    assert seen[-1] == 1.0 and seen == sorted(seen)
    assert not list(tmp_path.iterdir())  # the fused model is deleted after the preview
    # an expert fused with itself says exactly what it says
    same = pv.preview("math-lora", "math-lora", "average")
    assert same["agree_min"] == 1.0 and same["kl_max"] == pytest.approx(0.0, abs=1e-4)
    with pytest.raises(Stopped):
        pv.preview("math-lora", "code-lora", "ties", stop=lambda: True)
    g = pv.gradient_distance("math-lora", "code-lora", "math+code")
    assert g["grad_l2"] > 0 and -1 <= g["grad_cos"] <= 1


def test_signals_are_cached_per_pair_and_method(manifest, tmp_path, monkeypatch):
    from graft_ui.advisor import signals

    study = {"table1": [{"pair": "math-full+code-full", "variant": "graft", "kept_min": 0.5, "kept_a": 0.5,
                         "kept_b": 0.9, "mean": 30.0}]}
    rows = signals.collect(manifest, study, tmp_path, kinds=["full"], methods=["graft"], k=2,
                           experts=["math-full", "code-full"])
    (row,) = rows
    assert row["pair"] == "math-full+code-full" and row["kept_min"] == 0.5 and row["b_overlap"] is None
    assert row["cosine"] is not None and row["grad_l2"] > 0 and 0 <= row["agree_min"] <= 1

    def boom(*a, **k):
        raise AssertionError("recomputed a cached preview")

    monkeypatch.setattr(signals.Previewer, "preview", boom)
    assert signals.collect(manifest, study, tmp_path, kinds=["full"], methods=["graft"], k=2,
                           experts=["math-full", "code-full"]) == rows
