"""The CPU hooks' one-pass reduction (`_native_stats.c`), compiled on first use and called through ctypes.

Why native code: on a small model a hooked activation has a few thousand to a few
hundred thousand elements, and numpy needs seven passes (and seven calls of ~3 us
overhead each) for the five sums; the C loop makes one pass in a single call, 4-7x
faster, which is what keeps the analysis within ~15% of the plain forward passes.

The library is built with the system C compiler (`$CC`, else `cc`) into
`$GRAFT_NATIVE_DIR` (default `~/.cache/graft_ui/native`), named by a hash of the source,
the compiler's version and the machine, and written atomically (several processes may
build at once). Without a compiler, or with `GRAFT_NO_NATIVE=1`, `load()` returns None
and the hooks use numpy; both paths give the same sums to float32 reduction accuracy.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Callable

from graft_ui.atomic import replacing

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_suffix(".c")
FLAGS = ("-O3", "-fopenmp-simd", "-fno-math-errno", "-shared", "-fPIC")

# (address of a contiguous activation, numel, threshold, address of a row of 8 doubles, module, scale)
Kernel = Callable[[int, int, float, int, float, float], None]

_LOADED: tuple[Kernel, Kernel] | None | bool = False  # False: not tried yet


def cache_dir() -> Path:
    env = os.environ.get("GRAFT_NATIVE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "graft_ui" / "native"


def _build(cc: str) -> Path:
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256(
        SOURCE.read_bytes() + version.encode() + " ".join(FLAGS).encode() + platform.machine().encode()
    ).hexdigest()[:16]
    out = cache_dir() / f"graft_stats-{key}.so"
    if out.is_file():
        return out
    # a cache, rebuilt if lost: atomic (another process may load it meanwhile) but not fsynced
    with replacing(out, suffix=".so", fsync=False) as tmp:
        res = subprocess.run([cc, *FLAGS, "-o", str(tmp), str(SOURCE)], capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"{cc} exited with {res.returncode}: {res.stderr.strip()[:500]}")
    log.info("built the native activation-statistics kernel: %s", out)
    return out


def load() -> tuple[Kernel, Kernel] | None:
    """(float32 kernel, bfloat16 kernel), or None when native code is off or cannot be built here."""
    global _LOADED
    if _LOADED is not False:
        return _LOADED or None
    _LOADED = None
    if os.environ.get("GRAFT_NO_NATIVE"):
        return None
    cc = os.environ.get("CC") or "cc"
    if shutil.which(cc) is None:
        log.info("no C compiler (%s) found; activation statistics use numpy", cc)
        return None
    try:
        lib = ctypes.CDLL(str(_build(cc)))
        kernels = []
        for name in ("graft_stats_f32", "graft_stats_bf16"):
            fn = getattr(lib, name)
            fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_void_p, ctypes.c_double, ctypes.c_double]
            fn.restype = None
            kernels.append(fn)
    except Exception as exc:  # a failed build or load only costs speed: numpy computes the same sums
        log.warning("native activation-statistics kernel unavailable (%s); using numpy", exc)
        return None
    _LOADED = (kernels[0], kernels[1])
    return _LOADED
