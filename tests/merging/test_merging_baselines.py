"""Baselines worked by hand: average, task arithmetic, TIES, DARE, TALL/consensus, MMER."""

import pytest
import torch

from graft_ui.merging import (
    METHODS,
    consensus,
    dare_linear,
    dare_ties,
    get_method,
    mmer_expert_view,
    mmer_merge,
    tall_masks,
    task_arithmetic_merge,
    ties_merge,
)
from graft_ui.merging.steps import magnitude_threshold

T = torch.tensor


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_average_weighted_by_hand():
    out, st = get_method("average").merge(None, [T([1.0, 2.0, 3.0]), T([3.0, 4.0, 5.0])], [1, 3], {}, None)
    assert out.tolist() == [2.5, 3.5, 4.5]
    with pytest.raises(ValueError, match="sum to 0"):
        get_method("average").merge(None, [T([1.0]), T([2.0])], [1, -1], {}, None)


def test_task_arithmetic_by_hand():
    base = T([1.0, 1.0, 1.0])
    E = [T([2.0, 1.0, 0.0]), T([1.0, 3.0, 1.0])]  # tau1 = [1, 0, -1], tau2 = [0, 2, 0]
    out, _ = get_method("task_arithmetic").merge(base, E, None, {"lam": 0.5}, None)
    assert out.tolist() == [1.5, 2.0, 0.5]
    out = task_arithmetic_merge(base, E, [2.0, 1.0], lam=1.0)  # 1 + [2, 2, -2]
    assert out.tolist() == [3.0, 3.0, -1.0]


def test_ties_by_hand():
    """density 0.67 keeps k = int(0.67 * 3) = 2 entries per task vector:
    tau1 [3, -1, 2] -> [3, 0, 2];  tau2 [1, -4, .5] -> [1, -4, 0];  tau3 [-2, 1.5, -5] -> [-2, 0, -5]
    sums [2, -4, -3] elect [+, -, -]; disjoint means [(3+1)/2, -4, -5]; base 1 + 0.5 * that."""
    base = torch.ones(3)
    taus = [T([3.0, -1.0, 2.0]), T([1.0, -4.0, 0.5]), T([-2.0, 1.5, -5.0])]
    out, st = get_method("ties").merge(base, [base + t for t in taus], None, {"density": 0.67, "lam": 0.5}, None)
    assert out.tolist() == pytest.approx([2.0, -1.0, -1.5])
    assert st["kept"] == pytest.approx([2 / 3] * 3, abs=1e-5)
    # density 1 trims nothing: sums [2, -3.5, -2.5] elect [+, -, -]; means [(3+1)/2, (-1-4)/2, -5]
    out, _ = ties_merge(torch.zeros(3), taus, density=1.0)
    assert out.tolist() == pytest.approx([2.0, -2.5, -5.0])


def test_ties_weights_and_zero_column():
    # weights enter the election and the mean: 1*[2] vs 3*[-1] elects -, mean of agreeing = -1
    out, _ = ties_merge(torch.zeros(2), [T([2.0, 0.0]), T([-1.0, 0.0])], [1.0, 3.0], density=1.0)
    assert out.tolist() == [-1.0, 0.0]


def test_magnitude_threshold_keeps_top_k_without_sort():
    x = torch.randn(100, generator=gen(0))
    for density, k in ((0.3, 30), (0.0, 0), (1.0, 100), (0.005, 0)):
        t = magnitude_threshold(x, density)
        assert int((x.abs() >= t).sum()) == k
    with pytest.raises(ValueError, match="density=1.5"):
        magnitude_threshold(x, 1.5)


def test_dare_seeded_reproducible_and_p0_is_task_arithmetic():
    base = torch.randn(6, 5, generator=gen(1))
    E = [base + torch.randn(6, 5, generator=gen(s)) for s in (2, 3)]
    a, st = dare_linear(base, E, p=0.5, generator=gen(7))
    b, _ = dare_linear(base, E, p=0.5, generator=gen(7))
    c, _ = dare_linear(base, E, p=0.5, generator=gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert all(0.2 < k < 0.8 for k in st["kept"])
    assert torch.allclose(dare_linear(base, E, p=0.0, generator=gen(0))[0], task_arithmetic_merge(base, E))
    assert torch.allclose(dare_ties(base, E, p=0.0, generator=gen(0))[0], ties_merge(base, E, density=1.0)[0])
    with pytest.raises(ValueError, match="generator=None"):
        dare_linear(base, E, p=0.5, generator=None)


def test_dare_unbiased_in_expectation():
    base = torch.zeros(4, 4)
    tau = torch.randn(4, 4, generator=gen(11))
    p, n = 0.5, 1000
    mean = sum(dare_linear(base, [tau], p=p, generator=gen(s))[0] for s in range(n)) / n
    # each draw has std |tau| sqrt(p/(1-p)); allow 5 standard errors
    tol = 5 * tau.abs() * (p / (1 - p)) ** 0.5 / n**0.5
    assert bool(((mean - tau).abs() <= tol + 1e-6).all())


EXPERTS3 = [T([1.0, 0.0, 3.0]), T([1.0, 2.0, -3.0]), T([0.0, 0.0, 1.0])]  # tau_MT = [2, 2, 1]


def test_tall_masks_and_consensus_by_hand():
    """lam_mask 1: m_t = |tau_t| >= |tau_MT - tau_t|
    m1 = [1>=1, 0>=2, 3>=2] = [T, F, T];  m2 = [1>=1, 2>=0, 3>=4] = [T, T, F];  m3 = [0>=2, 0>=2, 1>=0] = [F, F, T]
    agreeing counts [2, 1, 2]: k=2 keeps entries 0 and 2 of tau_MT."""
    taus = torch.stack(EXPERTS3)
    masks = tall_masks(taus, taus.sum(0), 1.0)
    assert masks.tolist() == [[True, False, True], [True, True, False], [False, False, True]]
    out, st = consensus(torch.zeros(3), EXPERTS3, lam_mask=1.0, k=2)
    assert out.tolist() == [2.0, 0.0, 1.0]
    assert st["mask_kept"] == pytest.approx([2 / 3, 2 / 3, 1 / 3], abs=1e-5)
    assert st["kept"] == pytest.approx(2 / 3, abs=1e-5)
    out, _ = get_method("consensus").merge(torch.ones(3), [1 + e for e in EXPERTS3], None,
                                           {"lam_mask": 1.0, "k": 1, "lam": 0.5}, None)
    assert out.tolist() == [2.0, 2.0, 1.5]  # k=1 keeps everything
    with pytest.raises(ValueError, match="k=4"):
        consensus(torch.zeros(3), EXPERTS3, k=4)


def test_mmer_masks_and_expert_views_by_hand():
    base = torch.full((3,), 10.0)
    merged, masks, st = mmer_merge(base, [base + e for e in EXPERTS3], lam=1.0, lam_mask=1.0)
    assert merged.tolist() == [12.0, 12.0, 11.0]
    assert [m.tolist() for m in masks] == [[True, False, True], [True, True, False], [False, False, True]]
    assert st["mask_kept"] == pytest.approx([2 / 3, 2 / 3, 1 / 3], abs=1e-5)
    assert mmer_expert_view(merged, masks, 0, base).tolist() == [12.0, 10.0, 11.0]
    assert mmer_expert_view(merged - base, masks, 1).tolist() == [2.0, 2.0, 0.0]
    # recon error of expert 1: view tau [2, 2, 0] vs tau [1, 2, -3] -> sqrt(1 + 9) / sqrt(1 + 4 + 9)
    assert st["recon_rel_err"][1] == pytest.approx((10 / 14) ** 0.5, abs=1e-5)
    out, st2 = get_method("mmer").merge(base, [base + e for e in EXPERTS3], None,
                                        {"merge_step": "ties", "density": 1.0}, None)
    assert torch.equal(out, ties_merge(base, [base + e for e in EXPERTS3], density=1.0)[0])
    assert len(st2["mask_kept"]) == 3
    with pytest.raises(ValueError, match="i=3"):
        mmer_expert_view(merged, masks, 3, base)


def test_every_method_deterministic_blockwise_and_keeps_dtype():
    base = torch.randn(13, 7, generator=gen(20))
    E = [base + 0.1 * torch.randn(13, 7, generator=gen(s)) for s in (21, 22, 23)]
    for name, m in METHODS.items():
        b = base if m.needs_base else None
        k = min(3, m.max_experts or 3)  # SLERP and the other one-expert methods take one
        a, st = m.merge(b, E[:k], [1.0, 0.5, 2.0][:k], {}, gen(5))
        a2, st2 = m.merge(b, E[:k], [1.0, 0.5, 2.0][:k], {}, gen(5))
        assert torch.equal(a, a2) and st == st2, name
        assert a.shape == base.shape and a.dtype == torch.float32, name
        lo, _ = m.merge(b.bfloat16() if b is not None else None, [e.bfloat16() for e in E[:k]], None, {}, gen(5))
        assert lo.dtype == torch.bfloat16, name
    # row blocks do not change deterministic results
    assert torch.equal(ties_merge(base, E, block_rows=1)[0], ties_merge(base, E)[0])
    assert torch.equal(consensus(base, E, block_rows=2)[0], consensus(base, E)[0])


def test_input_errors_name_the_value():
    with pytest.raises(ValueError, match=r"expert 1 has shape \(2,\)"):
        task_arithmetic_merge(torch.zeros(3), [torch.zeros(3), torch.zeros(2)])
    with pytest.raises(ValueError, match="3 experts"):
        task_arithmetic_merge(torch.zeros(3), [torch.zeros(3)] * 3, [1.0, 1.0])
    with pytest.raises(ValueError, match="base is None"):
        get_method("ties").merge(None, [torch.zeros(3)], None, {}, None)


@pytest.mark.parametrize("bins,gather_limit", [(4096, 1 << 21), (4, 3), (2, 1)])
def test_streamed_kth_largest_equals_kthvalue(bins, gather_limit):
    """The bounded-memory threshold (histogram, narrow to one bin, repeat) is exact, ties and
    zeros included; tiny bins/gather_limit force several narrowing rounds."""
    from graft_ui.merging.steps import kth_largest_abs

    x = torch.randn(40, 9, generator=gen(30)).mul_(4).round_().div_(4)  # many ties and zeros
    mags = x.abs().flatten()
    blocks = lambda: iter(x.split(7))  # noqa: E731
    for k in (1, 2, 17, 100, 359):
        want = float(torch.kthvalue(mags, mags.numel() - k + 1).values)
        assert kth_largest_abs(blocks, k, bins=bins, gather_limit=gather_limit) == want, k
    assert kth_largest_abs(blocks, 0) == float("inf") and kth_largest_abs(blocks, 360) == 0.0


def test_ties_streamed_threshold_path_matches(monkeypatch):
    import graft_ui.merging.steps as steps
    import graft_ui.merging.ties as ties_mod

    base = torch.randn(30, 11, generator=gen(40))
    E = [base + torch.randn(30, 11, generator=gen(s)) for s in (41, 42)]
    want, _ = ties_merge(base, E, density=0.3)
    monkeypatch.setattr(steps, "KTHVALUE_LIMIT", 10)
    monkeypatch.setattr(ties_mod, "KTHVALUE_LIMIT", 10)
    got, st = ties_merge(base, E, density=0.3)
    assert torch.equal(got, want) and st["kept"] == pytest.approx([0.3, 0.3], abs=1e-2)
