"""Small C kernels compiled on first use and called through ctypes, written once for every kernel.

A `NativeLibrary` names one C source beside its Python module and the functions it exports
with their ctypes argument types. `load()` builds the source with the system C compiler
(`$CC`, else `cc`) for this CPU (`-march=native`; `$GRAFT_NATIVE_MARCH` names another
target, e.g. `x86-64-v3` to run AVX2 code on an AVX-512 machine, `baseline` for the
compiler's default) into `$GRAFT_NATIVE_DIR` (default `~/.cache/graft_ui/native`), named by
a hash of the source, the compiler's version, the flags and the instruction sets the target
enables (the compiler's predefined macros for it, so one cache shared by several CPUs keeps
one build per CPU), written atomically (several processes may build at once), then loads it
once per process (thread safe). A compiler that rejects `-march=native` gets the baseline
build. Without a compiler, with `GRAFT_NO_NATIVE=1`, or when the build fails, `load()`
returns None and the caller uses its numpy/torch path. `warm()` builds every library in the
background so that no user waits for a compiler (the app calls it at startup).

Users: the analysis hooks' reduction (analysis/_native_stats.py) and Graft's LoRA gate
statistics (kernels/lora_gates.py).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any, Sequence

from graft_ui.atomic import replacing

log = logging.getLogger(__name__)

# -ffp-contract=fast: a * b + c is one fused multiply-add wherever the target has one (GCC's
# default in GNU C, not clang's), so the kernels round the same way whichever compiler built them
FLAGS = ("-O3", "-fopenmp-simd", "-fno-math-errno", "-ffp-contract=fast", "-shared", "-fPIC")

LIBRARIES: list["NativeLibrary"] = []


def cache_dir() -> Path:
    env = os.environ.get("GRAFT_NATIVE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "graft_ui" / "native"


def march() -> str:
    """The -march the kernels are built for: $GRAFT_NATIVE_MARCH, else "native" ("baseline": none)."""
    return os.environ.get("GRAFT_NATIVE_MARCH", "").strip() or "native"


def target_flags(target: str) -> tuple[str, ...]:
    return () if target == "baseline" else (f"-march={target}",)


def cpu_vector_isa() -> str:
    """The widest vector instruction set this CPU reports: AVX-512, AVX2, AVX, SSE, SVE, NEON or unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = set()
    for line in text.splitlines():
        if line.split(":", 1)[0].strip() in ("flags", "Features"):
            flags = set(line.split(":", 1)[1].split())
            break
    for isa, flag in (("AVX-512", "avx512f"), ("AVX2", "avx2"), ("AVX", "avx"), ("SSE", "sse2"), ("SVE", "sve"),
                      ("NEON", "asimd")):
        if flag in flags:
            return isa
    return "unknown"


def build(source: Path, stem: str, cc: str, flags: Sequence[str] = FLAGS) -> Path:
    """The shared library of `source` in the cache, compiled with `cc` unless already there."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    # the instruction sets the flags enable (-march=native: this CPU's), as the compiler's macros
    isa = subprocess.run([cc, *[f for f in flags if f.startswith("-m")], "-dM", "-E", "-x", "c", os.devnull],
                         capture_output=True, text=True, timeout=30)
    if isa.returncode != 0:
        raise RuntimeError(f"{cc} rejects {' '.join(flags)}: {isa.stderr.strip()[:300]}")
    key = hashlib.sha256(
        source.read_bytes() + version.encode() + " ".join(flags).encode() + platform.machine().encode()
        + "".join(sorted(isa.stdout.splitlines())).encode()
    ).hexdigest()[:16]
    out = cache_dir() / f"{stem}-{key}.so"
    if out.is_file():
        return out
    # a cache, rebuilt if lost: atomic (another process may load it meanwhile) but not fsynced
    with replacing(out, suffix=".so", fsync=False) as tmp:
        res = subprocess.run([cc, *flags, "-o", str(tmp), str(source)], capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"{cc} exited with {res.returncode}: {res.stderr.strip()[:500]}")
    log.info("built the native %s kernel: %s", stem, out)
    return out


class NativeLibrary:
    """One C source's exported functions: {name: (argtypes, restype)}; `what` names it in logs."""

    def __init__(self, source: Path, stem: str, functions: dict[str, tuple[list, Any]], what: str):
        self.source, self.stem, self.functions, self.what = Path(source), stem, functions, what
        self._lock = threading.Lock()
        self._loaded: dict[str, Any] | None | bool = False  # False: not tried yet
        self.target: str | None = None  # the -march of the loaded build ("baseline": none)
        LIBRARIES.append(self)

    def reset(self) -> None:
        """Forget the loaded library (tests: try again under another environment)."""
        with self._lock:
            self._loaded, self.target = False, None

    def load(self) -> dict[str, Any] | None:
        """{name: ctypes function}, or None when native code is off or cannot be built here."""
        if self._loaded is not False:
            return self._loaded or None
        with self._lock:
            if self._loaded is False:
                self._loaded = self.open()
        return self._loaded or None

    def open(self) -> dict[str, Any] | None:
        """`load` without its cache: build (unless cached on disk) and load now."""
        if os.environ.get("GRAFT_NO_NATIVE"):
            return None
        cc = os.environ.get("CC") or "cc"
        if shutil.which(cc) is None:
            log.info("no C compiler (%s) found; the %s use numpy/torch", cc, self.what)
            return None
        try:
            lib = ctypes.CDLL(str(self._build(cc)))
            fns = {}
            for name, (argtypes, restype) in self.functions.items():
                fn = getattr(lib, name)
                fn.argtypes, fn.restype = argtypes, restype
                fns[name] = fn
        except Exception as exc:  # a failed build or load only costs speed: the fallback computes the same
            log.warning("native %s kernel unavailable (%s); using numpy/torch", self.what, exc)
            return None
        return fns

    def _build(self, cc: str) -> Path:
        target = march()
        try:
            out = build(self.source, self.stem, cc, FLAGS + target_flags(target))
        except Exception as exc:
            if target != "native":  # a target asked for by name: its failure is the answer
                raise
            log.info("the %s kernel does not build with -march=native (%s); building for the baseline",
                     self.what, exc)
            target = "baseline"
            out = build(self.source, self.stem, cc, FLAGS)
        self.target = target
        return out


def warm(background: bool = True) -> threading.Thread | None:
    """Build and load every registered library (on a daemon thread unless `background` is False)."""
    def run():
        for lib in list(LIBRARIES):
            lib.load()

    if not background:
        run()
        return None
    t = threading.Thread(target=run, name="graft-native-warm", daemon=True)
    t.start()
    return t
