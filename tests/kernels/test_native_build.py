"""graft_ui/native.py builds each kernel for a named target: -march=native by default,
GRAFT_NATIVE_MARCH to pick another (one cached library per target), the baseline where the
compiler rejects -march=native, the torch reference where a named target cannot be built."""

import platform
import stat
from pathlib import Path

import pytest
import torch

from graft_ui.kernels import lora_gates as G
from graft_ui.native import cpu_vector_isa

X86 = platform.machine() == "x86_64"


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """The LoRA gate library unloaded, its cache in tmp_path; restored afterwards."""
    monkeypatch.setattr(G._LIB, "_loaded", False)
    monkeypatch.setattr(G._LIB, "target", None)
    monkeypatch.setenv("GRAFT_NATIVE_DIR", str(tmp_path))
    monkeypatch.delenv("GRAFT_NATIVE_MARCH", raising=False)
    return tmp_path


def _reload():
    G._LIB.reset()
    return G.kernel_target()


@pytest.mark.skipif(not X86, reason="x86-64 targets")
def test_each_target_is_its_own_build_with_its_vector_width(fresh, monkeypatch):
    widths = {"baseline": 4, "native": {"AVX-512": 16, "AVX2": 8, "AVX": 8}.get(cpu_vector_isa(), 4)}
    if cpu_vector_isa() in ("AVX-512", "AVX2"):
        widths["x86-64-v3"] = 8  # runnable here: AVX2 + FMA
    for target, lanes in widths.items():
        monkeypatch.setenv("GRAFT_NATIVE_MARCH", target)
        t = _reload()
        assert (t["march"], t["lanes"]) == (target, lanes)
        assert t["fma"] == (target != "baseline")
    assert len(list(fresh.glob("lora_gates-*.so"))) == len(widths)


def test_a_compiler_that_rejects_march_native_gets_the_baseline_build(fresh, monkeypatch):
    cc = fresh / "cc-no-native"
    cc.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = -march=native ] && exit 1; done\nexec cc "$@"\n')
    cc.chmod(cc.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("CC", str(cc))
    assert _reload()["march"] == "baseline"


def test_a_named_target_that_cannot_build_leaves_the_torch_reference(fresh, monkeypatch):
    monkeypatch.setenv("GRAFT_NATIVE_MARCH", "no-such-cpu")
    assert _reload() is None
    g = torch.Generator().manual_seed(0)
    B, A = torch.randn(8, 2, generator=g), torch.randn(2, 30, generator=g)
    assert G.native(B, A, 1.0, B, A, 1.0, 10) is None
    assert float(G.gate_stats(B, A, 1.0, B, A, 1.0, 10).counts_b.sum()) == 8 * 30
    assert not [p for p in Path(fresh).iterdir() if p.suffix == ".so"]
