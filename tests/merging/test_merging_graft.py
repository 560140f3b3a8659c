"""Graft (DESIGN.md section 2) on small hand-checkable tensors."""

import math

import pytest
import torch

from graft_ui.merging import (
    apply_row_weights,
    dual_gate,
    entropy,
    entropy_blocks,
    gate_weights,
    get_method,
    graft_chain,
    graft_pair,
    graft_row_weights,
    local_gate,
    row_l1_distance,
)


def rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------- entropy

def test_entropy_constant_is_zero():
    assert entropy(torch.full((3, 4), 2.5)) == 0.0


def test_entropy_uniform_over_bins_is_ln_bins():
    # 0..9 over 10 bins spanning [0, 9]: one value per bin (9 lands in the last bin)
    assert entropy(torch.arange(10.0).reshape(2, 5)) == pytest.approx(math.log(10), abs=1e-12)
    # 0..7 over 4 bins: two values per bin
    assert entropy(torch.arange(8.0), bins=4) == pytest.approx(math.log(4), abs=1e-12)


def test_entropy_two_spikes_is_ln2_and_empty_bins_count_zero():
    W = torch.tensor([[0.0] * 5, [9.0] * 5])
    assert entropy(W) == pytest.approx(math.log(2), abs=1e-12)
    # 3:1 split -> -(3/4 ln 3/4 + 1/4 ln 1/4)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert entropy(torch.tensor([0.0, 0.0, 0.0, 1.0])) == pytest.approx(h, abs=1e-12)


def test_entropy_blockwise_equals_whole():
    W = rand(37, 13)
    whole = entropy(W, block_rows=10**6)
    for rows in (1, 5, 36):
        assert entropy(W, block_rows=rows) == pytest.approx(whole, abs=1e-12)
    blocks = lambda: iter(W.split(7))  # noqa: E731  any iterator factory of row blocks works
    assert entropy_blocks(blocks) == pytest.approx(whole, abs=1e-12)


def test_entropy_rejects_bad_bins():
    with pytest.raises(ValueError, match="bins"):
        entropy(rand(3, 3), bins=0)


# ---------------------------------------------------------------- gates

def test_global_gate_formula_on_known_entropies():
    Wb = torch.arange(10.0).reshape(2, 5)  # H = ln 10
    Wg = torch.tensor([[0.0] * 5, [9.0] * 5])  # H = ln 2
    _, st = graft_row_weights(Wb, Wg)
    assert st["H_b"] == pytest.approx(math.log(10))
    assert st["H_g"] == pytest.approx(math.log(2))
    expected = 0.4 / math.pi * math.atan(500 * (math.log(10) - math.log(2))) + 0.5
    assert st["w_glob"] == pytest.approx(expected, abs=1e-12)
    assert 0.3 < st["w_glob"] < 0.7
    _, st4 = graft_row_weights(Wb, Wg, global_form="eq4")
    assert st4["w_glob"] == pytest.approx(0.4 / 500 * math.atan(500 * math.log(5)) + 0.5, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_eq4_stays_within_a_over_c_times_half_pi(seed):
    Wb, Wg = rand(6, 5, seed=seed), rand(6, 5, seed=seed + 100) ** 3
    for a, c in ((0.4, 500.0), (1.0, 2.0)):
        _, st = graft_row_weights(Wb, Wg, a=a, c=c, global_form="eq4")
        assert abs(st["w_glob"] - 0.5) <= a / c * math.pi / 2 + 1e-12


def test_local_gate_by_hand():
    # d = [3, 7]: mean 5, population std 2 -> z = [-1, 1]
    Wb, Wg = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.zeros(2, 2)
    d = row_l1_distance(lambda: [(Wb, Wg)])
    assert d.tolist() == [3.0, 7.0]
    w_loc = local_gate(d, alpha=2.0, beta=0.5)
    assert w_loc.tolist() == pytest.approx(torch.sigmoid(torch.tensor([-1.5, 2.5])).tolist(), abs=1e-7)


def test_local_gate_constant_d_gives_beta():
    assert local_gate(torch.full((4,), 0.1), alpha=3.0, beta=0.7).tolist() == pytest.approx(
        [1 / (1 + math.exp(-0.7))] * 4
    )


def test_dual_gate_by_hand():
    g, wl = 0.6, torch.tensor([0.2, 0.9], dtype=torch.float64)
    wbt = g * (1 - torch.exp(-g * wl))
    wgt = (1 - g) * (1 - torch.exp(-(1 - g) * (1 - wl)))
    expected = torch.softmax(torch.stack([wbt, wgt]), dim=0)[0]
    assert torch.allclose(dual_gate(g, wl), expected, atol=1e-12)


def test_weights_per_channel_sum_to_one_and_fusion_formula():
    Wb, Wg = rand(8, 6, seed=1), rand(8, 6, seed=2) * 3
    wb, st = graft_row_weights(Wb, Wg)
    wg = 1 - wb
    assert wb.shape == (8,) and bool(((wb > 0) & (wb < 1)).all())
    assert torch.allclose(wb + wg, torch.ones(8))
    fused, _ = graft_pair(Wb, Wg)
    assert torch.allclose(fused, wb[:, None] * Wb + wg[:, None] * Wg, atol=1e-6)
    assert st["wb_min"] <= st["wb_mean"] <= st["wb_max"]


def test_identical_inputs_return_the_input():
    W = rand(5, 7)
    fused, _ = graft_pair(W, W.clone())
    assert torch.equal(fused, W)
    merged, _ = get_method("graft").merge(None, [W, W.clone(), W.clone()], None, {}, None)
    assert torch.equal(merged, W)


def test_mirror_swap_with_negated_phi():
    """Swapping base and graft mirrors the weights exactly when phi is negated (alpha -> -alpha,
    beta -> -beta): d is symmetric so w_loc -> 1 - w_loc, H_b - H_g flips so w_glob -> 1 - w_glob
    (atan is odd), hence wb~ <-> wg~ and wb' = 1 - wb; the fused tensor is unchanged. With
    alpha kept (or beta != 0 not negated) it is not a mirror."""
    Wb, Wg = rand(9, 4, seed=3), rand(9, 4, seed=4) * 2
    kw = dict(alpha=1.7, beta=0.3)
    wb, st = graft_row_weights(Wb, Wg, **kw)
    wb2, st2 = graft_row_weights(Wg, Wb, alpha=-1.7, beta=-0.3)
    assert st2["w_glob"] == pytest.approx(1 - st["w_glob"], abs=1e-12)
    assert torch.allclose(wb2, 1 - wb, atol=1e-6)
    assert torch.allclose(graft_pair(Wb, Wg, **kw)[0], graft_pair(Wg, Wb, alpha=-1.7, beta=-0.3)[0], atol=1e-6)
    wb3, _ = graft_row_weights(Wg, Wb, alpha=1.7, beta=0.3)
    assert not torch.allclose(wb3, 1 - wb, atol=1e-4)
    wb4, _ = graft_row_weights(Wg, Wb, alpha=-1.7, beta=0.3)
    assert not torch.allclose(wb4, 1 - wb, atol=1e-4)


def test_ablation_modes():
    Wb, Wg = rand(7, 5, seed=5), rand(7, 5, seed=6) ** 3
    wb_l, st_l = graft_row_weights(Wb, Wg, gates="local")
    assert st_l["w_glob"] == 0.5 and st_l["H_b"] is None
    d = row_l1_distance(lambda: [(Wb, Wg)])
    assert torch.allclose(wb_l.double(), dual_gate(0.5, local_gate(d)), atol=1e-7)

    wb_g, st_g = graft_row_weights(Wb, Wg, gates="global")
    assert st_g["w_glob"] != 0.5
    assert torch.allclose(wb_g, wb_g[0].expand(7))  # one weight for the whole module
    half = torch.full((1,), 0.5, dtype=torch.float64)
    assert wb_g[0].item() == pytest.approx(dual_gate(st_g["w_glob"], half).item(), abs=1e-7)

    wb_d, st_d = graft_row_weights(Wb, Wg, gates="dual")
    assert st_d["w_glob"] == st_g["w_glob"]
    assert torch.allclose(wb_d.double(), dual_gate(st_d["w_glob"], local_gate(d)), atol=1e-7)
    with pytest.raises(ValueError, match="gates='both'"):
        graft_row_weights(Wb, Wg, gates="both")


def test_blockwise_gates_equal_whole():
    Wb, Wg = rand(23, 11, seed=7), rand(23, 11, seed=8)
    wb, st = graft_row_weights(Wb, Wg)
    for rows in (1, 4, 22):
        wb2, st2 = graft_row_weights(Wb, Wg, block_rows=rows)
        assert torch.allclose(wb, wb2, atol=1e-7)
        assert st2["H_b"] == pytest.approx(st["H_b"], abs=1e-12)
        assert torch.equal(graft_pair(Wb, Wg, block_rows=rows)[0], graft_pair(Wb, Wg)[0])


def test_gradients_flow_to_alpha_and_beta():
    Wb, Wg = rand(6, 4, seed=9), rand(6, 4, seed=10) * 2
    alpha = torch.tensor(1.0, requires_grad=True)
    beta = torch.tensor(0.2, requires_grad=True)
    fused, st = graft_pair(Wb, Wg, alpha=alpha, beta=beta)
    assert fused.requires_grad and st["alpha"] == 1.0
    (fused * rand(6, 4, seed=11)).sum().backward()
    assert alpha.grad is not None and beta.grad is not None
    assert alpha.grad.abs() > 0 and beta.grad.abs() > 0

    d = row_l1_distance(lambda: [(Wb, Wg)])
    a64 = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    b64 = torch.tensor(-0.1, dtype=torch.float64, requires_grad=True)
    f = lambda a, b: gate_weights(d, 1.0, 1.2, rows=6, alpha=a, beta=b)[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, (a64, b64))


def test_one_dim_and_bias_rows():
    b1, b2 = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 0.0, 5.0])
    fused, st = graft_pair(b1, b2)
    assert fused.shape == (3,) and st["rows"] == 3
    W1, W2 = rand(3, 4, seed=12), rand(3, 4, seed=13)
    wb, _ = graft_row_weights(W1, W2)
    assert torch.allclose(apply_row_weights(wb, b1, b2), wb * b1 + (1 - wb) * b2, atol=1e-6)
    with pytest.raises(ValueError, match="row weights"):
        apply_row_weights(wb, torch.ones(4), torch.ones(4))


def test_chain_left_to_right_and_dtype():
    E = [rand(5, 6, seed=s) for s in (20, 21, 22)]
    F, st = get_method("graft").merge(None, E, [1.0, 1.0, 1.0], {"gates": "dual"}, None)
    step1, _ = graft_pair(E[0], E[1])
    step2, _ = graft_pair(step1, E[2])
    assert torch.allclose(F, step2, atol=1e-6)
    assert len(st["steps"]) == 2 and st["w_glob"] == st["steps"][-1]["w_glob"]
    Fb, _ = graft_chain([e.to(torch.bfloat16) for e in E])
    assert Fb.dtype == torch.bfloat16
    assert torch.allclose(Fb.float(), F, atol=0.05)


def test_shape_mismatch_is_named():
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        graft_pair(torch.ones(2, 3), torch.ones(3, 2))


# ---------------------------------------------------------------- scale (extension, not in the paper)

def _same_entropy_pair():
    """Two experts with the same multiset of values (so H_b == H_g exactly) around a base."""
    base = rand(6, 5, seed=7)
    e1 = base + 0.1 * rand(6, 5, seed=8)
    return base, e1, e1.flip(0)


def test_scale_one_is_the_papers_graft_bit_for_bit():
    E = [rand(9, 7, seed=s) for s in (1, 2, 3)]
    ref, st_ref = graft_pair(graft_pair(E[0], E[1], out_dtype=torch.float32)[0], E[2])
    for kw in ({}, {"scale": 1.0}, {"scale": 1.0, "base": None}, {"scale": 1, "base": rand(9, 7, seed=4)}):
        out, st = graft_chain(E, **kw)
        assert torch.equal(out, ref) and "scale" not in st
    out, _ = get_method("graft").merge(None, E[:2], None, {"scale": 1.0})
    assert torch.equal(out, graft_pair(E[0], E[1])[0])


def test_scale_two_doubles_the_fused_delta_by_hand():
    # gates="global" with equal entropies: w_glob = 0.5, w_loc = 0.5, so wb = 1/2 exactly and the
    # fused model is the mean; scale 2 then keeps both deltas whole: base + d1 + d2 (task arithmetic)
    base, e1, e2 = _same_entropy_pair()
    mean, st = graft_chain([e1, e2], gates="global")
    assert st["w_glob"] == 0.5 and st["wb_min"] == st["wb_max"] == 0.5
    torch.testing.assert_close(mean, (e1 + e2) / 2, rtol=0, atol=1e-7)
    out, st2 = graft_chain([e1, e2], gates="global", base=base, scale=2.0)
    assert st2["scale"] == 2.0
    torch.testing.assert_close(out, base + (e1 - base) + (e2 - base), rtol=0, atol=1e-6)
    # any gates: the fused delta against the base is exactly doubled (up to float32 rounding)
    fused, _ = graft_chain([e1, e2])
    out, _ = graft_chain([e1, e2], base=base, scale=2.0)
    torch.testing.assert_close(out - base, 2 * (fused - base), rtol=0, atol=1e-6)
    # the registry path: Method.merge gets the base because scale != 1 makes Graft use it
    m = get_method("graft")
    assert not m.uses_base({}) and not m.uses_base({"scale": 1.0}) and m.uses_base({"scale": 2.0})
    assert m.base_params({"scale": 0.5}) == ["scale"]
    assert torch.equal(m.merge(base, [e1, e2], None, {"scale": 2.0})[0], out)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "2"])
def test_scale_must_be_finite_and_positive_naming_it(bad):
    base, e1, e2 = _same_entropy_pair()
    with pytest.raises(ValueError, match="scale"):
        get_method("graft").merge(base, [e1, e2], None, {"scale": bad})


def test_scale_without_base_names_the_parameter():
    _, e1, e2 = _same_entropy_pair()
    with pytest.raises(ValueError, match="'scale'=2.0 needs the base"):
        graft_chain([e1, e2], scale=2.0)
