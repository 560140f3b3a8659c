"""The zoo build's persistent worker processes (graft_ui/zoo/pool.py)."""

import pytest


def test_a_failed_task_names_its_worker_and_error(tmp_path):
    from graft_ui.zoo.pool import WorkerFailed, WorkerPool

    missing = tmp_path / "nowhere" / "manifest.yaml"
    with pytest.raises(WorkerFailed, match=r"(?s)exit \d+\) during task eval base.*nowhere"):
        with WorkerPool(1) as pool:
            pool.map([dict(job="eval", names=["base"], manifest=str(missing), kwargs={}, label="eval base")])


def test_a_pool_needs_a_process():
    from graft_ui.zoo.pool import WorkerPool

    with pytest.raises(ValueError, match="size=0"):
        WorkerPool(0)
