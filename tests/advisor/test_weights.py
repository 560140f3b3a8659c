"""Weights-only pair signals from LoRA factors: they equal the dense task vectors' on small adapters."""

import math

import pytest
import torch

from graft_ui.advisor.weights import b_overlap, factor_inner, lora_signals, sampled_signs


def _factors(seed, m=12, n=9, r=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, r, generator=g, dtype=torch.float64), torch.randn(r, n, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("ranks", [(3, 3), (2, 5)])
def test_the_factor_form_inner_product_and_cosine_equal_the_dense_ones(ranks):
    Ba, Aa = _factors(0, r=ranks[0])
    Bb, Ab = _factors(1, r=ranks[1])
    ta, tb = Ba @ Aa, Bb @ Ab
    assert float(factor_inner(Ba, Aa, Bb, Ab)) == pytest.approx(float((ta * tb).sum()), rel=1e-10)
    cos = factor_inner(Ba, Aa, Bb, Ab) / math.sqrt(factor_inner(Ba, Aa, Ba, Aa) * factor_inner(Bb, Ab, Bb, Ab))
    dense = float((ta * tb).sum() / (ta.norm() * tb.norm()))
    assert float(cos) == pytest.approx(dense, rel=1e-10)  # float64 on both sides: agreement to ~1e-14


def test_b_overlap_is_one_for_one_column_space_and_zero_for_orthogonal_ones():
    B, _ = _factors(2, r=3)
    mix = torch.randn(3, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert b_overlap(B, B @ mix) == pytest.approx(1.0, abs=1e-9)  # same span, another basis
    e = torch.eye(6, dtype=torch.float64)
    assert b_overlap(e[:, :2], e[:, 2:5]) == pytest.approx(0.0, abs=1e-12)


def test_sampled_sign_agreement_is_one_for_a_rescaled_copy_and_zero_for_a_negated_one():
    B, A = _factors(4)
    g = torch.Generator().manual_seed(0)
    agree, both = sampled_signs(B, A, 2 * B, A, g, n=500)
    assert both == 500 and agree == 500
    agree, both = sampled_signs(B, A, -B, A, g, n=500)
    assert agree == 0


def test_the_ci_zoo_adapters_factor_cosine_matches_the_dense_task_vectors(ci_zoo):
    from graft_ui.models.manifest import load_manifest
    from graft_ui.study.weights import task_vector_similarity

    m = load_manifest(ci_zoo)
    a, b = m.expert("math-lora"), m.expert("code-lora")
    fast, dense = lora_signals(a, b), task_vector_similarity(m, a, b)
    # the dense path sums float64 dot products of float32 deltas: agreement to ~1e-6 relative
    assert fast["cosine"] == pytest.approx(dense["cosine"], rel=1e-5, abs=1e-7)
    assert fast["norm_a"] == pytest.approx(dense["norm_a"], rel=1e-5)
    # sampled signs (4096 entries per module) estimate the exact fraction within a few standard errors
    assert fast["sign_agreement"] == pytest.approx(dense["sign_agreement"], abs=0.02)
    assert 0.0 < fast["b_overlap"] <= 1.0 and 0.0 < fast["norm_ratio"] <= 1.0
