"""`python -m hrm_bench.suites.parallel`: a grid of hrm_bench.run jobs at once, one runs.csv."""

from __future__ import annotations

import csv
import sys

import pytest

from hrm_bench.suites import parallel
from tests.bench.test_hybrid_suite import TINY


def test_job_names_come_from_the_jobs_own_values():
    assert parallel.job_name("suite.variants=[lora]", 2) == "lora-seed2"
    assert parallel.job_name("suite.variants=[hrm_grb] ++suite.train.lr=1e-3", 0) == "hrm_grb-1e-3-seed0"
    jobs = parallel.plan_jobs(["suite.variants=[lora]", "suite.variants=[hrm_grb]"], [0, 1], ["suite=hybrid"], parallel.Path("logs"))
    assert [j.name for j in jobs] == ["lora-seed0", "lora-seed1", "hrm_grb-seed0", "hrm_grb-seed1"]  # each entry over every seed, in order
    assert jobs[1].argv[-2:] == ["seed=1", "hydra.run.dir=logs/hydra/lora-seed1"]


def test_two_tiny_hybrid_jobs_run_at_once_and_share_one_runs_csv(tmp_path):
    common = ["suite=hybrid", "hardware=cpu", f"results_dir={tmp_path / 'results'}", f"checkpoint_root={tmp_path / 'ckpt'}", *TINY[:-1]]
    rc = parallel.main(["--jobs", "2", "--seeds", "0", "1", "--each", "suite.variants=[hrm_grb]", "--log-dir", str(tmp_path / "logs"), "--", *common])
    assert rc == 0, [p.read_text()[-2000:] for p in (tmp_path / "logs").glob("*.log")]
    rows = list(csv.DictReader((tmp_path / "results" / "runs.csv").open()))
    assert sorted((r["variant"], r["seed"]) for r in rows) == [("hrm_grb", "0"), ("hrm_grb", "1")]
    assert (tmp_path / "logs" / "hrm_grb-seed1.log").read_text().startswith("$ -m hrm_bench.run suite=hybrid")


def test_the_deadline_stops_running_jobs_and_starts_no_more(tmp_path):
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    jobs = [parallel.Job(f"j{i}", sleeper, tmp_path / f"j{i}.log") for i in range(3)]
    parallel.run_jobs(jobs, parallel=2, threads=1, start_until=0.5, deadline=1.0, tick=0.1)
    assert [j.status for j in jobs] == ["stopped", "stopped", "not started"]
    assert all(j.process.returncode != 0 for j in jobs[:2])


def test_a_job_that_ignores_sigterm_is_killed_after_the_grace(tmp_path):
    stubborn = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); time.sleep(60)"]
    job = parallel.Job("stubborn", stubborn, tmp_path / "stubborn.log")
    parallel.run_jobs([job], parallel=1, threads=1, start_until=0.5, deadline=1.0, tick=0.1, grace=1.0)
    assert job.status == "stopped" and job.process.returncode == -9


def test_a_budget_key_gives_each_job_the_time_left_before_the_deadline(tmp_path):
    """The first job starts at once (the whole budget), the second only once the first has ended."""
    quick = [sys.executable, "-c", "import time; time.sleep(0.5)"]
    jobs = [parallel.Job(f"j{i}", list(quick), tmp_path / f"j{i}.log") for i in range(2)]
    parallel.run_jobs(jobs, parallel=1, threads=1, start_until=50, deadline=100, tick=0.1, budget_key="suite.train.max_train_seconds", reserve=40)
    budgets = [int(j.argv[-1].removeprefix("++suite.train.max_train_seconds=")) for j in jobs]
    assert [j.status for j in jobs] == ["finished", "finished"]
    assert budgets[0] == 60 and 58 <= budgets[1] < 60
    assert (tmp_path / "j1.log").read_text().rstrip().endswith(f"++suite.train.max_train_seconds={budgets[1]}")


def test_a_budget_key_without_a_deadline_is_refused(capsys):
    with pytest.raises(SystemExit):
        parallel.main(["--each", "suite.variants=[lora]", "--budget-key", "suite.train.max_train_seconds", "--", "suite=hybrid"])
    assert "--budget-key needs a --deadline" in capsys.readouterr().err
