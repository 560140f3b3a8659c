"""LoRA forms (DESIGN.md 2.4): exact concatenation, factor compression, dense-to-low-rank."""

import math

import pytest
import torch

from graft_ui.merging import (
    compress_lowrank,
    dense_to_lowrank,
    entropy,
    entropy_blocks,
    graft_lora,
    graft_lora_chain,
    graft_lora_factor,
    graft_pair,
    graft_row_weights,
    lora_delta_blocks,
)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def rel(x, y):
    return float((x - y).norm() / y.norm())


def adapter(M, N, r, seed):
    return rand(M, r, seed=seed), rand(r, N, seed=seed + 1)


def test_delta_blocks_stream_the_product():
    B, A = adapter(10, 7, 3, 0)
    blocks = list(lora_delta_blocks(B, A, 0.5, block_rows=4))
    assert [b.shape[0] for b in blocks] == [4, 4, 2]
    assert torch.allclose(torch.cat(blocks), 0.5 * B @ A, atol=1e-6)
    assert entropy_blocks(lambda: lora_delta_blocks(B, A, 0.5, 3)) == pytest.approx(entropy(0.5 * B @ A), abs=1e-9)


@pytest.mark.parametrize("block_rows", [None, 2])
@pytest.mark.parametrize(
    "rb,rg,sb,sg",
    [(4, 4, 2.0, 2.0), (2, 5, 16 / 2, 8 / 5), (3, 6, 16 / math.sqrt(3), 8 / math.sqrt(6))],  # equal, alpha/r, rsLoRA
)
def test_graft_lora_equals_dense_graft_of_deltas(rb, rg, sb, sg, block_rows):
    M, N = 12, 9
    Bb, Ab = adapter(M, N, rb, 1)
    Bg, Ag = adapter(M, N, rg, 3)
    dWb, dWg = sb * Bb @ Ab, sg * Bg @ Ag
    fused, st_dense = graft_pair(dWb, dWg)
    B_cat, A_cat, st = graft_lora(Bb, Ab, sb, Bg, Ag, sg, block_rows=block_rows)
    assert B_cat.shape == (M, rb + rg) and A_cat.shape == (rb + rg, N) and st["rank"] == rb + rg
    assert rel(B_cat @ A_cat, fused) < 1e-5
    assert st["w_glob"] == pytest.approx(st_dense["w_glob"], abs=1e-9)
    assert st["wb_mean"] == pytest.approx(st_dense["wb_mean"], abs=1e-6)


def test_graft_lora_chain_equals_dense_chain():
    M, N = 8, 6
    ads = [(*adapter(M, N, r, 10 * i), s) for i, (r, s) in enumerate([(2, 1.0), (3, 0.5), (4, 2.0)])]
    dense = [s * B @ A for B, A, s in ads]
    F, _ = graft_pair(graft_pair(dense[0], dense[1])[0], dense[2])
    B, A, st = graft_lora_chain(ads, gates="dual")
    assert A.shape[0] == 9 and len(st["steps"]) == 2
    assert rel(B @ A, F) < 1e-5


def test_factor_mode_is_not_the_delta_mix():
    Bb, Ab = adapter(8, 6, 3, 20)
    Bg, Ag = adapter(8, 6, 3, 22)
    B, A, _ = graft_lora_factor(Bb, Ab, 1.0, Bg, Ag, 1.0)
    Bc, Ac, _ = graft_lora(Bb, Ab, 1.0, Bg, Ag, 1.0)
    assert B.shape == (8, 3) and A.shape == (3, 6)
    assert rel(B @ A, Bc @ Ac) > 1e-3  # cross terms Bb Ag, Bg Ab
    with pytest.raises(ValueError, match="equal ranks"):
        graft_lora_factor(Bb, Ab, 1.0, *adapter(8, 6, 2, 30), 1.0)


def test_compress_lowrank_exact_at_true_rank_and_matches_svd_truncation():
    B, A = adapter(15, 11, 5, 40)
    dense = B @ A
    Br, Ar, err = compress_lowrank(B, A, 5)
    assert err < 1e-6 and rel(Br @ Ar, dense) < 1e-5
    Br, Ar, err = compress_lowrank(B, A, 9)  # more than it has: unchanged, rank stays 5
    assert Br.shape == (15, 5) and rel(Br @ Ar, dense) < 1e-5
    U, S, Vh = torch.linalg.svd(dense.double(), full_matrices=False)
    for k in (1, 2, 4):
        Br, Ar, err = compress_lowrank(B, A, k)
        assert Br.shape == (15, k) and Ar.shape == (k, 11)
        truth = float(S[k:].square().sum().sqrt() / S.square().sum().sqrt())
        assert err == pytest.approx(truth, rel=1e-4)
        best = (U[:, :k] * S[:k]) @ Vh[:k]
        assert rel((Br @ Ar).double(), best) < 1e-4
        assert rel((Br @ Ar).double(), dense.double()) == pytest.approx(err, rel=1e-4)


@pytest.mark.parametrize("shape", [(20, 7), (7, 20)])  # tall and wide (factored transposed)
def test_dense_to_lowrank_seeded_and_accurate(shape):
    M, N = shape
    delta = rand(M, 3, seed=50) @ rand(3, N, seed=51)  # true rank 3
    B1, A1, e1 = dense_to_lowrank(delta, 3, torch.Generator().manual_seed(0))
    B2, A2, e2 = dense_to_lowrank(delta, 3, torch.Generator().manual_seed(0))
    assert torch.equal(B1, B2) and torch.equal(A1, A2) and e1 == e2
    assert B1.shape == (M, 3) and A1.shape == (3, N)
    assert e1 < 1e-4 and rel(B1 @ A1, delta) < 1e-4

    noisy = delta + 0.1 * rand(M, N, seed=52)
    S = torch.linalg.svdvals(noisy.double())
    truth = float(S[2:].square().sum().sqrt() / S.square().sum().sqrt())
    _, _, e_exact = dense_to_lowrank(noisy, 2, exact=True)
    assert e_exact == pytest.approx(truth, rel=1e-4)
    _, _, e_rand = dense_to_lowrank(noisy, 2, torch.Generator().manual_seed(1), niter=4)
    assert truth - 1e-6 <= e_rand <= truth * 1.05


def test_dense_to_lowrank_uses_only_the_given_generator():
    delta = rand(30, 3, seed=53) @ rand(3, 40, seed=54) + 0.05 * rand(30, 40, seed=55)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    dense_to_lowrank(delta, 2, torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("shape", [(300, 120), (120, 300)])
def test_sketch_error_estimate_is_the_measured_residual(shape):
    """||X||^2 - sum S_k^2 (no pass over X) equals the residual of the factors returned."""
    from graft_ui.merging.lora import RangeSketch, _rel_residual, lowrank_from_sketch, sketch_basis, sum_squares

    M, N = shape
    X = rand(M, 12, seed=56) @ rand(12, N, seed=57) + 0.3 * rand(M, N, seed=58)
    P = sketch_basis(N, 20, torch.Generator().manual_seed(0))
    for niter in (0, 1):
        B, A, err = lowrank_from_sketch(X, 8, RangeSketch(X @ P, sum_squares(X)), niter=niter)
        assert B.shape == (M, 8) and A.shape == (8, N)
        assert err == pytest.approx(_rel_residual(X, B, A), rel=1e-4)
        assert err > 0.05
    # near-exact: the estimate would cancel, so the residual is measured
    Y = rand(M, 3, seed=59) @ rand(3, N, seed=60)
    B, A, err = lowrank_from_sketch(Y, 3, RangeSketch(Y @ P, sum_squares(Y)))
    assert err == _rel_residual(Y, B, A) and err < 1e-5


def test_sketch_from_the_experts_rows_needs_no_power_iteration():
    """A TIES merge of two low-rank deltas: sketching from the experts' dominant row directions
    gets the exact truncated SVD's error to ~1e-3 in one pass; a Gaussian sketch without
    power iterations is far off."""
    from graft_ui.merging.lora import RangeSketch, lowrank_from_sketch, sketch_basis, sketch_start, sum_squares
    from graft_ui.merging.ties import ties_merge

    M, N = 400, 300
    Bs = [rand(M, 8, seed=61) * 2.0, rand(M, 8, seed=62)]
    As = [rand(8, N, seed=63), rand(8, N, seed=64)]
    X, _ = ties_merge(torch.zeros(M, N), [b @ a for b, a in zip(Bs, As)], density=0.2)
    _, _, exact = dense_to_lowrank(X, 8, exact=True)
    start = sketch_start(Bs, As, 12)
    assert start.shape == (N, 12)
    # r = 16 > q = 12: the top right singular vectors of the plain sum
    V = torch.linalg.svd(sum(b @ a for b, a in zip(Bs, As)), full_matrices=False).Vh[:12].T
    assert torch.linalg.matrix_norm(start @ start.T - V @ V.T) < 1e-3
    assert sketch_start(Bs, As, 16).shape == (N, 16)  # r <= q: all the rows
    ours = lowrank_from_sketch(X, 8, RangeSketch(X @ sketch_basis(N, 12, None, start), sum_squares(X)))[2]
    assert exact <= ours < exact * 1.002
    gaussian = lowrank_from_sketch(X, 8, RangeSketch(X @ sketch_basis(N, 12, torch.Generator().manual_seed(0)),
                                                     sum_squares(X)))[2]
    assert gaussian > exact * 1.05


def test_lowrank_errors_name_values():
    B, A = adapter(5, 4, 2, 60)
    with pytest.raises(ValueError, match="rank=0"):
        compress_lowrank(B, A, 0)
    with pytest.raises(ValueError, match="generator=None"):
        dense_to_lowrank(B @ A, 2)
    with pytest.raises(ValueError, match=r"\(5, 2\)"):
        graft_lora(B, A.T, 1.0, B, A, 1.0)


def test_row_weights_apply_to_factor_rows():
    """B_cat's columns are diag(wb) sb Bb | diag(1 - wb) sg Bg with wb the dense gates."""
    Bb, Ab = adapter(6, 5, 2, 70)
    Bg, Ag = adapter(6, 5, 3, 72)
    wb, _ = graft_row_weights(0.5 * Bb @ Ab, 2.0 * Bg @ Ag)
    B_cat, A_cat, _ = graft_lora(Bb, Ab, 0.5, Bg, Ag, 2.0)
    assert torch.allclose(B_cat[:, :2], wb[:, None] * 0.5 * Bb, atol=1e-6)
    assert torch.allclose(B_cat[:, 2:], (1 - wb)[:, None] * 2.0 * Bg, atol=1e-6)
    assert torch.equal(A_cat, torch.cat([Ab, Ag]))


def test_gate_scan_streams_blocks_in_two_passes():
    """The gates need d, min/max and histograms: two passes over recomputed product blocks,
    none bigger than block_rows rows."""
    from graft_ui.merging import graft_row_weights_from_blocks

    Bb, Ab = adapter(10, 6, 2, 80)
    Bg, Ag = adapter(10, 6, 3, 82)
    calls, biggest = [], []

    def pairs():
        calls.append(1)
        for b, g in zip(lora_delta_blocks(Bb, Ab, 1.0, 3), lora_delta_blocks(Bg, Ag, 1.0, 3)):
            biggest.append(b.shape[0])
            yield b, g

    wb, _ = graft_row_weights_from_blocks(pairs, 10)
    assert len(calls) == 2 and max(biggest) == 3
    assert torch.allclose(wb, graft_row_weights(Bb @ Ab, Bg @ Ag)[0], atol=1e-6)


def test_graft_lora_chain_scale_multiplies_the_fused_delta():
    """Graft's scale (extension, not in the paper) on LoRA: B times scale, A unchanged; 1 = bit-exact."""
    ads = [adapter(12, 9, r, seed) + (s,) for r, seed, s in ((2, 1, 0.5), (3, 2, 2.0))]
    B1, A1, st1 = graft_lora_chain(ads)
    B, A, st = graft_lora_chain(ads, scale=1.0)
    assert torch.equal(B, B1) and torch.equal(A, A1) and "scale" not in st
    B2, A2, st2 = graft_lora_chain(ads, scale=2.0)
    assert st2["scale"] == 2.0 and torch.equal(A2, A1)
    torch.testing.assert_close(B2 @ A2, 2 * (B1 @ A1), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="scale"):
        graft_lora_chain(ads, scale=-1.0)
