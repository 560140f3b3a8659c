"""A cheap weight-space predictor: how the two experts' task vectors relate.

The task vector of an expert is its change to the base in the fused modules (the
language model's q, k, v, o, gate, up, down projections):

    LoRA:  tau[m] = scale * B[m] @ A[m]            (per module, built one module at a time)
    full:  tau[m] = W_expert[m] - W_base[m]

Over all modules both experts change (concatenated):

    cosine          = <tau_a, tau_b> / (|tau_a| |tau_b|)
    sign_agreement  = fraction of entries where both are nonzero and have the same sign

Intuition (TIES, "Demystifying Mergeability"): deltas that point the same way interfere
less, so a pair should lose less when fused. It needs no data and no forward pass.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from graft_ui.models.checkpoint import Checkpoint
from graft_ui.models.keys import parse_module
from graft_ui.models.lora_io import LoraAdapter
from graft_ui.models.manifest import Manifest, ModelEntry
from graft_ui.recipe import ALL_MODULES

log = logging.getLogger(__name__)


class _Acc:
    """Running sums of the two task vectors' dot product, squared norms and sign agreement."""

    def __init__(self):
        self.dot = self.na = self.nb = 0.0
        self.agree = self.both = 0
        self.modules = 0

    def add(self, ta: torch.Tensor, tb: torch.Tensor) -> None:
        ta, tb = ta.double().flatten(), tb.double().flatten()
        self.dot += float(ta @ tb)
        self.na += float(ta @ ta)
        self.nb += float(tb @ tb)
        sa, sb = torch.sign(ta), torch.sign(tb)
        nz = (sa != 0) & (sb != 0)
        self.both += int(nz.sum())
        self.agree += int(((sa == sb) & nz).sum())
        self.modules += 1

    def result(self) -> dict:
        denom = math.sqrt(self.na) * math.sqrt(self.nb)
        return {"cosine": self.dot / denom if denom > 0 else None,
                "sign_agreement": self.agree / self.both if self.both else None,
                "norm_a": math.sqrt(self.na), "norm_b": math.sqrt(self.nb), "modules": self.modules}


def _lora_similarity(a: ModelEntry, b: ModelEntry) -> dict:
    ad_a, ad_b = LoraAdapter(a.path), LoraAdapter(b.path)
    try:
        acc = _Acc()
        for key, mod_a in ad_a.modules.items():
            mod_b = ad_b.modules.get(key)
            if mod_b is None or getattr(key, "module", None) not in ALL_MODULES:
                continue
            Ba, Aa = ad_a.read(mod_a)
            Bb, Ab = ad_b.read(mod_b)
            acc.add((Ba @ Aa) * mod_a.scale, (Bb @ Ab) * mod_b.scale)
        return acc.result()
    finally:
        ad_a.close()
        ad_b.close()


def _full_similarity(base: ModelEntry, a: ModelEntry, b: ModelEntry) -> dict:
    cks = [Checkpoint(e.path) for e in (base, a, b)]
    try:
        acc = _Acc()
        for name in cks[1].names:
            if not name.endswith(".weight") or name not in cks[0] or name not in cks[2]:
                continue
            key = parse_module(name[: -len(".weight")])
            if key is None or key.tower != "language" or key.module not in ALL_MODULES:
                continue
            w0 = cks[0].read(name).clone()  # reads may share a buffer: copy before the next one
            acc.add(cks[1].read(name).clone() - w0, cks[2].read(name).clone() - w0)
        return acc.result()
    finally:
        for c in cks:
            c.close()


def task_vector_similarity(manifest: Manifest, a: ModelEntry, b: ModelEntry) -> dict:
    """{cosine, sign_agreement, norm_a, norm_b, modules} of the two experts' task vectors."""
    if a.kind != b.kind:
        raise ValueError(f"task vectors of {a.name!r} ({a.kind}) and {b.name!r} ({b.kind}) are not comparable")
    if a.kind == "lora":
        res = _lora_similarity(a, b)
    else:
        if not Path(manifest.base.path).is_dir():
            raise FileNotFoundError(f"full-expert task vectors need the base checkpoint locally; {manifest.base.path!r} is not a folder")
        res = _full_similarity(manifest.base, a, b)
    if not res["modules"]:
        raise ValueError(f"experts {a.name!r} and {b.name!r} share no fused module to compare")
    log.info("%s + %s: task-vector cosine %s, sign agreement %s over %d modules", a.name, b.name,
             _fmt(res["cosine"]), _fmt(res["sign_agreement"]), res["modules"])
    return res


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"
