"""`python -m graft_ui forecast`'s reading of a study's split-half reliability."""

import json

from graft_ui.commands.forecast import reliability


def test_per_method_reliability_is_read_and_the_pooled_one_needs_the_items(tmp_path):
    study = {"reliability": {"lora": {"ties": {"reliability": 0.9}, "graft": {"reliability": 0.8},
                                      "dare_ties": {"reliability": 0.1}}}}
    path = tmp_path / "study.json"
    path.write_text(json.dumps(study))
    out = reliability(study, path, ["ties", "graft", "average"], seed=0)
    assert out == {"lora": {"per_method": {"ties": 0.9, "graft": 0.8, "average": None}, "kept_min": None}}
    assert reliability({}, path, ["ties"], seed=0) is None  # a study without per-item results: not measured
