"""The LoRA gate statistics' C kernel and its torch reference against what `_lora_gates.c` promises.

Neither is bit-equal to the other or to itself on another CPU (each sums an entry's r products
in its own order, fused or not), so the tests check the promise against float64, which holds on
every CPU: each entry within e = (r + 2) 2^-24 |s| sum_k |B[i,k] A[k,j]| of the exact value; the
range between the extremes of [v - e, v + e]; each bin's count between the entries certainly in
it and those possibly in it (histc's rule over the implementation's own range); the row L1
within sum_j (eb + eg) + 2^-15 of itself. Where every product and sum is exact in float32 (small
integer factors) all implementations agree bit for bit on any CPU, and those tests say so.
"""

import math

import pytest
import torch

from graft_ui.kernels import lora_gates as G
from graft_ui.merging.graft import entropy


def _factors(M, N, rb, rg, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(M, rb, generator=g) * scale, torch.randn(rb, N, generator=g),
            torch.randn(M, rg, generator=g) * scale, torch.randn(rg, N, generator=g))


def _close(a, b, rel=1e-6):
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-30)


def _assert_promise(st, Bb, Ab, sb, Bg, Ag, sg, bins):
    problems = G.promise_problems(st, Bb, Ab, sb, Bg, Ag, sg, bins)
    assert not problems, problems


# shapes with odd rows, column tails (N % 64), rank 0 (a missing expert) and a q_proj-sized module
SHAPES = [(37, 200, 4, 3), (1, 64, 2, 2), (64, 130, 0, 5), (96, 1536, 16, 16), (5, 2100, 8, 16)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bins", [10, 2, 100])
def test_native_and_reference_keep_the_promise_against_float64(shape, bins):
    Bb, Ab, Bg, Ag = _factors(*shape, seed=sum(shape))
    nat = G.native(Bb, Ab, 2.0, Bg, Ag, 0.5, bins)
    assert nat is not None, "the project's machines have a C compiler; the kernel must build"
    ref = G.reference(Bb, Ab, 2.0, Bg, Ag, 0.5, bins, tile_elems=777)
    for st in (nat, ref):
        _assert_promise(st, Bb, Ab, 2.0, Bg, Ag, 0.5, bins)


def _integer_factors(M, N, rb, rg, seed=0):
    """Small integers (A in eighths): every product and partial sum is exact in float32, so every
    implementation computes the same deltas, in any order, on any CPU."""
    g = torch.Generator().manual_seed(seed)
    ints = lambda *shape: torch.randint(-8, 9, shape, generator=g).float()  # noqa: E731
    return ints(M, rb), ints(rb, N) / 8, ints(M, rg), ints(rg, N) / 8


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bins", [10, 100])
def test_exactly_representable_deltas_give_equal_statistics_everywhere(shape, bins):
    # exact entries: the kernel, its reference and merging's dense entropy must agree bit for bit
    Bb, Ab, Bg, Ag = _integer_factors(*shape, seed=sum(shape))
    nat = G.native(Bb, Ab, 2.0, Bg, Ag, 0.5, bins)
    ref = G.reference(Bb, Ab, 2.0, Bg, Ag, 0.5, bins, tile_elems=777)
    assert torch.equal(nat.d, ref.d)
    assert nat.range_b == ref.range_b and nat.range_g == ref.range_g
    for a, b in ((nat.counts_b, ref.counts_b), (nat.counts_g, ref.counts_g)):
        assert (a is None and b is None) or torch.equal(a, b)
    Hb, Hg = entropy((Bb @ Ab) * 2.0, bins), entropy((Bg @ Ag) * 0.5, bins)
    assert nat.entropies() == ref.entropies() == (Hb, Hg)


def test_counts_equal_histc_with_values_on_bin_edges():
    # integer-valued products put many entries exactly on bin edges (histc's rule decides them);
    # exact in float32, so equal to torch.histc on any CPU
    Bb = torch.arange(-12, 12, dtype=torch.float32).reshape(24, 1)
    Ab = torch.arange(-40, 40, dtype=torch.float32).reshape(1, 80)
    Bg, Ag = Bb.flip(0) % 5, Ab % 3
    nat = G.native(Bb, Ab, 1.0, Bg, Ag, 1.0, 10)
    for counts, dense in ((nat.counts_b, Bb @ Ab), (nat.counts_g, Bg @ Ag)):
        want = torch.histc(dense, bins=10, min=float(dense.min()), max=float(dense.max())).double()
        assert torch.equal(counts, want)


def test_constant_delta_has_no_histogram_and_nan_is_named():
    Bb, Ab, Bg, Ag = _factors(16, 70, 2, 2)
    for f in (G.native, G.reference):
        st = f(torch.zeros(16, 2), Ab, 1.0, Bg, Ag, 1.0, 10)
        assert st.counts_b is None and st.entropies()[0] == 0.0 and st.counts_g is not None
        bad = Bg.clone()
        bad[3, 1] = float("nan")
        with pytest.raises(ValueError, match="expert X contains NaN or inf"):
            f(Bb, Ab, 1.0, bad, Ag, 1.0, 10, what="expert X")


def test_without_a_compiler_gate_stats_use_the_reference(monkeypatch, tmp_path):
    Bb, Ab, Bg, Ag = _factors(20, 90, 3, 3)
    want = G.reference(Bb, Ab, 1.0, Bg, Ag, 2.0, 10)
    lib = G._LIB
    monkeypatch.setattr(lib, "_loaded", False)
    monkeypatch.setenv("GRAFT_NATIVE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    assert G.native(Bb, Ab, 1.0, Bg, Ag, 2.0, 10) is None
    assert list(tmp_path.iterdir()) == []  # no half-written library left behind
    got = G.gate_stats(Bb, Ab, 1.0, Bg, Ag, 2.0, 10)
    # the same torch code on the same machine and inputs: bit-equal
    assert torch.equal(got.d, want.d) and got.entropies() == want.entropies()


def test_range_pass_skips_what_cauchy_schwarz_rules_out_and_keeps_the_promise():
    # row norms spread over two orders of magnitude, as trained adapters' are: most rows provably
    # cannot hold the minimum or maximum, so the range pass computes few entries
    g = torch.Generator().manual_seed(3)
    M, N = 300, 1000
    Bb = torch.randn(M, 8, generator=g) * torch.exp(2 * torch.randn(M, 1, generator=g))
    Bg = torch.randn(M, 8, generator=g) * torch.exp(2 * torch.randn(M, 1, generator=g))
    Ab, Ag = torch.randn(8, N, generator=g), torch.randn(8, N, generator=g)
    nat = G.native(Bb, Ab, 1.5, Bg, Ag, 0.5, 10)
    assert nat.range_entries < 0.25 * 2 * M * N
    # the skipped entries cannot hold the extremes: the range is the float64 one within the bounds,
    # as the torch reference's (computing every entry, in its BLAS's order) is
    for st in (nat, G.reference(Bb, Ab, 1.5, Bg, Ag, 0.5, 10)):
        _assert_promise(st, Bb, Ab, 1.5, Bg, Ag, 0.5, 10)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_range_pass_of_one_signed_delta_computes_every_entry(sign):
    # all entries of one sign: the range [lo, hi] excludes 0, no |v| bound can rule a row out
    g = torch.Generator().manual_seed(4)
    B, A = torch.rand(40, 3, generator=g) + 0.1, torch.rand(3, 130, generator=g) + 0.1
    nat = G.native(B, A, sign, B.flip(0), A, 1.0, 10)
    assert nat.range_entries == 2 * 40 * 130
    _assert_promise(nat, B, A, sign, B.flip(0), A, 1.0, 10)


def test_bin_edges_found_by_bisection_equal_histc_one_ulp_either_side():
    # T = B @ ones(1, 64): every entry is one of B's values, exactly (on any CPU). Put values on each of histc's
    # bin edges lo + k (hi - lo) / bins and 1-2 ulps either side of it; the vector compares against
    # the bisected edges must bin them as histc does
    for seed, bins in ((0, 10), (1, 7), (2, 16)):
        g = torch.Generator().manual_seed(seed)
        lo, hi = sorted(float(x) for x in torch.randn(2, generator=g) * 3)
        vals = [lo, hi]
        for k in range(1, bins):
            v = torch.tensor(lo + k * (hi - lo) / bins, dtype=torch.float32)
            for _ in range(3):
                vals += [float(v)]
                v = torch.nextafter(v, torch.tensor(math.inf))
            v = torch.tensor(lo + k * (hi - lo) / bins, dtype=torch.float32)
            for _ in range(2):
                v = torch.nextafter(v, torch.tensor(-math.inf))
                vals += [float(v)]
        B = torch.tensor([min(max(v, lo), hi) for v in vals]).reshape(-1, 1)
        A = torch.ones(1, 64)
        nat = G.native(B, A, 1.0, B, A, 1.0, bins)
        dense = B @ A
        want = torch.histc(dense, bins=bins, min=float(dense.min()), max=float(dense.max())).double()
        assert torch.equal(nat.counts_b, want), (seed, bins)


def test_row_norms_only_skip_the_range_and_histograms():
    Bb, Ab, Bg, Ag = _factors(50, 200, 4, 4, seed=5)
    local = G.native(Bb, Ab, 1.0, Bg, Ag, 1.0, 10, histogram=False)
    full = G.native(Bb, Ab, 1.0, Bg, Ag, 1.0, 10)
    assert local.range_b is None and local.counts_b is None and local.range_entries is None
    assert torch.equal(local.d, full.d)  # one kernel, one machine: the same sums


def test_more_bins_than_the_kernel_counts_use_the_reference():
    Bb, Ab, Bg, Ag = _factors(10, 70, 2, 2, seed=6)
    assert G.native(Bb, Ab, 1.0, Bg, Ag, 1.0, G.NATIVE_MAX_BINS + 1) is None
    st = G.gate_stats(Bb, Ab, 1.0, Bg, Ag, 1.0, G.NATIVE_MAX_BINS + 1)
    assert st.counts_b.numel() == G.NATIVE_MAX_BINS + 1 and float(st.counts_b.sum()) == 10 * 70
