"""The streaming kernels give the reference functions' results (graft_ui.merging)."""

import math

import pytest
import torch

from graft_ui.merging.graft import apply_row_weights, entropy, graft_row_weights
from graft_ui.merging.lora import graft_lora
from graft_ui.merging.steps import magnitude_threshold
from graft_ui.models.checkpoint import check_finite
from graft_ui.kernels.entropy import entropy16, entropy32, minmax
from graft_ui.kernels.graft import fuse_into, graft_lora_fast, graft_row_weights_dense
from graft_ui.kernels.ties import kth_largest_abs, ties_dense, ties_thresholds
from graft_ui.kernels.ties_lora import dare_keep_masks, lora_ties
from graft_ui.merging.dare import dare_ties
from graft_ui.merging.ties import ties_merge
from graft_ui.models.merge_job import SingleThreaded


def _cases():
    g = torch.Generator().manual_seed(0)
    yield torch.randn(300, 170, generator=g) * 0.02
    yield torch.randn(64, 9, generator=g).exp()  # skewed
    yield torch.arange(-50, 51, dtype=torch.float32).reshape(101, 1) / 7  # values on bin edges
    yield torch.tensor([[0.0, -0.0, 1.0, 1.0, 2.0]])
    yield torch.full((4, 4), 3.0)  # constant: entropy 0
    yield torch.linspace(-1, 1, 4097).reshape(17, 241)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bins", [2, 10, 37])
def test_entropy16_equals_reference(dtype, bins):
    for x in _cases():
        x = x.to(dtype)
        lo, hi = minmax(x, "x")
        # bit-equal on any CPU: both bin by histc's float32 formula (single, correctly rounded
        # operations: no sum whose order an ISA picks), the counts are integers, the last step shared
        assert entropy16(x, bins, lo, hi) == entropy(x, bins), (x.shape, bins)


@pytest.mark.parametrize("gates", ["dual", "local", "global"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_dense_row_weights_and_fusion_equal_reference(gates, dtype):
    g = torch.Generator().manual_seed(1)
    Wb = (torch.randn(257, 96, generator=g) * 0.02).to(dtype)
    Wg = (Wb.float() + torch.randn(257, 96, generator=g) * 0.003).to(dtype)
    kw = {"a": 0.4, "c": 500.0, "bins": 10, "gates": gates, "global_form": "algorithm", "alpha": -1.5, "beta": 0.25}
    diff = torch.empty(257, 96)
    wb, st = graft_row_weights_dense(Wb, Wg, diff, kw, ("b", "g"))
    wb_ref, st_ref = graft_row_weights(Wb, Wg, **kw)
    torch.testing.assert_close(wb, wb_ref, rtol=1e-6, atol=1e-7)
    assert st.keys() == st_ref.keys()
    for k in st:
        if isinstance(st[k], float):
            assert math.isclose(st[k], st_ref[k], rel_tol=1e-6, abs_tol=1e-9), k
        else:
            assert st[k] == st_ref[k], k
    fused = fuse_into(diff, wb_ref, Wg)
    assert torch.equal(fused, apply_row_weights(wb_ref, Wb, Wg, out_dtype=torch.float32))


def test_nan_and_inf_are_caught_cheaply():
    x = torch.zeros(10, 10, dtype=torch.bfloat16)
    check_finite(x, "x")
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = x.clone()
        y[3, 4] = bad
        with pytest.raises(ValueError, match="y contains NaN or inf"):
            check_finite(y, "y")
        with pytest.raises(ValueError, match="y contains NaN or inf"):
            minmax(y, "y")


@pytest.mark.parametrize("gates", ["dual", "local", "global"])
def test_graft_lora_fast_equals_reference(gates):
    g = torch.Generator().manual_seed(2)
    Bb, Ab = torch.randn(80, 4, generator=g), torch.randn(4, 50, generator=g)
    Bg, Ag = torch.randn(80, 7, generator=g), torch.randn(7, 50, generator=g)
    kw = {"a": 0.4, "c": 500.0, "bins": 10, "gates": gates, "global_form": "algorithm", "alpha": 1.0, "beta": 0.0}
    B, A, st = graft_lora_fast(Bb, Ab, 2.0, Bg, Ag, 0.5, kw)
    B_ref, A_ref, st_ref = graft_lora(Bb, Ab, 2.0, Bg, Ag, 0.5, **kw)
    torch.testing.assert_close(B @ A, B_ref @ A_ref, rtol=1e-5, atol=1e-6)
    assert st["rank"] == st_ref["rank"] == 11
    assert math.isclose(st["w_glob"], st_ref["w_glob"], rel_tol=1e-9)
    assert (st["H_b"] is None) == (gates == "local") and (st["H_b"] is None or math.isclose(st["H_b"], st_ref["H_b"], rel_tol=1e-9))
    # a missing expert (rank 0) is a zero delta
    B0, A0, _ = graft_lora_fast(Bb, Ab, 1.0, torch.zeros(80, 0), torch.zeros(0, 50), 1.0, kw)
    assert B0.shape == (80, 4)


@pytest.mark.parametrize("density", [0.001, 0.2, 0.5, 0.9999])
def test_kth_largest_abs_equals_kthvalue(density):
    g = torch.Generator().manual_seed(3)
    for x in (torch.randn(200_003, generator=g) * 0.01,
              torch.randint(-3, 4, (50_000,), generator=g).float(),  # many ties and zeros
              torch.randn(70_000, generator=g).exp()):
        absx = x.abs()
        k = int(density * absx.numel())
        if k == 0:
            continue
        assert kth_largest_abs(absx.clone(), k) == magnitude_threshold(x, density)


@pytest.mark.parametrize("bins", [2, 10, 37, 300])
def test_entropy32_equals_reference(bins):
    for x in _cases():
        lo, hi = minmax(x, "x")
        assert entropy32(x, bins, lo, hi) == entropy(x, bins), (x.shape, bins)  # as entropy16: any CPU


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("weights, lam", [([1.0, 1.0], 1.0), ([0.7, 0.4, 1.2], 0.8), ([1.0, -0.5], 1.3), ([0.0, 2.0], 1.0)])
def test_ties_dense_equals_ties_merge(weights, lam, dtype):
    g = torch.Generator().manual_seed(4)
    base = (torch.randn(300, 200, generator=g) * 0.02).to(dtype)
    experts = [(base.float() + torch.randn(300, 200, generator=g) * 0.003).to(dtype) for _ in weights]
    n = base.numel()
    thr = ties_thresholds(base, experts, 0.2, torch.empty(n))
    pool = {}
    bufs = lambda r: pool.setdefault(r, torch.empty(n, dtype=torch.bool if r == "mask" else torch.float32))  # noqa: E731
    got, st = ties_dense(base, experts, weights, thr, lam, bufs)
    ref, st_ref = ties_merge(base, experts, weights, density=0.2, lam=lam, block_rows=7)
    # bit-equal on any CPU: the same element-wise operations in the same order (thresholds are
    # selected values, not sums), so no ISA-dependent summation order enters
    torch.testing.assert_close(got.to(dtype), ref, rtol=0, atol=0)
    assert st == st_ref


def _dyadic(shape, g, scale=8):
    """Values k/8: every product and sum below is exact, whatever order a matmul adds in."""
    return torch.randint(-scale, scale + 1, shape, generator=g).float() / scale


def _lora_cases():
    g = torch.Generator().manual_seed(6)
    # (M, N, ranks (0: the expert lacks the module), weights, lam, density)
    for M, N, ranks, weights, lam, density in [
        (300, 170, [4, 7], [1.0, 1.0], 1.0, 0.2),
        (257, 96, [3, 0, 5], [0.7, 0.4, 1.2], 0.8, 0.3),
        (64, 50, [2, 2], [1.0, -0.5], 1.0, 0.5),
        (64, 50, [2, 2], [0.0, 1.0], 1.3, 0.2),
        (64, 50, [2, 3], [1.0, 1.0], 1.0, 1.0),  # keep all
        (64, 50, [2, 3], [1.0, 1.0], 1.0, 0.0001),  # k = 0: keep none
    ]:
        yield [(_dyadic((M, r), g), _dyadic((r, N), g)) for r in ranks], weights, lam, density


@pytest.mark.parametrize("tile", [1 << 18, 200, 37])
def test_lora_ties_equals_ties_merge_on_the_dense_deltas(tile):
    """Tile by tile (deltas never whole), thresholds by bracket + exact search: ties_merge's values and stats."""
    for factors, weights, lam, density in _lora_cases():
        M, N = factors[0][0].shape[0], factors[0][1].shape[1]
        deltas = [B @ A for B, A in factors]
        out, P = torch.empty(M, N), torch.randn(N, 5)
        Y, sumsq, st = lora_ties(factors, weights, lam=lam, out=out, density=density, sketch=P, tile_elems=tile)
        ref, st_ref = ties_merge(torch.zeros(M, N), deltas, weights, density=density, lam=lam)
        # dyadic factors: every product and sum is exact, so tile order and BLAS do not matter on any CPU
        assert torch.equal(out, ref), (M, N, weights, density)
        assert st == st_ref
        torch.testing.assert_close(Y, ref @ P, rtol=1e-5, atol=1e-5)
        assert math.isclose(sumsq, float(ref.double().square().sum()), rel_tol=1e-6)


@pytest.mark.parametrize("p", [0.0, 0.5])
def test_lora_dare_ties_equals_dare_ties(p):
    """DARE's masks drawn in dare_ties' block order: the same draws, the same result."""
    for factors, weights, lam, _ in _lora_cases():
        M, N = factors[0][0].shape[0], factors[0][1].shape[1]
        out = torch.empty(M, N)
        masks = dare_keep_masks(M, N, len(factors), p, torch.Generator().manual_seed(5))
        _, _, st = lora_ties(factors, weights, lam=lam, out=out, drop=(p, masks), tile_elems=300)
        ref, st_ref = dare_ties(torch.zeros(M, N), [B @ A for B, A in factors], weights, p=p, lam=lam,
                                generator=torch.Generator().manual_seed(5))
        st_ref.pop("p")
        assert torch.equal(out, ref) and st == st_ref


@pytest.mark.parametrize("bracket", [(0.0, 1e-9), (1e9, 2e9), (0.0, math.inf), (0.5, 0.5)])
def test_lora_ties_threshold_survives_a_missed_bracket(monkeypatch, bracket):
    """A sampled bracket that misses the k-th largest |d| costs a pass, never a wrong threshold."""
    import graft_ui.kernels.ties_lora as fg

    monkeypatch.setattr(fg, "_bracket", lambda *a: bracket)
    g = torch.Generator().manual_seed(7)
    factors = [(_dyadic((120, 3), g), _dyadic((3, 77), g)) for _ in range(2)]
    out = torch.empty(120, 77)
    _, _, st = fg.lora_ties(factors, [1.0, 1.0], lam=0.5, out=out, density=0.2, tile_elems=500)
    ref, st_ref = ties_merge(torch.zeros(120, 77), [B @ A for B, A in factors], density=0.2, lam=0.5)
    assert torch.equal(out, ref) and st == st_ref


def test_lora_ties_on_real_valued_factors_keeps_exactly_k():
    """Random float factors: the same kept fractions as ties_merge on the same products (ties kept)."""
    g = torch.Generator().manual_seed(8)
    M, N = 700, 300
    factors = [(torch.randn(M, 8, generator=g) * 0.01 * s, torch.randn(8, N, generator=g)) for s in (2.0, 1.0)]
    out = torch.empty(M, N)
    _, _, st = lora_ties(factors, [1.0, 1.0], lam=1.0, out=out, density=0.2)
    ref, st_ref = ties_merge(torch.zeros(M, N), [B @ A for B, A in factors], density=0.2)
    assert st["kept"] == st_ref["kept"] == [round(int(0.2 * M * N) / (M * N), 6)] * 2
    assert abs(st["nonzero"] - st_ref["nonzero"]) <= 2 / (M * N)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-7)


def test_single_threaded_workers_leave_the_callers_threads_alone():
    import threading


    before = torch.get_num_threads()
    pool = SingleThreaded(2)
    try:
        seen = {pool.submit(lambda: (threading.get_ident(), torch.get_num_threads())).result()[1] for _ in range(4)}
        assert seen == {1}
        assert torch.get_num_threads() == before
        out = []
        t = threading.Thread(target=lambda: out.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert out == [before]  # threads made later get the caller's default again
    finally:
        pool.close()


class _Ctx:
    """The engine context a kernel hook sees: scratch buffers and the output dtype."""

    def __init__(self, out_dtype=torch.float32):
        self.out_dtype, self.device = out_dtype, torch.device("cpu")

    def scratch(self, role, shape, dtype=torch.float32):
        return torch.empty(tuple(shape) if not isinstance(shape, int) else (shape,), dtype=dtype)


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_fuse_rows_scale_matches_reference_chain(out_dtype):
    """Graft's scale (not in the paper) on the fast full-weight path: weight and bias against the base."""
    from graft_ui.kernels.graft import fuse_rows
    from graft_ui.merging.graft import graft_chain

    g = torch.Generator().manual_seed(5)
    base_w, base_b = torch.randn(40, 24, generator=g), torch.randn(40, generator=g)
    ws = [base_w + 0.05 * torch.randn(40, 24, generator=g) for _ in range(3)]
    bs = [base_b + 0.05 * torch.randn(40, generator=g) for _ in range(3)]
    params = {"a": 0.4, "c": 500.0, "bins": 10, "gates": "dual", "global_form": "algorithm", "alpha": 1.0, "beta": 0.0}
    fw1, fb1, st1 = fuse_rows(ws, bs, dict(params, scale=1.0), _Ctx(torch.float32), ["w0", "w1", "w2"])
    fw0, fb0, _ = fuse_rows(ws, bs, params, _Ctx(torch.float32), ["w0", "w1", "w2"])
    assert torch.equal(fw1, fw0) and torch.equal(fb1, fb0) and "scale" not in st1
    torch.testing.assert_close(fw1, graft_chain(ws, **params)[0], rtol=1e-5, atol=1e-6)
    fw2, fb2, st2 = fuse_rows(ws, bs, dict(params, scale=2.0), _Ctx(out_dtype), ["w0", "w1", "w2"],
                              base=(base_w, base_b))
    assert st2["scale"] == 2.0 and fw2.dtype == fb2.dtype == out_dtype
    assert torch.equal(fw2, torch.lerp(base_w, fw1, 2.0).to(out_dtype))
    assert torch.equal(fb2, torch.lerp(base_b, fb1, 2.0).to(out_dtype))
    tol = 1e-5 if out_dtype == torch.float32 else 1e-2
    torch.testing.assert_close(fw2.float() - base_w, 2 * (fw1 - base_w), rtol=tol, atol=tol)
    with pytest.raises(ValueError, match="scale"):
        fuse_rows(ws, bs, dict(params, scale=2.0), _Ctx(), ["w0", "w1", "w2"])


def test_lora_factors_scale_doubles_the_fused_adapter():
    from graft_ui.kernels.graft import lora_factors

    g = torch.Generator().manual_seed(6)
    read = [(torch.randn(30, r, generator=g), torch.randn(r, 20, generator=g), s) for r, s in ((2, 0.5), (4, 2.0))]
    params = {"a": 0.4, "c": 500.0, "bins": 10, "gates": "dual", "global_form": "algorithm", "alpha": 1.0, "beta": 0.0}
    B0, A0, _ = lora_factors(read, params, _Ctx())
    B1, A1, st1 = lora_factors(read, dict(params, scale=1.0), _Ctx())
    assert torch.equal(B1, B0) and torch.equal(A1, A0) and "scale" not in st1
    B2, A2, st2 = lora_factors(read, dict(params, scale=2.0), _Ctx())
    assert st2["scale"] == 2.0 and torch.equal(A2, A0) and torch.equal(B2, 2.0 * B0)
