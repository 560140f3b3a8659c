"""Streamed merges: a method with `Method.streams` given stored.Stored inputs and a stored.Sink
output gives exactly what it gives on whole tensors, and the engine then never reads a whole
tensor from the files (every read is a row block)."""

import pytest
import torch

from graft_ui.merging import get_method
from graft_ui.merging.stored import Sink, Stored

STREAMED = {"slerp": {"t": 0.3}, "model_stock": {}, "della": {"density": 0.5, "epsilon": 0.1},
            "della_linear": {"density": 0.4, "epsilon": 0.2}}


def _stored(t, reads):
    flat = t.reshape(-1)

    def read(start, stop):
        reads.append(stop - start)
        return flat[start:stop].clone()  # a copy, as a file read would be

    return Stored(t.shape, t.dtype, t.device, read)


def _sink(shape, dtype):
    out = torch.full(shape, float("nan"), dtype=dtype).reshape(-1)

    def write(start, block):
        out[start:start + block.numel()] = block

    return Sink(shape, dtype, "cpu", write), out


@pytest.mark.parametrize("method", sorted(STREAMED))
@pytest.mark.parametrize("shape", [(3000, 700), (5000,), (700, 3, 20, 40)])
def test_streamed_merge_equals_the_in_memory_merge(method, shape):
    m = get_method(method)
    assert m.streams
    g = torch.Generator().manual_seed(3)
    base = torch.randn(shape, generator=g).bfloat16()
    experts = [(base.float() + 0.05 * torch.randn(shape, generator=g)).bfloat16() for _ in range(2)]
    experts = experts[: m.max_experts or 2]
    weights = [0.6, 0.5][: len(experts)]
    params = STREAMED[method]
    want, want_stats = m.merge(base, experts, weights, params, torch.Generator().manual_seed(0))
    reads = []
    sink, got = _sink(shape, torch.bfloat16)
    res, stats = m.merge(_stored(base, reads), [_stored(e, reads) for e in experts], weights, params,
                         torch.Generator().manual_seed(0), out=sink)
    assert res is sink and stats == want_stats
    assert torch.equal(got.view(torch.int16), want.reshape(-1).view(torch.int16))  # bit for bit
    if len(shape) > 1:  # a matrix (2 M entries, 2 blocks and more) is read in row blocks, never whole
        assert max(reads) < base.numel()


def test_stored_views_refuse_what_they_cannot_do():
    s = Stored((4, 6), torch.float32, "cpu", lambda a, b: torch.zeros(b - a))
    assert s.reshape(-1, 3).shape == (8, 3) and s.reshape(1, -1).shape == (1, 24)
    with pytest.raises(ValueError, match="2-D row views"):
        s.reshape(2, 3, 4)
    with pytest.raises(ValueError, match="cannot view"):
        s.reshape(5, 5)
    sink = Sink((4, 6), torch.bfloat16, "cpu", lambda start, block: None)
    with pytest.raises(ValueError, match="cannot turn it into"):
        sink.to(torch.float32)


def test_engine_streams_every_tensor_and_matches_the_whole_tensor_merge(tmp_path, monkeypatch):
    """run_recipe with scope.all_tensors: streamed (no whole-tensor read) and bit-equal to the
    same merge done on whole tensors; a NaN or inf in an input is still named."""
    from graft_ui.models import merge_full
    from graft_ui.models.checkpoint import Checkpoint, SafetensorsFile
    from graft_ui.models.merge import run_recipe
    from graft_ui.recipe import Recipe

    g = torch.Generator().manual_seed(1)
    shapes = {"model.embed_tokens.weight": (3000, 512), "model.layers.0.self_attn.q_proj.weight": (64, 64),
              "model.layers.0.self_attn.q_proj.bias": (64,), "model.norm.weight": (64,)}
    base = {n: torch.randn(s, generator=g).bfloat16() for n, s in shapes.items()}
    folders = {}
    for name in ("base", "e1", "e2"):
        ts = base if name == "base" else {n: (t.float() + 0.02 * torch.randn(t.shape, generator=g)).bfloat16()
                                          for n, t in base.items()}
        d = folders[name] = tmp_path / name
        d.mkdir()
        _write(d, ts)
        (d / "config.json").write_text('{"model_type": "qwen2", "num_hidden_layers": 1}')

    def recipe(method):
        experts = [str(folders["e1"]), str(folders["e2"])][: get_method(method).max_experts or 2]
        return Recipe.from_dict({"method": method, "base": str(folders["base"]), "experts": experts, "seed": 0,
                                 "params": STREAMED[method], "scope": {"all_tensors": True},
                                 "output": {"dtype": "bfloat16"}})

    whole = {}
    for method in STREAMED:  # whole tensors: the method as if it did not stream
        monkeypatch.setattr(merge_full.FullJob, "_streams", lambda self, *a: False)
        run_recipe(recipe(method), tmp_path / f"whole-{method}")
        whole[method] = Checkpoint(tmp_path / f"whole-{method}")
    monkeypatch.undo()

    def no_whole_read(self, name, out=None):
        raise AssertionError(f"{name} read whole")

    read_range = SafetensorsFile.read_range
    bytes_read = {}

    def counted(self, name, byte_start, out):
        bytes_read[name] = bytes_read.get(name, 0) + out.numel()
        return read_range(self, name, byte_start, out)

    # held (every tensor here is small: read and converted once, the second pass from memory)
    # and not held (HELD_BYTES 0: every pass reads row blocks from the file)
    check_finite, checks = merge_full.check_finite, []

    def counted_check(t, what):
        checks.append(what)
        check_finite(t, what)

    for held in (merge_full.HELD_BYTES, 0):
        monkeypatch.setattr(SafetensorsFile, "read", no_whole_read)
        monkeypatch.setattr(SafetensorsFile, "read_range", counted)
        monkeypatch.setattr(merge_full, "HELD_BYTES", held)
        monkeypatch.setattr(merge_full, "check_finite", counted_check)
        for method in STREAMED:
            bytes_read.clear()
            checks.clear()
            run_recipe(recipe(method), tmp_path / f"{method}-{held}")
            # slerp's and model_stock's Gram pass vouches for every entry: the reader checks none
            assert bool(checks) == method.startswith("della"), (method, held, checks[:3])
            inputs = 1 + (get_method(method).max_experts or 2)  # base + experts
            nbytes = {n: 2 * torch.Size(s).numel() * inputs for n, s in shapes.items()}
            if held:  # each input's bytes read exactly once, though slerp/model_stock/della take two passes
                assert bytes_read == nbytes, method
            else:
                assert bytes_read["model.embed_tokens.weight"] == 2 * nbytes["model.embed_tokens.weight"], method
        monkeypatch.undo()
        for method in STREAMED:
            got = Checkpoint(tmp_path / f"{method}-{held}")
            for n in shapes:
                assert torch.equal(got.read(n).view(torch.int16), whole[method].read(n).view(torch.int16)), \
                    (method, n, held)

    _write_with(folders["e2"], base, "model.embed_tokens.weight", (2999, 5), float("nan"))
    for held in (merge_full.HELD_BYTES, 0):
        monkeypatch.setattr(merge_full, "HELD_BYTES", held)
        for method in ("della", "model_stock"):  # della's reader checks; model_stock's Gram pass does
            with pytest.raises(ValueError, match="embed_tokens.*e2.*NaN"):
                run_recipe(recipe(method), tmp_path / f"nan-{method}-{held}")
    # an inf in a small tensor of the base (held, or read in blocks), found by slerp's Gram pass
    _write_with(folders["base"], base, "model.layers.0.self_attn.q_proj.weight", (63, 0), float("-inf"))
    for held in (merge_full.HELD_BYTES, 0):
        monkeypatch.setattr(merge_full, "HELD_BYTES", held)
        with pytest.raises(ValueError, match=r"q_proj\.weight.* of base .*NaN or inf"):
            run_recipe(recipe("slerp"), tmp_path / f"inf-slerp-{held}")


def _write(folder, tensors: dict) -> None:
    """Write `tensors` as the safetensors checkpoint in `folder`."""
    from graft_ui.models.checkpoint import ShardedWriter

    w = ShardedWriter(folder, [(n, t.dtype, t.shape) for n, t in tensors.items()])
    for n, t in tensors.items():
        w.write(n, t)
    w.close()


def _write_with(folder, tensors: dict, name: str, at: tuple, value: float) -> None:
    """Write `tensors` as the checkpoint in `folder`, with `name`[at] set to `value`."""
    bad = dict(tensors)
    bad[name] = bad[name].clone()
    bad[name][at] = value
    _write(folder, bad)


def _counted(t, log, name):
    """A Stored over `t` whose reader checks like the engine's: a checked read raises on NaN/inf,
    an unchecked one does not; `check` raises naming `name`. Every call is logged."""
    flat = t.reshape(-1)

    def read(start, stop):
        log.append(("read", name, start, stop))
        block = flat[start:stop].clone()
        if not torch.isfinite(block.float()).all():
            raise ValueError(f"tensor {name} contains NaN or inf values (checked read)")
        return block

    def unchecked(start, stop):
        log.append(("unchecked", name, start, stop))
        return flat[start:stop].clone()

    def check(start, stop):
        log.append(("check", name, start, stop))
        if not torch.isfinite(flat[start:stop].float()).all():
            raise ValueError(f"tensor {name} contains NaN or inf values")

    return Stored(t.shape, t.dtype, t.device, read, read_unchecked=unchecked, check=check)


@pytest.mark.parametrize("method", ["model_stock", "slerp"])
@pytest.mark.parametrize("shape", [(2500, 700), (3001,)])
def test_gram_checks_stored_inputs_through_its_sums(method, shape):
    """The Gram pass reads every entry of the stored inputs unchecked, before the combine pass
    reads any, and checks none again when its diagonal is finite; a NaN or inf anywhere
    (base or expert, first block or last) makes the diagonal non-finite, and the re-check names
    the input that holds it."""
    m = get_method(method)
    g = torch.Generator().manual_seed(5)
    base = torch.randn(shape, generator=g).bfloat16()
    experts = [(base.float() + 0.05 * torch.randn(shape, generator=g)).bfloat16() for _ in range(m.max_experts or 2)]
    log = []
    stored = [_counted(base, log, "base")] + [_counted(e, log, f"e{i}") for i, e in enumerate(experts)]
    m.merge(stored[0], stored[1:], None, {}, None, out=_sink(shape, torch.bfloat16)[0])
    assert not [c for c in log if c[0] == "check"]
    kinds = [c[0] for c in log]  # the Gram pass reads every entry unchecked, the combine pass then reads
    assert kinds == sorted(kinds, reverse=True) and "read" in kinds
    for name in ["base"] + [f"e{i}" for i in range(len(experts))]:
        unchecked = [stop - start for kind, who, start, stop in log if kind == "unchecked" and who == name]
        assert sum(unchecked) == base.numel()
    n = base.numel()
    for who, at, bad in [("e0", n - 1, float("nan")), ("base", 0, float("inf")), (f"e{len(experts) - 1}", n // 2,
                                                                                  float("-inf"))]:
        ts = [base.clone()] + [e.clone() for e in experts]
        idx = 0 if who == "base" else 1 + int(who[1:])
        ts[idx].view(-1)[at] = bad
        log = []
        stored = [_counted(ts[0], log, "base")] + [_counted(e, log, f"e{i}") for i, e in enumerate(ts[1:])]
        with pytest.raises(ValueError, match=f"tensor {who} contains NaN or inf values$"):
            m.merge(stored[0], stored[1:], None, {}, None, out=_sink(shape, torch.bfloat16)[0])
        assert not [c for c in log if c[0] == "read"]  # found by the Gram pass, before any combine read


def test_gram_overflow_is_not_a_bad_input():
    """Finite inputs whose squares overflow float32 give an inf diagonal: the re-check finds
    nothing to name and the merge goes on as the whole-tensor merge does."""
    m = get_method("model_stock")
    base = torch.zeros(4096)
    experts = [torch.full((4096,), 3e19), torch.full((4096,), -3e19)]
    want, want_stats = m.merge(base, experts, None, {}, None)
    log = []
    stored = [_counted(base, log, "base")] + [_counted(e, log, f"e{i}") for i, e in enumerate(experts)]
    sink, got = _sink((4096,), torch.float32)
    _, stats = m.merge(stored[0], stored[1:], None, {}, None, out=sink)
    assert [c[1] for c in log if c[0] == "check"] == ["base", "e0", "e1"]
    assert torch.equal(got.view(torch.int32), want.reshape(-1).view(torch.int32)) and str(stats) == str(want_stats)


@pytest.mark.parametrize("k", [2, 3, 6])
@pytest.mark.parametrize("shape", [(300, 37), (1001,), (5000, 333)])
def test_gram_is_the_float64_gram_within_float32_rounding(k, shape):
    """Dots (k <= GRAM_DOTS_UP_TO) or one matrix product per block, each input's rows padded to
    64-byte alignment whatever the row length: the float64 Gram within float32 rounding."""
    from graft_ui.merging.sphere import gram

    g = torch.Generator().manual_seed(k)
    base = torch.randn(shape, generator=g)
    xs = [base + 0.1 * torch.randn(shape, generator=g) for _ in range(k)]
    d = torch.stack([(x.double() - base.double()).reshape(-1) for x in xs])
    want = d @ d.T
    got = gram(xs, base)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.diagonal().max()))
    assert torch.equal(got, got.T)
    rows = gram(xs, base, "row")
    d3 = d.view(k, -1, shape[-1])
    assert torch.allclose(rows, torch.einsum("irk,jrk->rij", d3, d3), rtol=1e-5, atol=1e-6)
