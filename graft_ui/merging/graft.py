"""Graft: dual-gate parameter fusion. https://arxiv.org/abs/2506.23940 (section 3, Algorithm 1)

local:  d_i = sum_j |Wb - Wg|,  w_loc = sigmoid(alpha * (d - mean d) / (std d + eps) + beta)   (M,)
global: w_glob = (a/pi) * atan(c * (H(Wb) - H(Wg))) + 1/2, H = entropy over `bins` uniform bins
dual:   wb~ = w_glob (1 - exp(-w_glob w_loc)),  wg~ = (1 - w_glob)(1 - exp(-(1 - w_glob)(1 - w_loc)))
        [wb, wg] = softmax([wb~, wg~]) per row;  W = wb * Wb + wg * Wg  (bias takes the same wb)
Experts E1..Ek fuse left to right: F = graft(graft(E1, E2), E3) ...

Deviations from the paper's text, all per DESIGN.md section 2: phi is the affine map above
(alpha, beta per module, default 1 and 0); Algorithm 1's a/pi (eq. 4's a/c kept as
global_form="eq4") and its minus sign inside exp (eq. 6 drops it).

Extension, NOT in the paper: `scale` (default 1.0 = the paper's method, bit for bit)
multiplies the fused delta against the base, W = W_base + scale * (W_fused - W_base), after
the whole left-to-right chain. Why (DESIGN.md section 7): the gates sum to 1 per channel, so
the fused delta is about wb dW_A + (1 - wb) dW_B with wb near 1/2, i.e. half of each
expert's own delta, where task arithmetic keeps dW_A + dW_B whole; scale = 2 lets Graft keep
full-strength deltas. Full experts need the base for it (scale != 1 only); LoRA experts'
deltas are already relative to the base, so their fused B factors are multiplied by scale.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Iterable, Sequence

import torch

from .registry import Method, Param, register, validate_params
from .steps import as_rows, auto_block_rows, check_inputs, row_slices

log = logging.getLogger(__name__)

GATES = ("dual", "local", "global")
GLOBAL_FORMS = ("algorithm", "eq4")
EPS = 1e-12
# row blocks for the gate scans: ~16 MiB of float32 per operand
GATE_BLOCK_ELEMS = 1 << 22

Scalar = float | torch.Tensor
PairBlocks = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]


# ---------------------------------------------------------------- entropy

def entropy_blocks(blocks: Callable[[], Iterable[torch.Tensor]], bins: int = 10) -> float:
    """Entropy of the values produced by `blocks()` (called twice: min/max, then counts).

    `bins` uniform bins span the values' own min..max (max falls in the last bin),
    natural log, empty bins contribute 0, a constant tensor has entropy 0. Blocks are
    histogrammed separately (float32 counts are exact per block) and summed in float64,
    so a LoRA delta B@A can be streamed without ever being materialised whole.
    """
    _check_bins(bins)
    rng = _Range()
    for blk in blocks():
        rng.add(blk)
    hist = _Hist(rng, bins)
    if hist.needed:
        for blk in blocks():
            hist.add(blk)
    return hist.entropy()


def _check_bins(bins: int) -> None:
    if int(bins) != bins or bins < 1:
        raise ValueError(f"bins={bins!r} must be a positive integer")


class _Range:
    """Running min/max/count over blocks (entropy pass 1)."""

    def __init__(self):
        self.lo, self.hi, self.n = math.inf, -math.inf, 0

    def add(self, blk: torch.Tensor) -> None:
        if blk.numel():
            self.lo = min(self.lo, float(blk.min()))
            self.hi = max(self.hi, float(blk.max()))
            self.n += blk.numel()


class _Hist:
    """Histogram over a finished `_Range` (entropy pass 2); constant tensors need no pass."""

    def __init__(self, rng: _Range, bins: int):
        if rng.n == 0:
            raise ValueError("entropy of an empty tensor is undefined")
        if not (math.isfinite(rng.lo) and math.isfinite(rng.hi)):
            raise ValueError(f"entropy: tensor has non-finite values (min={rng.lo}, max={rng.hi})")
        self.rng, self.bins, self.counts = rng, int(bins), None
        self.needed = rng.hi > rng.lo

    def add(self, blk: torch.Tensor) -> None:
        if blk.numel():
            h = torch.histc(blk.float(), bins=self.bins, min=self.rng.lo, max=self.rng.hi).double()
            self.counts = h if self.counts is None else self.counts.add_(h)

    def entropy(self) -> float:
        if not self.needed:
            return 0.0
        p = self.counts[self.counts > 0] / self.counts.sum()
        return float(-(p * p.log()).sum())


def _tensor_blocks(W: torch.Tensor, block_rows: int | None) -> Callable[[], Iterable[torch.Tensor]]:
    W2 = as_rows(W)
    step = block_rows or auto_block_rows(W2.shape[1], GATE_BLOCK_ELEMS)
    return lambda: (W2[sl] for sl in row_slices(W2.shape[0], step))


def entropy(W: torch.Tensor, bins: int = 10, *, block_rows: int | None = None) -> float:
    """Histogram entropy of one tensor (see `entropy_blocks`), computed in row blocks."""
    return entropy_blocks(_tensor_blocks(W, block_rows), bins)


# ---------------------------------------------------------------- gates

def row_l1_distance(pairs: PairBlocks) -> torch.Tensor:
    """d_i = sum_j |Wb[i, j] - Wg[i, j]| over row blocks, float64 (M,)."""
    parts = [(b.float() - g.float()).abs_().sum(1, dtype=torch.float64) for b, g in pairs()]
    return torch.cat(parts)


def local_gate(d: torch.Tensor, alpha: Scalar = 1.0, beta: Scalar = 0.0) -> torch.Tensor:
    """w_loc = sigmoid(alpha * (d - mean) / (std + eps) + beta), population std; (M,).

    Differentiable w.r.t. alpha and beta (0-dim tensors) for calibration. A constant d
    (incl. M == 1) gives exactly phi = beta rather than rounding noise / eps.
    """
    d = d.detach().double()
    if d.numel() < 2 or bool(d.max() == d.min()):
        z = torch.zeros_like(d)
    else:
        z = (d - d.mean()) / (d.std(correction=0) + EPS)
    return torch.sigmoid(alpha * z + beta)


def global_gate(H_b: float, H_g: float, a: float = 0.4, c: float = 500.0, form: str = "algorithm") -> float:
    """w_glob = (a/pi) atan(c (H_b - H_g)) + 1/2 (Algorithm 1) or (a/c) atan(...) + 1/2 (eq. 4)."""
    if form not in GLOBAL_FORMS:
        raise ValueError(f"global_form={form!r} is not one of {list(GLOBAL_FORMS)}")
    scale = a / math.pi if form == "algorithm" else a / c
    return scale * math.atan(c * (H_b - H_g)) + 0.5


def dual_gate(w_glob: Scalar, w_loc: torch.Tensor) -> torch.Tensor:
    """Base weight wb per row (M,); the graft weight is 1 - wb (two-way softmax = sigmoid)."""
    g = torch.as_tensor(w_glob, dtype=w_loc.dtype, device=w_loc.device)
    wb_t = g * (1 - torch.exp(-g * w_loc))
    wg_t = (1 - g) * (1 - torch.exp(-(1 - g) * (1 - w_loc)))
    return torch.sigmoid(wb_t - wg_t)


def gate_weights(
    d: torch.Tensor | None,
    H_b: float | None,
    H_g: float | None,
    *,
    rows: int,
    a: float = 0.4,
    c: float = 500.0,
    gates: str = "dual",
    global_form: str = "algorithm",
    alpha: Scalar = 1.0,
    beta: Scalar = 0.0,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, float]:
    """Combine precomputed gate inputs into (wb (M,) float64, w_glob); an off gate is 0.5.

    Calibration calls this in its loop: d and the entropies do not depend on alpha/beta.
    """
    if gates not in GATES:
        raise ValueError(f"gates={gates!r} is not one of {list(GATES)}")
    w_glob = global_gate(H_b, H_g, a, c, global_form) if gates != "local" else 0.5
    if gates != "global":
        w_loc = local_gate(d, alpha, beta)
    else:
        w_loc = torch.full((rows,), 0.5, dtype=torch.float64, device=device)
    return dual_gate(w_glob, w_loc), w_glob


def _scan(pairs: PairBlocks, bins: int, need_d: bool, need_h: bool):
    """Gate inputs in at most two passes over the blocks: d with min/max, then both histograms."""
    _check_bins(bins)
    parts, rb, rg = [], _Range(), _Range()
    for b, g in pairs():
        if need_d:
            parts.append((b.float() - g.float()).abs_().sum(1, dtype=torch.float64))
        if need_h:
            rb.add(b)
            rg.add(g)
    d = torch.cat(parts) if need_d else None
    if not need_h:
        return d, None, None
    hb, hg = _Hist(rb, bins), _Hist(rg, bins)
    if hb.needed or hg.needed:
        for b, g in pairs():
            if hb.needed:
                hb.add(b)
            if hg.needed:
                hg.add(g)
    return d, hb.entropy(), hg.entropy()


def _as_float(x: Scalar) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def graft_row_weights_from_blocks(
    pairs: PairBlocks,
    rows: int,
    *,
    a: float = 0.4,
    c: float = 500.0,
    bins: int = 10,
    gates: str = "dual",
    global_form: str = "algorithm",
    alpha: Scalar = 1.0,
    beta: Scalar = 0.0,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """`graft_row_weights` for tensors given as a callable yielding (Wb_rows, Wg_rows) blocks in row order.

    The callable is invoked once per pass (d with min/max, then the histograms), so blocks
    may be recomputed on the fly (LoRA products). `device` places the neutral local gate.
    """
    if gates not in GATES:
        raise ValueError(f"gates={gates!r} is not one of {list(GATES)}")
    if global_form not in GLOBAL_FORMS:
        raise ValueError(f"global_form={global_form!r} is not one of {list(GLOBAL_FORMS)}")
    d, H_b, H_g = _scan(pairs, bins, need_d=gates != "global", need_h=gates != "local")
    if d is not None and d.numel() != rows:
        raise ValueError(f"blocks cover {d.numel()} rows, expected rows={rows}")
    wb64, w_glob = gate_weights(
        d, H_b, H_g, rows=rows, a=a, c=c, gates=gates, global_form=global_form, alpha=alpha, beta=beta,
        device=device,
    )
    wb = wb64.float()
    w = wb.detach()
    stats = {
        "gates": gates,
        "global_form": global_form,
        "a": float(a),
        "c": float(c),
        "bins": int(bins),
        "alpha": _as_float(alpha),
        "beta": _as_float(beta),
        "H_b": H_b,
        "H_g": H_g,
        "w_glob": float(w_glob),
        "wb_mean": float(w.mean()),
        "wb_min": float(w.min()),
        "wb_max": float(w.max()),
        "rows": int(rows),
    }
    return wb, stats


def graft_row_weights(
    Wb: torch.Tensor,
    Wg: torch.Tensor,
    *,
    a: float = 0.4,
    c: float = 500.0,
    bins: int = 10,
    gates: str = "dual",
    global_form: str = "algorithm",
    alpha: Scalar = 1.0,
    beta: Scalar = 0.0,
    block_rows: int | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Per-output-row base weight wb (M,) float32 for fusing Wb with Wg (graft weight = 1 - wb).

    1-D tensors (biases, norms) are treated as (M, 1); >2-D as (M, prod(rest)).
    Returns (wb, stats) with stats: w_glob, wb_mean/min/max, H_b, H_g (None when the
    global gate is off), alpha, beta, a, c, bins, gates, global_form, rows.
    """
    if Wb.shape != Wg.shape:
        raise ValueError(f"graft: base shape {tuple(Wb.shape)} != graft shape {tuple(Wg.shape)}")
    B2, G2 = as_rows(Wb), as_rows(Wg)
    rows, ncols = B2.shape
    step = block_rows or auto_block_rows(ncols, GATE_BLOCK_ELEMS)
    pairs = lambda: ((B2[sl], G2[sl]) for sl in row_slices(rows, step))  # noqa: E731
    return graft_row_weights_from_blocks(
        pairs, rows, a=a, c=c, bins=bins, gates=gates, global_form=global_form,
        alpha=alpha, beta=beta, device=Wb.device,
    )


# ---------------------------------------------------------------- fusion

def apply_row_weights(
    wb: torch.Tensor,
    Tb: torch.Tensor,
    Tg: torch.Tensor,
    *,
    out_dtype: torch.dtype | None = None,
    block_rows: int | None = None,
) -> torch.Tensor:
    """wb * Tb + (1 - wb) * Tg with wb (M,) broadcast along each row; Tb, Tg (M, ...) or (M,).

    Written as Tg + wb * (Tb - Tg) so identical inputs come back bit-exact. When wb
    requires grad (calibration) the result is built out of place and stays differentiable;
    otherwise it is filled row block by row block into one output buffer.
    """
    if Tb.shape != Tg.shape:
        raise ValueError(f"apply_row_weights: shapes {tuple(Tb.shape)} and {tuple(Tg.shape)} differ")
    B2, G2 = as_rows(Tb), as_rows(Tg)
    rows, ncols = B2.shape
    if wb.numel() != rows:
        raise ValueError(f"apply_row_weights: {wb.numel()} row weights for {rows} rows of shape {tuple(Tb.shape)}")
    out_dtype = out_dtype or Tb.dtype
    w = wb.reshape(-1, 1).to(device=Tb.device)
    if wb.requires_grad:
        fused = G2.float() + w.float() * (B2.float() - G2.float())
        return fused.to(out_dtype).reshape(Tb.shape)
    out = torch.empty(Tb.shape, dtype=out_dtype, device=Tb.device)
    out2 = as_rows(out)
    step = block_rows or auto_block_rows(ncols, GATE_BLOCK_ELEMS)
    buf = torch.empty((min(step, rows), ncols), dtype=torch.float32, device=Tb.device)
    for sl in row_slices(rows, step):
        blk = buf[: sl.stop - sl.start]  # (r, K)
        blk.copy_(B2[sl])
        blk.sub_(G2[sl]).mul_(w[sl]).add_(G2[sl])
        out2[sl].copy_(blk)
    return out


def graft_pair(
    Wb: torch.Tensor, Wg: torch.Tensor, *, out_dtype: torch.dtype | None = None, **kw: Any
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Fuse one pair: (wb * Wb + (1 - wb) * Wg, stats); kw as for `graft_row_weights`."""
    wb, stats = graft_row_weights(Wb, Wg, **kw)
    return apply_row_weights(wb, Wb, Wg, out_dtype=out_dtype, block_rows=kw.get("block_rows")), stats


def check_scale(scale: float) -> float:
    """`scale` as a float: finite and > 0 (the registry enforces the same on recipes)."""
    s = float(scale)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"graft parameter 'scale'={scale!r} must be a finite number above 0")
    return s


def scale_delta(
    fused: torch.Tensor, base: torch.Tensor | None, scale: float, *, out_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """base + scale * (fused - base) in float32 (`scale`, an extension: see the module docstring).

    scale == 1 returns `fused` itself (no base needed, no rounding); otherwise `base` is required.
    """
    scale = check_scale(scale)
    if scale == 1.0:
        return fused if out_dtype is None else fused.to(out_dtype)
    if base is None:
        raise ValueError(f"graft parameter 'scale'={scale} needs the base model (W = base + scale * (fused - base)); "
                         "set base: in the recipe")
    if base.shape != fused.shape:
        raise ValueError(f"graft scale: base shape {tuple(base.shape)} != fused shape {tuple(fused.shape)}")
    out = torch.lerp(base.to(fused.device, torch.float32), fused.float(), scale)  # base + scale * (fused - base)
    return out.to(out_dtype or fused.dtype)


def graft_chain(
    experts: Sequence[torch.Tensor], *, base: torch.Tensor | None = None, scale: float = 1.0, **kw: Any
) -> tuple[torch.Tensor, dict[str, Any]]:
    """F = graft(graft(E1, E2), E3) ...; intermediates stay float32, the result has E1's dtype.

    `scale` != 1 (not in the paper) returns base + scale * (F - base) and needs `base`.
    stats: the last step's stats, plus "steps" (every step's stats) when there are >2 experts,
    plus "scale" when it is not 1.
    """
    check_inputs(None, experts, None, needs_base=False, method="graft")
    scale = check_scale(scale)
    if len(experts) == 1:
        return scale_delta(experts[0].clone(), base, scale), {"steps": []}
    dtype = experts[0].dtype
    fused, steps = experts[0], []
    for i, e in enumerate(experts[1:], start=1):
        last = i == len(experts) - 1 and scale == 1.0
        fused, st = graft_pair(fused, e, out_dtype=dtype if last else torch.float32, **kw)
        steps.append(st)
        log.debug("graft step %d: w_glob=%.4f wb_mean=%.4f", i, st["w_glob"], st["wb_mean"])
    stats = dict(steps[-1])
    if len(steps) > 1:
        stats["steps"] = steps
    if scale != 1.0:
        fused = scale_delta(fused, base, scale, out_dtype=dtype)
        stats["scale"] = scale
    return fused, stats


def _merge(base, experts, weights, params, generator=None):
    p = validate_params("graft", params)
    if weights is not None and len(set(float(w) for w in weights)) > 1:
        log.debug("graft ignores expert weights %s: the gates set the mix", list(weights))
    return graft_chain(experts, base=base, **p)


register(
    Method(
        name="graft",
        merge=_merge,
        params=(
            Param("a", 0.4, "float", 0.0, 1.0, help="global gate amplitude: w_glob in 0.5 +- a/2"),
            Param("c", 500.0, "float", 0.0, 1e6, help="global gate slope on the entropy gap"),
            Param("bins", 10, "int", 2, 4096, help="histogram bins for the entropy"),
            Param("gates", "dual", "choice", choices=GATES, help="which gates are on (off = 0.5)"),
            Param("global_form", "algorithm", "choice", choices=GLOBAL_FORMS,
                  help="a/pi (Algorithm 1) or a/c (eq. 4, ~no effect at c=500)"),
            Param("alpha", 1.0, "float", -100.0, 100.0,
                  help="phi slope; its sign picks the side disagreeing rows lean to"),
            Param("beta", 0.0, "float", -100.0, 100.0, help="phi offset"),
            Param("scale", 1.0, "float", high=10.0, above=0.0, needs_base_unless=1.0,
                  help="NOT in the paper (1 = the paper's Graft): W = base + scale * (fused - base). The gates "
                       "sum to 1 per channel, so the fused delta is about half of each expert's; 2 keeps full-"
                       "strength deltas like task arithmetic. Full experts need the base when != 1"),
        ),
        paper="https://arxiv.org/abs/2506.23940",
        summary="Graft dual-gate fusion (local channel gate x global entropy gate), experts fused left to right",
        needs_base=False,
        kernels={"fuse_rows": "graft_ui.kernels.graft:fuse_rows", "lora_factors": "graft_ui.kernels.graft:lora_factors"},
        module_params=("alpha", "beta"),
        min_experts=2,
    )
)
