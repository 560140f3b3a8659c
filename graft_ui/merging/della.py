"""DELLA: drop with magnitude-ranked probabilities (MagPrune). https://arxiv.org/abs/2406.11617

Within each row, entry j of tau survives with probability density - eps + 2 eps rank_j/(K-1)
(rank by |tau|, 0 = smallest), then each task vector is scaled back to its L1 norm; della
adds TIES' sign election and the normalised disjoint mean, della_linear sums. mergekit's
defaults: density 1, epsilon 0.15, rescale on; normalize on for della only. Masks are drawn
from the run's seed: statistics match mergekit's, not the draw.
"""

from __future__ import annotations

from .gta import gta_method
from .registry import Param, register

EPSILON = Param("epsilon", 0.15, "float", 0.0, 0.5, help="spread of keep probabilities by magnitude rank")

for _name, _consensus in (("della", True), ("della_linear", False)):
    register(gta_method(
        _name, sparsify="della", consensus=_consensus, normalize=_consensus, rescale=True, extra=(EPSILON,),
        paper="https://arxiv.org/abs/2406.11617",
        summary="magnitude-ranked random drop, L1 rescale; "
                + ("TIES sign election, normalised disjoint mean" if _consensus else "then task arithmetic"),
    ))
