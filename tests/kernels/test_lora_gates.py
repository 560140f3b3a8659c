"""The LoRA gate statistics' C kernel against its torch reference and against merging's Graft."""

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


# shapes with odd rows, column tails (N % 64), rank 0 (a missing expert) and a q_proj-sized module
SHAPES = [(37, 200, 4, 3), (1, 64, 2, 2), (64, 130, 0, 5), (96, 1536, 16, 16), (5, 2100, 8, 16)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bins", [10, 2, 100])
def test_native_equals_torch_reference(shape, bins):
    Bb, Ab, Bg, Ag = _factors(*shape, seed=sum(shape))
    nat = G.native(Bb, Ab, 2.0, Bg, Ag, 0.5, bins)
    assert nat is not None, "the project's machines have a C compiler; the kernel must build"
    ref = G.reference(Bb, Ab, 2.0, Bg, Ag, 0.5, bins, tile_elems=777)
    torch.testing.assert_close(nat.d, ref.d, rtol=1e-6, atol=1e-9)
    for a, b in zip(nat.range_b + nat.range_g, ref.range_b + ref.range_g):
        assert _close(a, b)
    for a, b in zip(nat.entropies(), ref.entropies()):
        assert _close(a, b)
    # and both against merging's entropy of the dense deltas
    Hb, Hg = entropy((Bb @ Ab) * 2.0, bins), entropy((Bg @ Ag) * 0.5, bins)
    assert _close(nat.entropies()[0], Hb) and _close(nat.entropies()[1], Hg)


def test_counts_equal_histc_with_values_on_bin_edges():
    # integer-valued products put many entries exactly on bin edges (histc's rule decides them)
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
    want = G.gate_stats(Bb, Ab, 1.0, Bg, Ag, 2.0, 10)
    lib = G._LIB
    monkeypatch.setattr(lib, "_loaded", False)
    monkeypatch.setenv("GRAFT_NATIVE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    assert G.native(Bb, Ab, 1.0, Bg, Ag, 2.0, 10) is None
    assert list(tmp_path.iterdir()) == []  # no half-written library left behind
    got = G.gate_stats(Bb, Ab, 1.0, Bg, Ag, 2.0, 10)
    assert all(_close(a, b) for a, b in zip(got.entropies(), want.entropies()))
