"""Graft (merging/graft.py) on whole checkpoints: the same gates, fewer passes, reused buffers.

- `graft_row_weights_dense`: the row weights of two same-shaped tensors with one reusable
  float32 difference buffer (d = row L1 of Wb - Wg); min/max come from `aminmax`, which
  also catches NaN/inf; entropies from kernels/entropy.py.
- `fuse_into`: (Wb - Wg) * wb + Wg in place, i.e. exactly `apply_row_weights`' arithmetic.
- `graft_lora_fast`: Graft of two LoRA deltas, the gate statistics of the dense deltas
  reduced tile by tile (kernels/lora_gates.py) and the fused factors built by `concat_lora`.

Every gate formula is the reference's (`gate_weights`). The engine finds `fuse_rows` and
`lora_factors` through Graft's registry entry (`Method.kernels`, see kernels/__init__.py).
"""

from __future__ import annotations

from typing import Any

import torch

from graft_ui.kernels.entropy import entropy_any, minmax
from graft_ui.kernels.lora_gates import gate_stats
from graft_ui.merging.graft import apply_row_weights, check_scale, gate_weights, scale_delta
from graft_ui.merging.lora import concat_lora, scale_factors


def _stats(wb: torch.Tensor, w_glob: float, H_b, H_g, rows: int, kw: dict[str, Any]) -> dict[str, Any]:
    """The stats dict of `graft_row_weights` (same keys, same values)."""
    return {
        "gates": kw.get("gates", "dual"),
        "global_form": kw.get("global_form", "algorithm"),
        "a": float(kw.get("a", 0.4)),
        "c": float(kw.get("c", 500.0)),
        "bins": int(kw.get("bins", 10)),
        "alpha": float(kw.get("alpha", 1.0)),
        "beta": float(kw.get("beta", 0.0)),
        "H_b": H_b,
        "H_g": H_g,
        "w_glob": float(w_glob),
        "wb_mean": float(wb.mean()),
        "wb_min": float(wb.min()),
        "wb_max": float(wb.max()),
        "rows": int(rows),
    }


def graft_row_weights_dense(
    Wb: torch.Tensor, Wg: torch.Tensor, diff: torch.Tensor, kw: dict[str, Any], what: tuple[str, str],
    scratch: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Row weights wb (M,) float32 and stats; leaves `diff` (float32, Wb's shape as (M, K)) = Wb - Wg.

    `diff` and the scratch it needs are the caller's reusable buffers.
    """
    gates = kw.get("gates", "dual")
    bins = int(kw.get("bins", 10))
    B2 = Wb.reshape(Wb.shape[0], -1) if Wb.dim() > 1 else Wb.reshape(-1, 1)
    G2 = Wg.reshape(B2.shape)
    rows = B2.shape[0]
    lo_b, hi_b = minmax(B2, what[0])
    lo_g, hi_g = minmax(G2, what[1])
    diff.copy_(B2)
    if G2.dtype == torch.float32:
        diff.sub_(G2)
    else:  # a mixed-dtype sub_ is ~7x slower than converting once into the scratch
        g32 = G2.float() if scratch is None else scratch[: G2.numel()].view(G2.shape).copy_(G2)
        diff.sub_(g32)
    d = None
    if gates != "global":
        # float32 accumulation (float64 reductions are ~7x slower here); row sums differ from
        # the float64 reference by ~1e-7 relative, far below anything the gates resolve
        d = torch.linalg.vector_norm(diff, ord=1, dim=1).double()
    H_b = H_g = None
    if gates != "local":
        H_b = entropy_any(B2, bins, lo_b, hi_b, scratch)
        H_g = entropy_any(G2, bins, lo_g, hi_g, scratch)
    wb64, w_glob = gate_weights(
        d, H_b, H_g, rows=rows, a=kw.get("a", 0.4), c=kw.get("c", 500.0), gates=gates,
        global_form=kw.get("global_form", "algorithm"), alpha=kw.get("alpha", 1.0), beta=kw.get("beta", 0.0),
    )
    wb = wb64.float()
    return wb, _stats(wb, w_glob, H_b, H_g, rows, kw)


def fuse_into(diff: torch.Tensor, wb: torch.Tensor, Wg: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """diff = (Wb - Wg) -> (Wb - Wg) * wb + Wg, in place: `apply_row_weights`' arithmetic.

    `scratch` (float32, >= Wg.numel()) takes a float32 copy of a 16-bit Wg first: the same
    values, without the slow mixed-dtype add.
    """
    G2 = Wg.reshape(diff.shape)
    if G2.dtype != torch.float32:
        G2 = G2.float() if scratch is None else scratch[: G2.numel()].view(G2.shape).copy_(G2)
    return diff.mul_(wb.to(diff.device).reshape(-1, 1)).add_(G2)



def graft_lora_fast(
    Bb: torch.Tensor, Ab: torch.Tensor, sb: float, Bg: torch.Tensor, Ag: torch.Tensor, sg: float,
    kw: dict[str, Any],
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """`graft_lora` with the gate statistics of the dense deltas reduced tile by tile
    (kernels/lora_gates.py: the C kernel, else its torch reference); no dense delta is kept."""
    gates = kw.get("gates", "dual")
    gs = gate_stats(Bb, Ab, sb, Bg, Ag, sg, int(kw.get("bins", 10)), histogram=gates != "local")
    H_b, H_g = gs.entropies() if gates != "local" else (None, None)
    wb64, w_glob = gate_weights(
        gs.d if gates != "global" else None, H_b, H_g, rows=Bb.shape[0], a=kw.get("a", 0.4), c=kw.get("c", 500.0),
        gates=gates, global_form=kw.get("global_form", "algorithm"), alpha=kw.get("alpha", 1.0),
        beta=kw.get("beta", 0.0),
    )
    wb = wb64.float()
    B_cat, A_cat = concat_lora([Bb, Bg], [Ab, Ag], [sb, sg], [wb, 1.0 - wb])
    stats = _stats(wb, w_glob, H_b, H_g, Bb.shape[0], kw)
    stats["rank"] = int(A_cat.shape[0])
    return B_cat, A_cat, stats


# ---------------------------------------------------------------------------- engine hooks

def fuse_rows(ws, bs, params: dict[str, Any], ctx, what: list[str], base=None):
    """Left-to-right Graft of one full-weight module: the weight through the streaming
    kernel, the bias (if any) with the same row gates. ws are unchecked (minmax checks them);
    returns (weight in ctx.out_dtype, bias or None, stats). With params["scale"] != 1 (not in
    the paper, merging/graft.py) `base` = (weight, bias | None) of the backbone: W = base +
    scale * (fused - base), weight and bias alike."""
    scale = check_scale(params.get("scale", 1.0))
    shape = (ws[0].shape[0], ws[0][0].numel())
    fw, fb, steps = ws[0], (bs[0] if bs else None), []
    for i in range(1, len(ws)):
        last = i == len(ws) - 1
        diff = ctx.scratch(f"diff{i % 2}", shape)  # alternate: the previous result is the next input
        wb, st = graft_row_weights_dense(
            fw, ws[i], diff, params, (what[0] if i == 1 else "the partial fusion", what[i]),
            scratch=ctx.scratch("g32", (diff.numel(),)),
        )
        if bs:
            out = ctx.out_dtype if last and scale == 1.0 else torch.float32
            fb = apply_row_weights(wb, fb, bs[i], out_dtype=out)
        fw = fuse_into(diff, wb, ws[i], ctx.scratch("g32", (diff.numel(),)))  # float32 (M, K)
        steps.append(st)
    stats = dict(steps[-1])
    if len(steps) > 1:
        stats["steps"] = steps
    if scale != 1.0:
        if base is None:
            raise ValueError(f"graft parameter 'scale'={scale} needs the base model's tensor; fuse_rows got none")
        fw = scale_delta(fw, base[0].reshape(fw.shape), scale)
        if bs:
            fb = scale_delta(fb, base[1], scale, out_dtype=ctx.out_dtype)
        stats["scale"] = scale
    if fw.dtype != ctx.out_dtype:
        fw = ctx.scratch("out", fw.shape, ctx.out_dtype).copy_(fw)
    return fw.reshape(ws[0].shape), fb, stats


def lora_factors(read, params: dict[str, Any], ctx):
    """Left-to-right Graft of LoRA experts [(B, A, scale)], exact at the sum of their ranks
    (DESIGN.md §2.4): (B, A, stats) with the scales, and Graft's `scale` on the fused delta,
    folded into B."""
    B, A, s0 = read[0]
    B, steps = B * s0, []
    for Bg, Ag, sg in read[1:]:
        B, A, st = graft_lora_fast(B, A, 1.0, Bg, Ag, sg, params)
        steps.append(st)
    st = dict(steps[-1])
    if len(steps) > 1:
        st["steps"] = steps
    B, A = scale_factors(B, A, params.get("scale", 1.0), st)  # Graft's scale extension (merging/graft.py)
    return B, A, st
