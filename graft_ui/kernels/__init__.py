"""Fast paths of merge methods on whole checkpoints: the same numbers as graft_ui.merging, fewer passes.

One module per method family, named after the maths it speeds up (merging/graft.py ->
kernels/graft.py, merging/ties.py -> kernels/ties.py and kernels/ties_lora.py; the shared
histogram entropy in kernels/entropy.py). They may use numpy, which merging/ does not, and
tests/kernels/ checks each against its reference.

The merge engine never names a method: it asks the method's registry entry
(`Method.kernel(hook)`, from `Method.kernels = {hook: "module:function"}`) for these hooks,
each optional:

- `fuse_rows(ws, bs, params, ctx, what, base=None) -> (weight, bias | None, stats)`: one
  full-weight module (weight and bias together) from the experts' weights `ws`, left to
  right. The weights arrive unchecked: the hook checks them for NaN/inf (`what[i]` names
  expert i). `base` is the backbone's (weight, bias | None) when `Method.uses_base(params)`.
- `fuse_tensor(base, experts, weights, params, ctx) -> (merged, stats) | None`: one
  full-weight tensor; None falls back to `Method.merge`.
- `lora_factors(read, params, ctx) -> (B, A, stats)`: LoRA experts [(B, A, scale)] fused
  exactly as factors (no dense delta kept). Runs on a worker thread, one module per thread
  (merge_job.SingleThreaded), so it touches no shared state (`ctx.thread_scratch` only).
- `lora_tiled(shape, n_experts, params, generator) -> run`: a CPU LoRA merge of the dense
  deltas that never builds them whole. Called in plan order (draw from `generator` here);
  `run(factors, weights, out, sketch, buffer) -> (Y | None, ||out||_F^2, stats)` then runs
  on a worker thread.

`params` are the recipe's validated parameters with the module's per-module overrides
(`Method.module_params`, e.g. Graft's learned phi); `ctx` offers `scratch(role, shape,
dtype)`, `out_dtype` and `device`.
"""
