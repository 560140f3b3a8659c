"""Finding a zoo's study by build fingerprint, and what the app reads from it."""

import json

from graft_ui.study.lookup import (find_study, fingerprint, fuse_warning, measured_on_this_build, pair_gain,
                                   settings_hash)

INFO = {"format": 6, "profile": "full", "seed": 1234, "settings": {"lr": 1e-3, "steps": {"math": 400}},
        "weights_hash": "0123456789abcdef"}


def _study(fp, **row):
    base = {"a": "math-lora", "b": "code-lora", "pair_score": 0.3, "gain_graft": -25.0, "gain_best": 2.0,
            "best_method": "task_arithmetic", "predicted_gain": -20.0}
    return {"zoo": {"fingerprint": fp}, "pairs": [{**base, **row}]}


def test_fingerprint_depends_on_every_setting():
    assert settings_hash(INFO["settings"]) == settings_hash(json.loads(json.dumps(INFO["settings"])))
    assert settings_hash(INFO["settings"]) != settings_hash({**INFO["settings"], "lr": 2e-3})


def test_find_study_says_whose_weights_it_measured(tmp_path):
    zoo = tmp_path / "zoo"
    (zoo / "study").mkdir(parents=True)
    (zoo / "build_info.json").write_text(json.dumps(INFO))
    stranger = tmp_path / "ci.json"
    stranger.write_text(json.dumps(_study({**fingerprint(INFO), "profile": "ci"})))
    assert find_study(zoo, [zoo / "study" / "study.json", stranger]) is None  # another profile: not used
    # same settings, other weights (e.g. the zoo built on another CPU): quoted as another build
    other = tmp_path / "committed.json"
    other.write_text(json.dumps(_study({**fingerprint(INFO), "weights_hash": "fedcba9876543210"})))
    found = find_study(zoo, [zoo / "study" / "study.json", stranger, other])
    assert found["measured_on"] == "another build" and not measured_on_this_build(found)
    assert pair_gain(found, "math-lora", "code-lora")["build"] == "another build"
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps(_study(fingerprint(INFO))))
    found = find_study(zoo, [zoo / "study" / "study.json", other, mine])  # the exact match wins
    assert found["measured_on"] == "this build" and found["pairs"][0]["gain_graft"] == -25.0
    assert "build" not in pair_gain(found, "math-lora", "code-lora")
    assert find_study(tmp_path / "not-a-zoo", [mine]) is None
    # a zoo without a weights hash (built before it was recorded) is never "this build"
    (zoo / "build_info.json").write_text(json.dumps({k: v for k, v in INFO.items() if k != "weights_hash"}))
    nohash = tmp_path / "nohash.json"
    nohash.write_text(json.dumps(_study(fingerprint({k: v for k, v in INFO.items() if k != "weights_hash"}))))
    assert find_study(zoo, [nohash])["measured_on"] == "another build"


def test_another_builds_numbers_are_never_quoted_as_this_zoos(tmp_path):
    from graft_ui.ui.study_hints import gain_cell

    mine = {**_study(None), "measured_on": "this build"}
    other = {**_study(None), "measured_on": "another build"}
    assert gain_cell(mine, "math-lora", "code-lora") == "-25.0 (measured)"
    assert gain_cell(other, "math-lora", "code-lora") == "-25.0 (measured on another build of this zoo)"
    assert gain_cell({**other, "pairs": [{**other["pairs"][0], "gain_graft": None}]}, "math-lora", "code-lora") \
        == "-20.0 (predicted on another build of this zoo)"
    text = fuse_warning(other, "math-lora", "code-lora", 0.5, 0.2)
    assert text.startswith("On another build of this zoo (other weights, not these), the fusion study measured")
    assert fuse_warning(mine, "math-lora", "code-lora", 0.5, 0.2).startswith("The fusion study measured")


def test_pair_gain_measured_or_predicted_in_either_order():
    s = _study(None)
    assert pair_gain(s, "code-lora", "math-lora")["source"] == "measured"
    s2 = _study(None, gain_graft=None)
    g = pair_gain(s2, "math-lora", "code-lora")
    assert g == {"gain": -20.0, "source": "predicted", "method": "graft"}
    assert pair_gain(s, "math-lora", "finance-lora") is None and pair_gain(None, "a", "b") is None


def test_fuse_warning_is_one_plain_sentence():
    text = fuse_warning(_study(None), "math-lora", "code-lora", 0.1, 0.2)
    assert text.startswith("The pair math-lora + code-lora scores 0.100") and text.endswith(".")
    assert "loses 25.0 points" in text and "task_arithmetic does best there: +2.0" in text
    assert not any(c in text for c in "{}[]'\"") and "None" not in text
    assert fuse_warning(_study(None, gain_graft=1.0), "math-lora", "code-lora", 0.5, 0.2) is None
    only_loss = fuse_warning(_study(None), "math-lora", "code-lora", 0.5, 0.2)
    assert only_loss.startswith("The fusion study measured")
