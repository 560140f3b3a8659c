"""Model Breadcrumbs. https://arxiv.org/abs/2312.06795

Per task vector, drop the largest `gamma` fraction of |tau| (outliers) and the smallest, keeping
a `density` fraction in between; then task arithmetic (breadcrumbs) or TIES' sign election and
sum (breadcrumbs_ties). mergekit's defaults: density 1, gamma 0.01, no normalisation, no rescale.
"""

from __future__ import annotations

from .gta import gta_method
from .registry import Param, register

GAMMA = Param("gamma", 0.01, "float", 0.0, 1.0, help="fraction of the largest |tau| dropped as outliers")

for _name, _consensus in (("breadcrumbs", False), ("breadcrumbs_ties", True)):
    register(gta_method(
        _name, sparsify="outliers", consensus=_consensus, normalize=False, rescale=False, extra=(GAMMA,),
        paper="https://arxiv.org/abs/2312.06795",
        summary="drop the top gamma and bottom |tau|, keep density; "
                + ("TIES sign election, then sum" if _consensus else "then task arithmetic"),
    ))
