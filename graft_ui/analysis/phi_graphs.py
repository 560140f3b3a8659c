"""Graft's fused modules as differentiable functions of phi = (alpha, beta), for calibration.

The gate inputs (row distances d, entropies) do not depend on phi and are computed once,
exactly as `graft_ui.merging` computes them; the row weights wb = dual_gate(w_glob,
sigmoid(phi(d))) and what they mix are rebuilt from (alpha, beta) at every step:

- `FullGraph`: a full-weight linear's fused weight (and bias) `wb * W1 + (1 - wb) * W2`,
  substituted into the first expert's model by the calibrator;
- `LoraGraph`: the per-expert row coefficients of the fused adapter
  [diag(coef_i) s_i B_i]_i @ [A_i]_i, applied as a forward hook's delta.

With more than two experts (F = graft(graft(E1, E2), E3) ...) later steps' gate inputs
depend on the earlier fusion and are recomputed (detached). Graft's `scale` (not in the
paper, merging/graft.py) multiplies the fused delta after the chain.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from graft_ui.merging.graft import apply_row_weights, entropy_blocks, gate_weights, row_l1_distance, scale_delta
from graft_ui.merging.lora import lora_delta_blocks
from graft_ui.merging.steps import as_rows, auto_block_rows, row_slices

GATE_BLOCK_ELEMS = 1 << 22  # as graft.py: row blocks for the gate scans


def _blocks_of(W: torch.Tensor):
    W2 = as_rows(W)
    step = auto_block_rows(W2.shape[1], GATE_BLOCK_ELEMS)
    return lambda: (W2[sl] for sl in row_slices(W2.shape[0], step))


class ModuleGraph:
    """One fused module: expert tensors, cached gate inputs, and the differentiable row weights."""

    def __init__(self, name: str, rows: int, params: Mapping[str, Any]):
        self.name = name
        self.rows = rows
        self.params = params
        self.cache: list[tuple[Any, Any, Any] | None] = []

    def gate_inputs(self, pairs, step: int, cacheable: bool):
        if cacheable and step < len(self.cache) and self.cache[step] is not None:
            return self.cache[step]
        gates = self.params["gates"]
        d = row_l1_distance(pairs) if gates != "global" else None
        if gates != "local":
            H_b = entropy_blocks(lambda: (b for b, _ in pairs()), self.params["bins"])
            H_g = entropy_blocks(lambda: (g for _, g in pairs()), self.params["bins"])
        else:
            H_b = H_g = None
        out = (d, H_b, H_g)
        if cacheable:
            while len(self.cache) <= step:
                self.cache.append(None)
            self.cache[step] = out
        return out

    def wb(self, gate_in, alpha, beta) -> torch.Tensor:
        d, H_b, H_g = gate_in
        p = self.params
        wb64, _ = gate_weights(d, H_b, H_g, rows=self.rows, a=p["a"], c=p["c"], gates=p["gates"],
                               global_form=p["global_form"], alpha=alpha, beta=beta)
        return wb64.float()  # graft_row_weights returns float32 row weights


class FullGraph(ModuleGraph):
    """Fused weight (and bias) of one linear of full experts as a function of (alpha, beta).

    `base` (weight, bias | None) is the backbone's, needed only for Graft's `scale` != 1."""

    def __init__(self, name, weights: list[torch.Tensor], biases: list[torch.Tensor] | None, params, base=None):
        super().__init__(name, as_rows(weights[0]).shape[0], params)
        self.weights, self.biases, self.base = weights, biases, base

    def fused(self, alpha, beta) -> dict[str, torch.Tensor]:
        W = self.weights[0]
        b = self.biases[0] if self.biases else None
        k = len(self.weights)
        for j in range(1, k):
            Wd = W.detach()
            pairs = lambda Wd=Wd, j=j: zip(_blocks_of(Wd)(), _blocks_of(self.weights[j])())  # noqa: E731
            wb = self.wb(self.gate_inputs(pairs, j, cacheable=(j == 1)), alpha, beta)
            last = j == k - 1
            out_dtype = self.weights[0].dtype if last else torch.float32
            W = apply_row_weights(wb, W, self.weights[j], out_dtype=out_dtype)
            if b is not None:
                b = apply_row_weights(wb, b, self.biases[j], out_dtype=out_dtype)
        scale = self.params["scale"]
        if scale != 1.0:  # Graft's extension (merging/graft.py): base + scale * (fused - base)
            W = scale_delta(W, self.base[0], scale)
            if b is not None:
                b = scale_delta(b, self.base[1], scale)
        out = {f"{self.name}.weight": W}
        if b is not None:
            out[f"{self.name}.bias"] = b
        return out


class LoraGraph(ModuleGraph):
    """Per-expert output-row coefficients of the fused adapter as a function of (alpha, beta).

    For E1..Ek fused left to right with row weights wb_2..wb_k, the fused delta is
    sum_i coef_i * (s_i B_i A_i) with coef_1 = prod_j wb_j, coef_i = (1 - wb_i) prod_{j>i} wb_j,
    i.e. exactly the concatenated adapter [diag(coef_i) s_i B_i]_i @ [A_i]_i.
    """

    def __init__(self, name, factors: list[tuple[torch.Tensor, torch.Tensor, float]], params):
        super().__init__(name, factors[0][0].shape[0], params)
        self.factors = factors
        self.A_cat = torch.cat([A for _, A, _ in factors], 0)  # (sum r, N)
        self.ranks = [A.shape[0] for _, A, _ in factors]
        self.sB = [B * s for B, _, s in factors]  # (M, r_i), scale folded in
        self.coefs: list[torch.Tensor] | None = None

    def _fused_factors(self, coefs) -> tuple[torch.Tensor, torch.Tensor]:
        B = torch.cat([c.detach().reshape(-1, 1) * sB for c, sB in zip(coefs, self.sB)], 1)
        return B, self.A_cat[: B.shape[1]]

    def compute(self, alpha, beta) -> list[torch.Tensor]:
        coefs: list[torch.Tensor] = [torch.ones(self.rows, device=self.A_cat.device)]
        k = len(self.factors)
        for j in range(1, k):
            # gate inputs on the deltas: the fused adapter so far (scale 1) vs expert j
            Bf, Af = self._fused_factors(coefs) if j > 1 else (self.sB[0], self.factors[0][1])
            Bj, Aj, sj = self.factors[j]
            pairs = lambda Bf=Bf, Af=Af, Bj=Bj, Aj=Aj, sj=sj: zip(  # noqa: E731
                lora_delta_blocks(Bf, Af, 1.0), lora_delta_blocks(Bj, Aj, sj))
            wb = self.wb(self.gate_inputs(pairs, j, cacheable=(j == 1)), alpha, beta)
            coefs = [c * wb for c in coefs] + [1.0 - wb]
        if self.params["scale"] != 1.0:  # Graft's extension: the fused delta times scale, after the chain
            coefs = [c * self.params["scale"] for c in coefs]
        self.coefs = coefs
        return coefs

    def fused_adapter(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B_cat (M, sum r), A_cat) of the current coefficients, scale 1."""
        return self._fused_factors(self.coefs)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        h = x.to(self.A_cat.dtype) @ self.A_cat.T  # (..., sum r)
        out = None
        start = 0
        for c, sB, r in zip(self.coefs, self.sB, self.ranks):
            part = (h[..., start:start + r] @ sB.T) * c  # (..., M), row weights broadcast on channels
            out = part if out is None else out + part
            start += r
        return out
