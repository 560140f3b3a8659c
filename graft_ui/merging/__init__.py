"""Pure-tensor merge maths (torch only). Importing the package registers every method.

Methods: graft (the paper), average, task_arithmetic, ties, dare_linear, dare_ties,
consensus (TALL masks), mmer, and mergekit's family: linear, slerp, nuslerp, multislerp,
karcher, model_stock, breadcrumbs(_ties), della(_linear), sce, nearswap, arcee_fusion, ram,
ramplus_tl. Each merges ONE tensor: see `registry.Method`.
"""

from . import (  # noqa: F401  (register)
    arcee_fusion, average, breadcrumbs, dare, della, graft, karcher, linear, mmer, model_stock, multislerp,
    nearswap, nuslerp, ram, sce, slerp, tall, task_arithmetic, ties,
)
from .average import average as average_merge
from .dare import dare_linear, dare_ties
from .graft import (
    apply_row_weights,
    dual_gate,
    entropy,
    entropy_blocks,
    gate_weights,
    global_gate,
    graft_chain,
    graft_pair,
    graft_row_weights,
    graft_row_weights_from_blocks,
    local_gate,
    row_l1_distance,
)
from .lora import (
    compress_lowrank,
    concat_lora,
    dense_to_lowrank,
    graft_lora,
    graft_lora_chain,
    graft_lora_factor,
    lora_delta_blocks,
)
from .mmer import mmer_expert_view, mmer_merge
from .registry import METHODS, Method, Param, describe, get_method, register, validate_params
from .tall import consensus, tall_masks
from .task_arithmetic import task_arithmetic as task_arithmetic_merge
from .ties import ties_merge

__all__ = [
    "METHODS", "Method", "Param", "describe", "get_method", "register", "validate_params",
    "entropy", "entropy_blocks", "row_l1_distance", "local_gate", "global_gate", "dual_gate", "gate_weights",
    "graft_row_weights", "graft_row_weights_from_blocks", "apply_row_weights", "graft_pair", "graft_chain",
    "graft_lora", "graft_lora_chain", "graft_lora_factor", "concat_lora", "lora_delta_blocks",
    "compress_lowrank", "dense_to_lowrank",
    "average_merge", "task_arithmetic_merge", "ties_merge", "dare_linear", "dare_ties",
    "tall_masks", "consensus", "mmer_merge", "mmer_expert_view",
]
