"""`python -m hrm_bench.perf.scaling` on CPU: torchrun with 1 and 2 gloo processes, the batch split, the same training."""

from __future__ import annotations

import subprocess

import pandas as pd
import pytest

from hrm_bench.perf import scaling


def test_two_processes_train_as_one_and_rows_are_written(tmp_path):
    argv = ["--nproc", "1", "2", "--small", "--global-batch", "8", "--steps", "2", "--warmup-steps", "2", "--path", "reference", "--hardware", "cpu", "--results-dir", str(tmp_path)]
    results = scaling.main(argv)
    one, two = results[1], results[2]
    assert (one.world_size, two.world_size) == (1, 2) and len(two.lm_losses) == 4
    assert two.identical_across_ranks  # dense parameters and the sparse puzzle embedding, bit for bit
    # the split batch trains the same model: float32 reduction order is the only difference
    assert scaling.max_loss_gap(two, one) < 1e-5
    assert len(set(two.lm_losses)) > 1  # the losses move: the model really trains
    table = pd.read_csv(tmp_path / "scaling.csv")
    assert table["n_gpus"].tolist() == [1, 2] and table["scaling_efficiency"].iloc[0] == 1.0
    assert (table["batch"] == 8).all() and (table["train_examples_per_s"] > 0).all()
    assert "parameters identical on every rank: yes" in (tmp_path / "scaling.md").read_text()


def test_an_indivisible_global_batch_is_refused(tmp_path, capfd):
    argv = ["--nproc", "3", "--small", "--global-batch", "8", "--steps", "1", "--warmup-steps", "1", "--path", "reference", "--hardware", "cpu", "--results-dir", str(tmp_path)]
    with pytest.raises(subprocess.CalledProcessError):  # torchrun fails: its workers raised
        scaling.main(argv)
    assert "not divisible by 3 processes" in capfd.readouterr().err
    assert not (tmp_path / "scaling.csv").exists()  # nothing half-written
