"""Activation statistics equal the formulas (paper eqs 9-11); hooks never outlive an analysis."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from graft_ui.analysis import stats as S
from graft_ui.analysis.modules import parse_name, scope_modules
from graft_ui.analysis import _portable_stats as P
from graft_ui.analysis.collect import collect_stats
from graft_ui.analysis.stats import StatsAccumulator, count_forward_hooks
from graft_ui.recipe import Scope

NAME = "model.language_model.layers.0.mlp.up_proj"
NAME2 = "model.language_model.layers.1.self_attn.q_proj"


class Fixed(torch.nn.Module):
    """Returns the activation it is given: the hooked output is exactly the test's tensor."""

    def forward(self, x):
        return x


class Toy(torch.nn.Module):
    def __init__(self, fail: bool = False, twice: bool = False):
        super().__init__()
        self.a, self.b, self.fail, self.twice = Fixed(), Fixed(), fail, twice

    def forward(self, x, y=None, use_cache=False, logits_to_keep=1):
        out = self.a(x)
        if self.twice:
            out = self.a(y)
        if self.fail:
            raise RuntimeError("boom inside the forward pass")
        return self.b(2 * x)


def ref(acts, eps):
    """eqs 9-11 straight from the definitions, in float64."""
    acts = [a.double() for a in acts]
    mu = np.mean([a.abs().mean().item() for a in acts])
    s = np.mean([(a.abs() < eps).double().mean().item() for a in acts])
    v = np.mean([a.var(unbiased=False).item() for a in acts])
    return mu, s, v


def test_statistics_equal_formulas():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(1, 5, 8, generator=g) * (k + 1) for k in range(4)]
    xs[1][0, :2] = 0.0  # exact zeros count as sparse
    xs[2][0, 0, :3] = 5e-4  # below eps
    model = Toy()
    st = collect_stats(model, [{"x": x} for x in xs], modules={NAME: model.a, NAME2: model.b}, source="output", eps=1e-3)
    assert st.k == 4 and st.source == "output"
    for name, acts in ((NAME, xs), (NAME2, [2 * x for x in xs])):
        mu, s, v = ref(acts, 1e-3)
        m = st.modules[name]
        assert m.mu == pytest.approx(mu, rel=1e-6)
        assert m.s == pytest.approx(s, abs=1e-12)
        assert m.v == pytest.approx(v, rel=1e-5)
        assert m.calls == 4 and m.elements == 4 * 40
    assert st.modules[NAME].s > 0


def test_eps_is_configurable():
    x = torch.tensor([[0.0, 0.01, 0.1, 1.0]])
    model = Toy()
    for eps, expected in ((1e-3, 0.25), (0.05, 0.5), (0.5, 0.75)):
        st = collect_stats(model, [{"x": x}], modules={NAME: model.a}, source="output", eps=eps)
        assert st.modules[NAME].s == pytest.approx(expected)
    with pytest.raises(ValueError, match="eps"):
        collect_stats(model, [{"x": x}], modules={NAME: model.a}, source="output", eps=0)


def test_module_called_twice_pools_both_calls_per_sample():
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(3, 4, generator=g) for _ in range(2)]
    ys = [torch.randn(2, 4, generator=g) + 3 for _ in range(2)]
    model = Toy(twice=True)
    st = collect_stats(model, [{"x": x, "y": y} for x, y in zip(xs, ys)], modules={NAME: model.a}, source="output")
    pooled = [torch.cat([x.reshape(-1), y.reshape(-1)]) for x, y in zip(xs, ys)]
    mu, s, v = ref(pooled, 1e-3)
    m = st.modules[NAME]
    assert (m.mu, m.v) == (pytest.approx(mu, rel=1e-6), pytest.approx(v, rel=1e-5))
    assert m.calls == 4


def test_variance_is_accurate_for_offset_activations():
    """Large mean, small spread: shifted sums keep the variance exact where E[x^2] - E[x]^2 would not."""
    g = torch.Generator().manual_seed(2)
    xs = [1000.0 + 0.01 * torch.randn(1, 64, 32, generator=g) for _ in range(3)]
    model = Toy()
    st = collect_stats(model, [{"x": x} for x in xs], modules={NAME: model.a}, source="output")
    mu, s, v = ref(xs, 1e-3)
    assert st.modules[NAME].v == pytest.approx(v, rel=1e-3)
    assert st.modules[NAME].mu == pytest.approx(mu, rel=1e-6)


def test_half_precision_activations_are_reduced_in_float32():
    x = (torch.randn(1, 64, 16) * 3).to(torch.bfloat16)
    model = Toy()
    st = collect_stats(model, [{"x": x}], modules={NAME: model.a}, source="output")
    mu, s, v = ref([x.float()], 1e-3)
    assert st.modules[NAME].v == pytest.approx(v, rel=1e-5)


def test_hooks_removed_after_analysis_and_after_an_exception():
    """The observers (wrapped forwards) are undone after an analysis, also when the forward pass raises;
    a forward that was already wrapped by someone else (as accelerate does) is restored, not dropped."""
    model = Toy(fail=True)
    own = model.b.forward  # a bound method stored on the instance, like accelerate's wrapper
    model.b.forward = own
    before = count_forward_hooks(model)
    with pytest.raises(RuntimeError, match="boom"):
        collect_stats(model, [{"x": torch.ones(2, 2)}], modules={NAME: model.a, NAME2: model.b}, source="output")
    assert count_forward_hooks(model) == before == 0
    assert "forward" not in model.a.__dict__ and model.b.__dict__["forward"] is own
    model.fail = False
    st = collect_stats(model, [{"x": torch.ones(2, 2)}], modules={NAME: model.a, NAME2: model.b}, source="output")
    assert count_forward_hooks(model) == 0 and model.b.__dict__["forward"] is own
    assert st.modules[NAME2].mu == 2.0  # the instance's own forward ran under the observer


def test_accumulator_keeps_only_scalars():
    """Memory is bounded: pending entries are scalar reductions, never the activation itself."""
    acc = StatsAccumulator([NAME], 1e-3, path="direct")
    big = torch.randn(64, 512)
    acc.observe(NAME, big)
    p = acc.portable
    pending = p._l1 + p._x0 + p._sd + p._sq + p._big
    assert len(pending) == 5 and all(t.dim() == 0 for t in pending)
    # no pending scalar is a view keeping the activation's storage alive
    assert all(t.untyped_storage().nbytes() <= 8 for t in pending)
    acc.end_sample()
    assert p._meta == [] and p._l1 == [] and acc.k == 1
    # numpy keeps plain floats; the C kernel writes one row of 8 float64 per call into the call table,
    # which finished samples are folded out of once they fill half of it
    acc = StatsAccumulator([NAME], 1e-3, path="numpy")
    acc.observe(NAME, big)
    p = acc.portable
    assert p._meta == [] and len(p._rows) == 1 and all(type(v) is float for v in p._rows[0][3])
    acc = StatsAccumulator([NAME], 1e-3, path="native")
    for k in range(3 * S.FOLD_ROWS // 100):
        for _ in range(100):
            acc.observe(NAME, big)
        acc.end_sample()
        assert acc.portable._meta == acc.portable._rows == [] and acc._used < S.FOLD_ROWS // 2 and acc._table.shape[0] == S.FOLD_ROWS
    assert acc.result()[NAME].calls == 100 * acc.k
    # one sample with more calls than the table holds: it grows, then shrinks back with the hooks
    for _ in range(S.FOLD_ROWS + 1):
        acc.observe(NAME, big[:2])
    assert acc._table.shape[0] == 2 * S.FOLD_ROWS
    acc.end_sample()
    acc.discard_sample()
    assert acc._used == 0 and acc._table.shape[0] == S.FOLD_ROWS


def test_cpu_default_is_the_c_kernel_and_falls_back_to_numpy(monkeypatch, tmp_path, caplog):
    """With a C compiler the CPU hooks use the one-pass kernel; without one (or when the build
    fails) they use numpy, with the same statistics."""
    from graft_ui.analysis import _native_stats as N

    assert shutil.which("cc"), "the project's machines have a C compiler; the kernel must build"
    assert StatsAccumulator([NAME], 1e-3)._native is not None
    x = torch.randn(3, 700, generator=torch.Generator().manual_seed(1))
    want = _observe_all(StatsAccumulator([NAME], 1e-3), [[(NAME, x, 1.0)]])[NAME]
    monkeypatch.setattr(N._LIB, "_loaded", False)  # not tried yet in this process (restored afterwards)
    monkeypatch.setenv("GRAFT_NATIVE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    with caplog.at_level("WARNING"):
        acc = StatsAccumulator([NAME], 1e-3)
    assert acc._native is None and "native activation-statistics kernel unavailable" in caplog.text
    assert list(tmp_path.iterdir()) == []  # no half-written library left behind
    with pytest.raises(RuntimeError, match="path='native'"):
        StatsAccumulator([NAME], 1e-3, path="native")
    got = _observe_all(acc, [[(NAME, x, 1.0)]])[NAME]
    assert (got.mu, got.s, got.v) == (pytest.approx(want.mu, rel=1e-6), want.s, pytest.approx(want.v, rel=1e-6))


def test_staged_activations_are_copies_in_bounded_buffers():
    """Staging copies each activation (a later in-place op cannot change the statistics) into
    at most `stage_buffers` buffers (+1 scratch) of `stage_bytes`, all freed with the hooks."""
    names = [f"m{i}" for i in range(6)]
    acc = StatsAccumulator(names, 1e-3, path="staged", stage_bytes=4096, stage_buffers=2)
    direct = StatsAccumulator(names, 1e-3, path="direct")
    g = torch.Generator().manual_seed(3)
    for _ in range(2):
        for i, name in enumerate(names):
            x = torch.randn(4, 8 + 8 * (i % 4), generator=g)
            direct.observe(name, x)
            acc.observe(name, x)
            x.mul_(100.0)  # e.g. an in-place activation after the hook
            p = acc.portable
            arenas = [t for ts in p._free.values() for t in ts] + [st.arena for st in p._stages.values()]
            assert sum(p._arenas.values()) <= 2 and len(arenas) <= 2
            assert all(t.numel() * 4 == 4096 for t in arenas + list(p._scratch.values()))
        acc.end_sample()
        direct.end_sample()
    got, want = acc.result(), direct.result()
    for name in names:
        g_, w_ = got[name], want[name]
        assert (g_.mu, g_.s, g_.v) == (pytest.approx(w_.mu, rel=1e-6), w_.s, pytest.approx(w_.v, rel=1e-5))
    acc.discard_sample()
    assert not acc.portable._free and not acc.portable._scratch and not acc.portable._stages


def _observe_all(acc, acts):
    for sample in acts:
        for name, a, scale in sample:
            acc.observe(name, a, scale)
        acc.end_sample()
    return acc.result()


def test_every_reduction_path_agrees(monkeypatch):
    """Every path gives the same statistics (float32 reduction accuracy): mixed lengths and scales
    (several thresholds in one staging buffer), a module called twice, bf16 and strided activations,
    values on the sparsity threshold, a staging buffer filling up mid-sample, more lengths in one
    sample than buffers, several numpy chunks."""
    monkeypatch.setattr(P, "HOST_CHUNK", 1000)
    eps = 1e-2
    g = torch.Generator().manual_seed(4)
    names = [f"m{i}" for i in range(12)]
    scales = [(1.0, 0.5, 2.0, -1.5, 0.25, 1.0)[i % 6] for i in range(12)]
    # 200-float staging buffers: 8 rows of 24 (ten calls: full mid-sample), staged up to 25 elements
    lengths = [24] * 10 + [16, 20]
    acts = []
    for k in range(3):
        sample = []
        for i, name in enumerate(names):
            x = torch.randn(lengths[i], generator=g) * 10 ** (i % 3 - 1) + (50.0 if i == 7 else 0.0)
            thr = float(np.float32(eps / abs(scales[i])))
            # not at x[0]: the shift x0 is meant to be a typical value (an outlier shift costs digits)
            x[5:8] = torch.tensor([thr, float(np.nextafter(np.float32(thr), np.float32(0))), -thr])
            if i == 5:
                x = x.to(torch.bfloat16)
            if i == 6:
                x = x.view(4, 6).t()  # strided
            sample.append((name, x, scales[i]))
        # second calls: a long one (direct when staging, 2 numpy chunks) and one of another length
        sample.append((names[3], torch.randn(1500 + 8 * k, generator=g) + 2.0, scales[3]))
        sample.append((names[11], torch.randn(24, generator=g), scales[11]))
        acts.append(sample)
    staged = StatsAccumulator(names, eps, path="staged", stage_bytes=4 * 200, stage_buffers=2)
    assert staged.portable.stage_max == 25
    reduced = []  # rows per batched reduction

    def reduce_stage(st):
        reduced.append(st.rows)
        P.PortableSums._reduce_stage(staged.portable, st)

    monkeypatch.setattr(staged.portable, "_reduce_stage", reduce_stage)
    results = {
        "direct": _observe_all(StatsAccumulator(names, eps, path="direct"), acts),
        "staged": _observe_all(staged, acts),
        "numpy": _observe_all(StatsAccumulator(names, eps, path="numpy"), acts),
        "native": _observe_all(StatsAccumulator(names, eps, path="native"), acts),
    }
    assert 8 in reduced and len(reduced) > 3 * 3  # full buffers, and buffers reduced to make room
    for name, scale in zip(names, scales):
        pooled = [torch.cat([a.float().reshape(-1) for n, a, _ in sample if n == name]) * scale for sample in acts]
        mu, _, v = ref(pooled, eps)  # (its float64 threshold differs from float32 on the boundary values)
        d = results["direct"][name]
        for path, res in results.items():
            m = res[name]
            assert m.mu == pytest.approx(mu, rel=1e-5) and m.v == pytest.approx(v, rel=1e-5), (path, name)
            assert (m.s, m.calls, m.elements) == (d.s, d.calls, d.elements), (path, name)
            for f in ("mu", "v"):
                assert abs(getattr(m, f) - getattr(d, f)) <= 1e-5 * abs(getattr(d, f)), (path, name, f)
    assert 0 < results["direct"]["m0"].s < 1


def test_fused_kernel_bookkeeping(monkeypatch):
    """The CUDA path's bookkeeping (zeroed slots in chunks of 64, one launch per call, one transfer per
    chunk) gives the direct path's statistics. Run on the CPU with a torch stand-in for the Triton
    kernel, so that it is checked on machines without a GPU too."""
    launches = []

    def fused(flat, slot, thr):
        launches.append(flat.numel())
        f = flat.double()
        d = f - f[0]
        slot += torch.stack([f.abs().sum(), torch.zeros((), dtype=torch.float64), d.sum(), (d * d).sum(),
                             (f.abs() >= thr).double().sum()]).float()
        slot[1] = flat[0]

    monkeypatch.setattr(S, "_FUSED", fused)
    monkeypatch.setattr(S, "_FUSED_DEVICES", ("cuda", "cpu"))
    g = torch.Generator().manual_seed(5)
    names = [f"m{i}" for i in range(30)]
    acts = [[(n, torch.randn(3, 10 + i, generator=g) + i % 3, (1.0, -0.5)[i % 2]) for i, n in enumerate(names)] * 3
            for _ in range(2)]  # 90 calls a sample: two chunks of slots, modules called three times
    fused_acc = StatsAccumulator(names, 1e-2, path="numpy")
    got = _observe_all(fused_acc, acts)
    assert fused_acc.k == 2 and len(launches) == 2 * 90  # every call went through the fused stand-in
    want = _observe_all(StatsAccumulator(names, 1e-2, path="direct"), acts)
    for n in names:
        assert (got[n].mu, got[n].s, got[n].v, got[n].calls) == (
            pytest.approx(want[n].mu, rel=1e-5), want[n].s, pytest.approx(want[n].v, rel=1e-5), want[n].calls)


def test_adapter_branch_is_scaled_lora_output():
    """source='adapter' observes scale * B A x, the LoRA branch alone; 'output' the whole module."""
    from peft import LoraConfig, get_peft_model

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(6, 5)

        def forward(self, x, use_cache=False, logits_to_keep=1):
            return self.proj(x)

    torch.manual_seed(0)
    net = get_peft_model(Net(), LoraConfig(r=2, lora_alpha=6, target_modules=["proj"], init_lora_weights=False))
    layer = net.base_model.model.proj
    x = torch.randn(1, 7, 6)
    branch = (x @ layer.lora_A["default"].weight.T @ layer.lora_B["default"].weight.T) * layer.scaling["default"]
    full = layer.base_layer(x) + branch
    for source, expected in (("adapter", branch), ("output", full)):
        st = collect_stats(net, [{"x": x}], modules={NAME: layer}, source=source, eps=0.05)
        mu, s, v = ref([expected.detach()], 0.05)
        m = st.modules[NAME]
        assert (m.mu, m.s, m.v) == (pytest.approx(mu, rel=1e-5), pytest.approx(s), pytest.approx(v, rel=1e-5))
    st = collect_stats(net, [{"x": x}], modules={NAME: layer}, source="auto")
    assert st.source == "adapter"
    assert count_forward_hooks(net) == 0
    with pytest.raises(ValueError, match="LoRA"):
        collect_stats(net, [{"x": x}], modules={NAME: layer.base_layer}, source="adapter")


def test_scope_and_names_on_tiny_qwen2vl(tiny_model):
    mods = scope_modules(tiny_model)
    assert len(mods) == 2 * 7
    assert "model.language_model.layers.1.mlp.down_proj" in mods
    assert parse_name("model.language_model.layers.1.mlp.down_proj") == ("language", 1, "down_proj")
    assert len(scope_modules(tiny_model, Scope(modules=("q_proj", "o_proj"), layers=(1, 1)))) == 2
    with_vision = scope_modules(tiny_model, Scope(vision=True))
    assert len(with_vision) == 2 * 7 + 4
    assert "model.visual.blocks.0.attn.qkv" in with_vision


def test_stats_on_tiny_qwen2vl_are_deterministic_and_finite(tiny_model):
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(2, 100, (1, 9 + i), generator=g)} for i in range(3)]
    a = collect_stats(tiny_model, batches)
    b = collect_stats(tiny_model, batches)
    assert a.to_dict() == b.to_dict()
    assert len(a.modules) == 14 and a.k == 3
    assert all(np.isfinite([m.mu, m.s, m.v]).all() and m.mu > 0 for m in a.modules.values())
    assert count_forward_hooks(tiny_model) == 0


def test_sparsity_threshold_boundary_is_exact():
    """Values at and just below eps are counted exactly (|a| < eps is sparse, |a| = eps is not)."""
    eps = 1e-3
    below = float(np.nextafter(np.float32(eps), np.float32(0)))
    x = torch.tensor([[eps, below, -below, 0.0, 2 * eps, -eps]], dtype=torch.float32)
    model = Toy()
    st = collect_stats(model, [{"x": x}], modules={NAME: model.a}, source="output", eps=eps)
    assert st.modules[NAME].s == pytest.approx(3 / 6)
