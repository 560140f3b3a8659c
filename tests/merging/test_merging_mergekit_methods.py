"""mergekit's method family on small tensors, each with a property checkable by hand."""

import math

import pytest
import torch

from graft_ui.merging import get_method
from graft_ui.merging.schedule import check_setting, layer_t, resolve, resolve_params
from graft_ui.merging.registry import Param

T = torch.tensor


def gen(seed):
    return torch.Generator().manual_seed(seed)


def merge(name, base, experts, weights=None, **params):
    return get_method(name).merge(base, experts, weights, params, gen(0))


def close(a, b, tol=1e-5):
    # float32 arithmetic on a few entries: agreement to ~1e-6 relative, 1e-5 leaves room
    return torch.allclose(a, b, atol=tol, rtol=tol)


def test_slerp_ends_and_midpoint():
    a, b = T([[1.0, 0.0]]), T([[0.0, 2.0]])
    assert close(merge("slerp", a, [b], t=0.0)[0], a) and close(merge("slerp", a, [b], t=1.0)[0], b)
    # orthogonal: sin(pi/4)/sin(pi/2) of each
    assert close(merge("slerp", a, [b], t=0.5)[0], (a + b) / math.sqrt(2))
    # collinear falls back to the linear blend
    assert close(merge("slerp", a, [3 * a], t=0.25)[0], 1.5 * a)
    with pytest.raises(ValueError, match="ONE expert"):
        merge("slerp", a, [b, b])


def test_nuslerp_weights_pick_an_end_and_task_vectors_use_the_base():
    x, y = T([1.0, 0.0, 0.0]), T([0.0, 1.0, 0.0])
    assert close(merge("nuslerp", None, [x, y], [1.0, 0.0])[0], x)
    assert close(merge("nuslerp", None, [x, y], [0.0, 1.0])[0], y)
    base = T([5.0, 5.0, 5.0])
    out, st = merge("nuslerp", base, [base + x, base + y], [1.0, 1.0], task_vectors=True)
    assert close(out, base + (x + y) / math.sqrt(2)) and st["t"] == 0.5
    # per row (flatten off): each row its own angle; identical rows stay
    X, Y = T([[1.0, 0.0], [2.0, 0.0]]), T([[0.0, 1.0], [2.0, 0.0]])
    out, _ = merge("nuslerp", None, [X, Y], [1.0, 1.0], flatten=False)
    assert close(out[0], T([1.0, 1.0]) / math.sqrt(2)) and close(out[1], T([2.0, 0.0]))


def test_multislerp_and_karcher_of_identical_experts_return_them():
    e = T([[1.0, -2.0], [0.5, 3.0]])
    assert close(merge("multislerp", None, [e, e.clone(), e.clone()], [1.0, 2.0, 3.0])[0], e)
    assert close(merge("karcher", None, [e, e.clone()])[0], e)
    # one-hot weights pick an expert
    f = T([[0.0, 1.0], [1.0, 0.0]])
    assert close(merge("multislerp", None, [e, f], [0.0, 1.0])[0], f, 1e-4)


def test_karcher_of_orthogonal_equal_norm_vectors_is_their_bisector():
    a, b = T([2.0, 0.0]), T([0.0, 2.0])
    out, st = merge("karcher", None, [a, b])
    assert close(out, T([math.sqrt(2), math.sqrt(2)])) and st["iterations"] >= 1


def test_model_stock_identical_experts_and_orthogonal_task_vectors():
    base = T([1.0, 1.0, 1.0, 1.0])
    e = base + T([0.5, -1.0, 0.0, 2.0])
    out, st = merge("model_stock", base, [e, e.clone()])
    assert close(out, e) and st["t"] == pytest.approx(1.0)
    # orthogonal task vectors: cos 0 -> t 0 -> the base
    out, st = merge("model_stock", base, [base + T([1.0, 0, 0, 0]), base + T([0, 1.0, 0, 0])])
    assert close(out, base) and st["t"] == 0.0
    # cos 1/2 with 2 experts: t = 2 * 0.5 / 1.5 = 2/3 of the mean task vector
    d1, d2 = T([1.0, 0.0, 0, 0]), T([0.5, math.sqrt(3) / 2, 0, 0])
    out, _ = merge("model_stock", base, [base + d1, base + d2])
    assert close(out, base + (2 / 3) * (d1 + d2) / 2)


def test_breadcrumbs_drops_outliers_and_the_smallest():
    base = torch.zeros(5)
    tau = T([10.0, 1.0, 2.0, 3.0, 4.0])
    # n 5, keep int(0.6 * 5) = 3, drop int(0.2 * 5) = 1 from the top: 4, 3, 2 stay
    out, st = merge("breadcrumbs", base, [tau], density=0.6, gamma=0.2)
    assert out.tolist() == [0.0, 0.0, 2.0, 3.0, 4.0] and st["kept"] == [0.6]
    # breadcrumbs_ties: opposite signs, no normalisation: the majority sign's sum
    out, _ = merge("breadcrumbs_ties", base, [T([1.0, 2, 3, 4, 5]), T([-1.0, 1, 1, 1, 1])], density=1.0)
    assert out.tolist() == [1.0, 3.0, 4.0, 5.0, 6.0]


def test_della_at_density_one_is_task_arithmetic_and_keeps_its_statistics():
    base = torch.zeros(64, 256)
    E = [torch.randn(64, 256, generator=gen(s)) for s in (1, 2)]
    out, _ = merge("della_linear", base, E, [0.5, 0.5])
    assert close(out, 0.5 * (E[0] + E[1]))
    out, st = merge("della_linear", base, [E[0]], density=0.4, epsilon=0.1)
    # kept fraction ~ density (16384 draws: sd ~0.004), L1 norm restored by the rescale
    assert abs(st["kept"][0] - 0.4) < 0.02
    assert out.abs().sum() == pytest.approx(float(E[0].abs().sum()), rel=1e-4)
    # MagPrune keeps big entries more often than small ones
    kept = out != 0
    big = E[0].abs() > E[0].abs().median()
    assert kept[big].float().mean() > kept[~big].float().mean() + 0.05
    with pytest.raises(ValueError, match="epsilon"):
        merge("della", base, E, density=0.1, epsilon=0.2)


def test_dare_mergekit_forms_rescale_l1_and_sum():
    base = torch.zeros(200, 100)
    E = [torch.randn(200, 100, generator=gen(s)) for s in (3, 4)]
    out, st = merge("dare_linear", base, [E[0]], p=0.7, rescale="l1")
    assert abs(st["kept"][0] - 0.3) < 0.02
    assert out.abs().sum() == pytest.approx(float(E[0].abs().sum()), rel=1e-4)
    # dare_ties, nothing dropped, unnormalised: the sum of the sign-agreeing task vectors
    summed, _ = merge("dare_ties", base, E, p=0.0, rescale="none", normalize=False)
    pos = (E[0] + E[1]) >= 0
    want = sum(torch.where(pos, e > 0, e < 0) * e for e in E)
    assert close(summed, want)
    tied, _ = merge("ties", base, E, density=1.0, normalize=False)
    assert close(tied, want)


def test_sce_weights_experts_by_energy():
    base = torch.zeros(4)
    a, b = T([1.0, 1.0, 1.0, 1.0]), T([3.0, 3.0, 3.0, 3.0])  # energies 1 and 9 -> weights 0.1, 0.9
    out, st = merge("sce", base, [a, b])
    assert st["weights"] == [0.1, 0.9] and close(out, T([2.8] * 4))
    # minority signs erased: only b's entry counts where a disagrees
    out, _ = merge("sce", base, [T([-1.0, 1, 1, 1]), b])
    assert out[0] == pytest.approx(3.0)


def test_nearswap_and_arcee_fusion_by_hand():
    base, e = T([0.0, 0.0, 0.0]), T([0.05, 1.0, -2.0])
    out, _ = merge("nearswap", base, [e], t=0.1)  # w = clamp(0.1 / |d|, 0, 1): 1, 0.1, 0.05
    assert close(out, T([0.05, 0.1, -0.1]))
    out, _ = merge("arcee_fusion", base, [base.clone()])
    assert torch.equal(out, base)
    # |delta| quantiles (index floor(q * 7) of the sorted 8): q1 0.1, median 0.1, q3 0.2 -> threshold
    # 0.25 (times the row's KL): only the 5 passes
    d = T([[0.1, 0.2, 0.1, 0.2, 0.1, 0.2, 0.1, 5.0]])
    out, st = merge("arcee_fusion", torch.zeros(1, 8), [d])
    assert out.tolist() == [[0, 0, 0, 0, 0, 0, 0, 5.0]] and st["kept"] == pytest.approx(1 / 8)


def test_ram_keeps_unique_entries_and_averages_shared_ones():
    base = torch.zeros(3)
    a, b = T([1.0, 2.0, 0.0]), T([0.0, 4.0, 3.0])
    out, _ = merge("ram", base, [a, b])
    assert out.tolist() == [1.0, 3.0, 3.0]
    # ramplus_tl: each has 1 shared / 1 unique entry -> unique part x (1 + 0.1 * min(1, 0.2))
    out, st = merge("ramplus_tl", base, [a, b])
    assert close(out, T([1.02, 3.0, 3.06])) and st["unique_scale"] == [1.02, 1.02]


def test_linear_normalize_switch():
    x, y = T([1.0, 2.0]), T([3.0, 6.0])
    assert merge("linear", None, [x, y], [1.0, 3.0])[0].tolist() == [2.5, 5.0]
    assert merge("linear", None, [x, y], [1.0, 3.0], normalize=False)[0].tolist() == [10.0, 20.0]
    m = get_method("linear")
    assert "weights' sum (4)" in m.lora_refusal({"normalize": False}, [1.0, 3.0])
    assert m.lora_refusal({"normalize": False}, [0.25, 0.75]) == m.lora_refusal({"normalize": True}, [1.0, 3.0]) == ""


def test_gradients_and_filters_resolve_as_mergekit():
    assert resolve([0.0, 1.0], "x", 0.5) == 0.5
    assert resolve([0.0, 1.0, 0.0], "x", 0.75) == pytest.approx(0.5)
    assert resolve([0.2, 0.4, 0.6], "x", 1.0) == pytest.approx(0.6)
    setting = [{"filter": "self_attn", "value": [0.0, 1.0]}, {"filter": "mlp", "value": 0.3}]
    assert resolve(setting, "model.layers.2.self_attn.q_proj.weight", 0.25) == 0.25
    assert resolve(setting, "model.layers.2.mlp.up_proj.weight", 0.25) == 0.3
    assert resolve(setting, "model.embed_tokens.weight", 0.0) is None  # unset here: the default decides
    assert resolve([{"value": 1.0}, {"filter": "mlp", "value": 2.0}], "mlp", 0) == 1.0  # first match wins
    assert layer_t(0, 0, 3) == 0.0 and layer_t(3, 0, 3) == 1.0 and layer_t(None, 0, 3) == 0.0 and layer_t(5, 5, 5) == 1.0
    got = resolve_params({"density": setting, "lam": 2.0}, {"density": 1.0, "lam": 1.0}, "embed", 0.0,
                         [{"density": 0.5}, {}], ("density",))
    assert got == {"density": [0.5, 1.0], "lam": 2.0}
    with pytest.raises(ValueError, match="above its maximum"):
        check_setting(Param("density", 1.0, "float", 0.0, 1.0), [0.5, 1.5])
    with pytest.raises(ValueError, match="'value'"):
        check_setting(Param("density", 1.0, "float", 0.0, 1.0), [{"filter": "x"}])
