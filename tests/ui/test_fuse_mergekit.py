"""The Fuse tab takes a pasted mergekit config: it loads into the form (its gradient as the
per-layer curve) and fuses, the stats showing the value each layer used (gradio_client)."""

MERGEKIT = """\
merge_method: ties
base_model: base
models:
  - model: math-full
    parameters: {weight: 0.6}
  - model: code-full
    parameters: {weight: 0.4}
parameters:
  density:
    - filter: mlp
      value: [0.2, 0.8]
    - value: 0.5
  normalize: true
dtype: float32
"""


def test_a_pasted_mergekit_config_loads_and_fuses(client):
    out = client.predict(MERGEKIT, api_name="/load_recipe")
    method, experts = out[:2]
    assert method == "ties" and experts == ["math-full", "code-full"]
    assert ["density", "0.2, 0.8", "mlp"] == list(out[12:15])  # the gradient, as the per-layer curve
    assert "Loaded a **ties** recipe" in out[-1]
    out = client.predict(MERGEKIT, "ties-from-mergekit", api_name="/run_fusion")
    summary, guide, recipe_yaml = out[0], out[2], out[3]
    assert "ties-from-mergekit" in summary and "all_tensors: true" in recipe_yaml
    assert "**density** used per layer: 0: 0.2–0.5" in guide  # layer 0: MLPs 0.2, the rest 0.5
