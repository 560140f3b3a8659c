"""The advisor's merge previews fanned out on a real Ray head: the same rows, into the same cache."""

import pytest

from graft_ui.advisor.signals import PREVIEW_SIGNALS, collect
from graft_ui.commands import main
from graft_ui.fanout import Backend
from graft_ui.models.manifest import load_manifest

KW = dict(kinds=["lora"], methods=["task_arithmetic", "graft"], k=2, experts=["math-lora", "code-lora", "finance-lora"])


def _rows(rows):
    return sorted((r["pair"], r["method"], *(round(r[s], 5) for s in PREVIEW_SIGNALS)) for r in rows)


@pytest.fixture(scope="module")
def here(ci_zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("here")
    return out, collect(load_manifest(ci_zoo), None, out, **KW)


def test_previews_on_ray_equal_the_in_process_ones_and_fill_the_cache(ci_zoo, here, ray_address, tmp_path):
    _, local = here
    manifest = load_manifest(ci_zoo)
    seen = []
    rows = collect(manifest, None, tmp_path, **KW, backend=Backend(ray=ray_address, gpus=0), progress=seen.append)
    assert len(rows) == 3 * 2 and _rows(rows) == _rows(local)
    assert len([s for s in seen if s.endswith("previews computed")]) == 3  # one Ray task per pair
    assert len(list(tmp_path.rglob("fused/*/*.json"))) == 6 and len(list(tmp_path.rglob("weights/*.json"))) == 3
    # a rerun, in process, computes nothing: every row comes from the cache the tasks wrote
    again = collect(manifest, None, tmp_path, **KW, backend=Backend(ray="127.0.0.1:1"))  # never contacted
    assert _rows(again) == _rows(local)


def test_advise_names_workers_and_ray_and_a_missing_cluster_is_refused(ci_zoo, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["advise", "--help"])
    helptext = capsys.readouterr().out
    assert "--ray auto|ADDRESS" in helptext and "--workers" in helptext
    with pytest.raises(ValueError, match="no Ray cluster at '127.0.0.1:9'"):
        collect(load_manifest(ci_zoo), None, tmp_path, **KW, backend=Backend(ray="127.0.0.1:9"))
