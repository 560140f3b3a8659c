"""Activation analysis: per-module sensitivity, compatibility scores, figures, gate calibration.

Paper section 3.4 (DESIGN.md §2.5) and the learnable phi of section 3.1. Modules:

- `stats`: hooks and running per-module statistics (mean |a|, sparsity, variance);
- `scores`: min-max normalisation, rho', compatibility, pair scores, threshold;
- `analyze`: `analyze_experts(manifest, experts, dataset, k=...) -> AnalysisResult` (CLI, UI);
- `plots`: plotly figures (heatmaps, compatibility bars, gate maps, correlation scatter);
- `correlate`: compatibility vs fusion gain over expert pairs (Spearman);
- `calibrate`: `calibrate_phi(recipe, samples, steps=, lr=) -> (phi, loss_before, loss_after)`;
- `cli`: the `analyze` and `correlate` commands.

Nothing is imported here, so `import graft_ui.analysis` stays cheap.
"""
