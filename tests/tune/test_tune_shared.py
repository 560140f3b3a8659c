"""A tuning study shared by several `tune` processes: the suite's PostgreSQL, a journal file, a killed worker."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tests._postgres import create_database, drop_database

REPO = Path(__file__).resolve().parents[2]
RECIPE = {"method": "graft", "experts": [{"path": "math-lora", "name": "math-lora"},
                                         {"path": "code-lora", "name": "code-lora"}]}


@pytest.fixture
def pg_storage(pg_server):
    url = create_database(pg_server, "tune")
    yield url
    drop_database(url)


# A trial on the ci zoo takes a tenth of a second, so on a fast machine the worker that loaded its
# models first ran every trial before the other joined, and a killed worker had no trial running.
# The workers here fuse a second slower, as a trial on real models takes minutes, and the first
# fusion of each waits until `workers` of them have reached theirs (marker files in `barrier`):
# the patch wraps the fusion step only, so the search, the storage and the heartbeats are real.
SLOW_WORKER = """import os, sys, time
from pathlib import Path
from graft_ui.tune import tuner
fused, barrier, workers = tuner.Tuner._fused, Path(sys.argv[1]), int(sys.argv[2])
def slow(self, *args):
    mark = barrier / str(os.getpid())
    if not mark.exists():
        mark.touch()
        deadline = time.monotonic() + 300
        while len(list(barrier.iterdir())) < workers and time.monotonic() < deadline:
            time.sleep(0.1)
    time.sleep(1.0)
    return fused(self, *args)
tuner.Tuner._fused = slow
from graft_ui.commands import main
sys.exit(main(sys.argv[3:]))
"""


def worker(zoo, tmp_path, storage: str, name: str, trials: int, *extra: str, workers: int = 1) -> subprocess.Popen:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    barrier = tmp_path / f"barrier-{name}-{workers}"
    barrier.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-c", SLOW_WORKER, str(barrier), str(workers),
           "tune", str(recipe), "--zoo", str(zoo), "--dev-domains", "math",
           "--dev-size", "2", "--trials", str(trials), "--budget", "600", "--storage", storage,
           "--study-name", name, "--heartbeat", "1", *extra]
    return subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(p: subprocess.Popen, timeout: float = 400) -> str:
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out[-3000:]
    return out


def test_two_workers_fill_one_postgresql_study(ci_zoo, tmp_path, pg_storage):
    a = worker(ci_zoo, tmp_path, pg_storage, "shared", 5, workers=2)
    b = worker(ci_zoo, tmp_path, pg_storage, "shared", 5, workers=2)
    outs = [finish(a), finish(b)]
    assert sum("created shared study 'shared'" in o for o in outs) == 1  # the other joined it
    study = optuna.load_study(study_name="shared", storage=pg_storage)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    # the storage numbers trials: none lost, none run twice; a trial asked once the study was full is pruned unrun
    assert sorted(t.number for t in done) == [0, 1, 2, 3, 4]
    assert all(t.state == TrialState.PRUNED and "dev" not in t.user_attrs for t in study.trials if t.number >= 5)
    assert len({t.user_attrs["worker"] for t in done}) == 2  # both workers ran trials
    assert [t.number for t in done if t.user_attrs.get("default")] == [0] and done[0].params["a"] == 0.4
    assert all(set(t.user_attrs["dev"]) == {"math"} and t.value == t.user_attrs["dev"]["math"] for t in done)
    assert len({json.dumps(t.params, sort_keys=True) for t in done}) == 5
    assert all("tune report --storage" in o for o in outs) and not list(tmp_path.glob("**/tune.json"))


def test_a_killed_workers_trial_is_failed_and_the_study_goes_on(ci_zoo, tmp_path, pg_storage):
    from graft_ui.commands import main

    doomed = worker(ci_zoo, tmp_path, pg_storage, "killed", 3)
    study = None
    # one storage for the polling: each load_study(URL) opens a connection pool of its own, and one
    # per poll until the worker creates the study used up the server's connections on a slow CPU
    storage = optuna.storages.RDBStorage(pg_storage)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and doomed.poll() is None:
        try:
            study = study or optuna.load_study(study_name="killed", storage=storage)
            running = study.get_trials(states=(TrialState.RUNNING,))
        except KeyError:  # not created yet
            running = []
        if running and running[0].number >= 1 and "worker" in running[0].user_attrs:
            break  # past the defaults (trial 0), so the report still has its reference row
        time.sleep(0.2)
    else:
        pytest.fail(f"the worker never started a trial: {doomed.communicate()[0][-2000:]}")
    lost = running[0].number
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(30)
    storage.engine.dispose()
    # the next worker fails the silent trial (2 heartbeats) before its own first trial, then fills the study
    finish(worker(ci_zoo, tmp_path, pg_storage, "killed", 3))
    trials = {t.number: t for t in optuna.load_study(study_name="killed", storage=pg_storage).trials}
    assert trials[lost].state == TrialState.FAIL and TrialState.RUNNING not in {t.state for t in trials.values()}
    assert sorted(n for n, t in trials.items() if t.state in (TrialState.COMPLETE, TrialState.FAIL)) == [0, 1, 2]

    # the held-out report runs once, from what the study stores
    out = tmp_path / "report"
    assert main(["tune", "report", "--storage", pg_storage, "--study-name", "killed", "--out", str(out),
                 "--zoo", str(ci_zoo), "--limit", "2", "--top", "1"]) == 0
    res = json.loads((out / "tune.json").read_text())
    assert [t["number"] for t in res["trials"]] == [0, 1, 2]
    assert next(t for t in res["trials"] if t["number"] == lost)["error"].startswith("its worker stopped")
    assert res["study"]["name"] == "killed" and len(res["study"]["workers"]) == 2
    assert {r["role"] for r in res["heldout"]["rows"]} >= {"expert", "default"}


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the test asks a trial by hand, outside optimize()
def test_a_journal_file_fails_a_silent_trial(tmp_path):
    """The journal storage has no heartbeat of its own: tune.shared gives it one."""
    from graft_ui.tune import shared

    storage = shared.open_storage(str(tmp_path / "tune.journal"), heartbeat_s=1)
    study, created = shared.join_study(storage, "j", {"method": "graft"}, seed=0, defaults={"a": 0.4})
    trial = study.ask()
    assert created and trial.number == 0 and trial.user_attrs == {"default": True}
    storage.record_heartbeat(trial._trial_id)
    shared.fail_stale(study)
    assert study.trials[0].state == TrialState.RUNNING  # fresh heartbeat
    time.sleep(2.5)
    again = shared.open_storage(str(tmp_path / "tune.journal"), heartbeat_s=1)  # another process's view
    joined, created = shared.join_study(again, "j", {"method": "graft"}, seed=0)
    assert not created
    shared.fail_stale(joined)
    assert joined.trials[0].state == TrialState.FAIL


def test_a_worker_with_another_search_is_refused(tmp_path):
    from graft_ui.tune import shared

    path = str(tmp_path / "tune.journal")
    shared.join_study(shared.open_storage(path), "s", {"method": "graft", "trials": 40}, seed=0)
    with pytest.raises(ValueError, match=r"trials differ \(it has trials=40\)"):
        shared.join_study(shared.open_storage(path), "s", {"method": "graft", "trials": 10}, seed=0)
    with pytest.raises(ValueError, match="does not exist"):
        shared.open_storage(str(tmp_path / "nowhere" / "tune.journal"))
    assert shared.redact("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_the_app_draws_a_shared_study_from_its_snapshot(tmp_path):
    from graft_ui.tune import shared
    from graft_ui.ui.tune import shared_figure, shared_progress

    path = str(tmp_path / "tune.journal")
    spec = {"dims": [{"name": "a"}], "dev_domains": ["math", "code"], "trials": 4}
    study, _ = shared.join_study(shared.open_storage(path), "w", spec, seed=0, defaults={"a": 0.4})
    for value, dev in ((50.0, {"math": 60.0, "code": 40.0}), (70.0, {"math": 80.0, "code": 60.0})):
        t = study.ask({"a": optuna.distributions.FloatDistribution(0, 1)})
        t.set_user_attr("dev", dev)
        t.set_user_attr("worker", "host-a:1")
        study.tell(t, value)
    snap = shared.snapshot(path, "w")
    assert [t["number"] for t in snap["trials"]] == [0, 1] and snap["best"] == 1 and snap["total"] == 4
    assert snap["trials"][0]["default"] and snap["workers"] == 1 and snap["domains"] == ["math", "code"]
    assert "trial <b>2</b> / 4 finished" in shared_progress(snap)
    fig = shared_figure(snap)
    assert [tr.name for tr in fig.data][:2] == ["trials", "Pareto front"] and list(fig.data[0].x) == [60.0, 80.0]
    with pytest.raises(ValueError, match="no journal file"):
        shared.snapshot(str(tmp_path / "missing.journal"), "w")
