"""The CPU hooks' one-pass reduction (`_native_stats.c`), compiled on first use and called through ctypes.

Why native code: on a small model a hooked activation has a few thousand to a few
hundred thousand elements, and numpy needs seven passes (and seven calls of ~3 us
overhead each) for the five sums; the C loop makes one pass in a single call, 4-7x
faster, which is what keeps the analysis within ~15% of the plain forward passes.

Built and cached by graft_ui/native.py (`$CC`, `$GRAFT_NATIVE_DIR`, `GRAFT_NO_NATIVE`).
Without a compiler `load()` returns None and the hooks use numpy; both paths give the same
sums to float32 reduction accuracy.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Callable

from graft_ui.native import NativeLibrary

SOURCE = Path(__file__).with_suffix(".c")

# (address of a contiguous activation, numel, threshold, address of a row of 8 doubles, module, scale)
Kernel = Callable[[int, int, float, int, float, float], None]

_ARGS = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_void_p, ctypes.c_double, ctypes.c_double]
_LIB = NativeLibrary(SOURCE, "graft_stats", {"graft_stats_f32": (_ARGS, None), "graft_stats_bf16": (_ARGS, None)},
                     "activation-statistics")

def load() -> tuple[Kernel, Kernel] | None:
    """(float32 kernel, bfloat16 kernel), or None when native code is off or cannot be built here
    (`NativeLibrary.load`: built or found once per process, shared with the startup warm-up)."""
    fns = _LIB.load()
    return None if fns is None else (fns["graft_stats_f32"], fns["graft_stats_bf16"])
