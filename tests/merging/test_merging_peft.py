"""Cross-check against peft's `add_weighted_adapter` where the semantics coincide.

- cat: peft stacks [w_i s_i A_i] and [B_i] with scale 1, i.e. sum_i w_i s_i B_i A_i: our
  `concat_lora` with constant row weights, and `graft_lora` whenever the gates are constant
  over rows (gates="global").
- svd / ties_svd with svd_rank = full rank: peft merges the dense deltas (task arithmetic /
  TIES) then factors exactly; equals our task_arithmetic / ties_merge on the deltas with
  base = 0. Intended difference: peft elects the TIES sign on UNweighted trimmed deltas and
  divides the weighted sum by the agreeing COUNT; we weight both (mergekit's rule). They
  coincide for unit weights, which is what is compared.
- linear: peft mixes the factors, not the deltas (A_t = sum sqrt(w_i s_i) A_i, B_t likewise;
  B_t A_t has cross terms), so it equals our task arithmetic applied per factor with weights
  sqrt(w_i s_i), not on the deltas.
- dare_*: peft draws masks from the global RNG, ours from a seeded generator, so only the
  p = 0 limit coincides (tested in test_merging_baselines via task arithmetic / TIES).
"""

import math

import pytest
import torch

peft = pytest.importorskip("peft")

from graft_ui.merging import concat_lora, graft_lora, task_arithmetic_merge, ties_merge  # noqa: E402

M, N = 7, 9


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(N, M, bias=False)

    def forward(self, x):
        return self.lin(x)


def two_adapters(ra, alpha_a, rb, alpha_b):
    torch.manual_seed(0)  # peft initialises from the global RNG
    cfg = lambda r, a: peft.LoraConfig(r=r, lora_alpha=a, target_modules=["lin"], init_lora_weights=False)  # noqa: E731
    model = peft.get_peft_model(Tiny(), cfg(ra, alpha_a), adapter_name="x")
    model.add_adapter("y", cfg(rb, alpha_b))
    layer = model.base_model.model.lin
    facts = {n: (layer.lora_B[n].weight.detach(), layer.lora_A[n].weight.detach(), layer.scaling[n]) for n in "xy"}
    return model, layer, facts


def rel(x, y):
    return float((x - y).norm() / y.norm())


def test_cat_equals_concat_and_constant_gate_graft():
    model, layer, f = two_adapters(2, 4, 3, 9)
    (Ba, Aa, sa), (Bb, Ab, sb) = f["x"], f["y"]
    model.add_weighted_adapter(["x", "y"], [0.3, 1.2], "cat", combination_type="cat")
    B, A = concat_lora([Ba, Bb], [Aa, Ab], [sa, sb], [0.3, 1.2])
    assert rel(B @ A, layer.get_delta_weight("cat").detach()) < 1e-6

    Bc, Ac, st = graft_lora(Ba, Aa, sa, Bb, Ab, sb, gates="global")
    wb = st["wb_mean"]
    model.add_weighted_adapter(["x", "y"], [wb, 1 - wb], "cat_graft", combination_type="cat")
    assert rel(Bc @ Ac, layer.get_delta_weight("cat_graft").detach()) < 1e-5


def test_svd_and_ties_svd_equal_dense_merges_of_deltas():
    model, layer, f = two_adapters(3, 6, 3, 2)
    deltas = [layer.get_delta_weight(n).detach() for n in "xy"]
    zero = torch.zeros(M, N)
    model.add_weighted_adapter(["x", "y"], [0.7, 1.5], "svd", combination_type="svd", svd_rank=M)
    ours = task_arithmetic_merge(zero, deltas, [0.7, 1.5])
    assert rel(layer.get_delta_weight("svd").detach(), ours) < 1e-5

    model.add_weighted_adapter(["x", "y"], [1.0, 1.0], "ties", combination_type="ties_svd", svd_rank=M, density=0.5)
    ours, _ = ties_merge(zero, deltas, [1.0, 1.0], density=0.5)
    assert rel(layer.get_delta_weight("ties").detach(), ours) < 1e-5


def test_linear_is_task_arithmetic_per_factor():
    model, layer, f = two_adapters(3, 6, 3, 2)
    (Ba, Aa, sa), (Bb, Ab, sb) = f["x"], f["y"]
    w = [0.5, 2.0]
    model.add_weighted_adapter(["x", "y"], w, "lin", combination_type="linear")
    c = [math.sqrt(w[0] * sa), math.sqrt(w[1] * sb)]
    A = task_arithmetic_merge(torch.zeros_like(Aa), [Aa, Ab], c)
    B = task_arithmetic_merge(torch.zeros_like(Ba), [Ba, Bb], c)
    assert torch.allclose(layer.lora_A["lin"].weight.detach(), A, atol=1e-6)
    assert torch.allclose(layer.lora_B["lin"].weight.detach(), B, atol=1e-6)
    mix = task_arithmetic_merge(torch.zeros(M, N), [sa * Ba @ Aa, sb * Bb @ Ab], w)
    assert rel(layer.get_delta_weight("lin").detach(), mix) > 1e-3  # cross terms: not the delta mix
