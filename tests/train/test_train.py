"""The training loop: determinism, checkpoint/resume, DDP equivalence, schedule length."""

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from puzzle_hrm import checkpoint as ckpt
from puzzle_hrm.data.format import read_split
from puzzle_hrm.data.loader import PuzzleLoader
from puzzle_hrm.evaluate import evaluate
from puzzle_hrm.train import fit

from .conftest import small_arch, small_train


def weights(result) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in result.model.state_dict().items()}


def eval_metrics(result) -> dict:
    """The final evaluation without its wall time (which is a measurement, not a result)."""
    return {k: v for k, v in result.final_eval.items() if k != "eval_seconds"}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_same_seed_repeats_bit_for_bit_and_other_seed_differs(sudoku4):
    first = fit(small_train(sudoku4), small_arch())
    second = fit(small_train(sudoku4), small_arch())
    assert_same(weights(first), weights(second))
    assert first.last_train_metrics == second.last_train_metrics
    assert eval_metrics(first) == eval_metrics(second)
    other = fit(small_train(sudoku4, seed=1), small_arch())
    assert not torch.equal(weights(other)["inner.lm_head.weight"], weights(first)["inner.lm_head.weight"])


def test_training_changes_weights_and_puzzle_embedding(sudoku4):
    result = fit(small_train(sudoku4), small_arch())
    assert result.steps == 12
    assert result.model.puzzle_emb.weights.abs().sum() > 0  # SignSGD moved the (zero-init) rows
    assert result.final_eval["count"] == 16  # eval_max_batches=2 × batch 8


def test_resume_matches_an_uninterrupted_run(sudoku4, tmp_path):
    straight = fit(small_train(sudoku4, max_steps=12), small_arch())
    fit(small_train(sudoku4, max_steps=5, checkpoint_dir=str(tmp_path)), small_arch())
    saved = ckpt.load(tmp_path / "last.pt")
    assert saved["step"] == 5 and saved["carry"] is not None
    resumed = fit(small_train(sudoku4, max_steps=12, checkpoint_dir=str(tmp_path), resume=True), small_arch())
    assert resumed.steps == 12
    assert_same(weights(straight), weights(resumed))
    assert eval_metrics(straight) == eval_metrics(resumed)


def test_checkpoint_is_atomic_and_loads_weights_only(sudoku4, tmp_path):
    fit(small_train(sudoku4, max_steps=2, checkpoint_dir=str(tmp_path)), small_arch())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp files left behind
    saved = ckpt.load(tmp_path / "last.pt")
    assert {"model", "optimizers", "carry", "loader", "rng", "train_config", "model_config"} <= saved.keys()
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        ckpt.load(tmp_path / "bad.pt")


def test_resume_refuses_another_configuration_naming_the_keys(sudoku4, tmp_path):
    fit(small_train(sudoku4, max_steps=2, checkpoint_dir=str(tmp_path)), small_arch())
    with pytest.raises(ValueError, match=r"model.H_cycles: 2 -> 3; model.hidden_size: 32 -> 64"):
        fit(small_train(sudoku4, max_steps=3, checkpoint_dir=str(tmp_path), resume=True), small_arch(hidden_size=64, H_cycles=3))
    with pytest.raises(ValueError, match=r"train.lr: 0.001 -> 0.0001\)"):
        fit(small_train(sudoku4, max_steps=3, checkpoint_dir=str(tmp_path), resume=True, lr=1e-4), small_arch())
    # run controls may change: a longer budget, another log interval
    assert fit(small_train(sudoku4, max_steps=3, checkpoint_dir=str(tmp_path), resume=True, log_every=1), small_arch()).trained_steps == 1


def test_a_plain_rerun_never_replaces_an_existing_checkpoint(sudoku4, tmp_path):
    fit(small_train(sudoku4, max_steps=3, checkpoint_dir=str(tmp_path)), small_arch())
    before = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(ValueError, match="pass resume=true to continue it"):
        fit(small_train(sudoku4, max_steps=1, checkpoint_dir=str(tmp_path)), small_arch())
    assert (tmp_path / "last.pt").read_bytes() == before
    finished = fit(small_train(sudoku4, max_steps=3, checkpoint_dir=str(tmp_path), resume=True), small_arch())
    assert finished.trained_steps == 0 and finished.steps == 3 and finished.train_examples == 0
    assert (tmp_path / "last.pt").read_bytes() == before  # nothing trained, nothing re-saved


def test_resume_refuses_what_is_not_a_training_checkpoint(sudoku4, tmp_path):
    run = fit(small_train(sudoku4, max_steps=1, checkpoint_dir=str(tmp_path)), small_arch())
    saved = ckpt.load(tmp_path / "last.pt")
    ckpt.save_atomic(ckpt.to_official_state_dict(run.model), tmp_path / "last.pt")  # a bare (official) state dict
    with pytest.raises(ValueError, match=r"not a training checkpoint .*missing \['model', 'optimizers'"):
        fit(small_train(sudoku4, max_steps=2, checkpoint_dir=str(tmp_path), resume=True), small_arch())
    ckpt.save_atomic({k: v for k, v in saved.items() if k != "loader"}, tmp_path / "last.pt")
    with pytest.raises(ValueError, match=r"missing \['loader'\]"):
        fit(small_train(sudoku4, max_steps=2, checkpoint_dir=str(tmp_path), resume=True), small_arch())
    ckpt.save_atomic({**saved, "optimizers": saved["optimizers"][:1]}, tmp_path / "last.pt")
    with pytest.raises(ValueError, match="holds 1 optimizer states, the run has 2"):
        fit(small_train(sudoku4, max_steps=2, checkpoint_dir=str(tmp_path), resume=True), small_arch())


def test_full_disk_at_a_checkpoint_keeps_training_and_orphans_are_cleaned(sudoku4, tmp_path, monkeypatch, caplog):
    orphan = tmp_path / ".last.pt.abc123.tmp"  # what a killed write leaves
    orphan.write_bytes(b"partial")
    real_save, calls = torch.save, []

    def full_disk_once(obj, f):
        calls.append(1)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", full_disk_once)
    result = fit(small_train(sudoku4, max_steps=4, checkpoint_dir=str(tmp_path), checkpoint_every=2), small_arch())
    assert result.steps == 4 and len(calls) == 2  # step 2 failed, step 4 (the end) saved
    assert "not saved at step 2" in caplog.text and str(tmp_path / "last.pt") in caplog.text
    assert ckpt.load(tmp_path / "last.pt")["step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # orphan and failed temp file gone


def _ddp_worker(rank: int, world_size: int, init_file: str, data: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        # a time budget that is never hit still runs the collective stop decision every log step
        result = fit(small_train(data, max_steps=6, max_train_seconds=1e9), small_arch(halt_exploration_prob=0.0))
        torch.save(weights(result), os.path.join(out, f"rank{rank}.pt"))
        # 64 test rows in global batches of 12: the last one has 4 rows, all on rank 0, padded on both ranks
        loader = PuzzleLoader(data, "test", 12, mode="test", rank=rank, world_size=world_size)
        kept = evaluate(result.model, loader, torch.device("cpu"), keep_predictions=("inputs", "predictions"))
        torch.save(kept["predictions"], os.path.join(out, f"predictions{rank}.pt"))
    finally:
        dist.barrier()  # no rank tears gloo down while the other still talks to it
        dist.destroy_process_group()


def test_two_process_ddp_matches_single_process_with_the_same_global_batch(sudoku4, tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(sudoku4), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert_same(rank0, rank1)  # ranks never drift apart, puzzle embedding included
    single = weights(fit(small_train(sudoku4, max_steps=6), small_arch(halt_exploration_prob=0.0)))
    for k in single:
        torch.testing.assert_close(rank0[k], single[k], rtol=1e-4, atol=1e-5, msg=k)
    kept0, kept1 = (torch.load(tmp_path / f"predictions{r}.pt", weights_only=True) for r in (0, 1))
    assert_same(kept0, kept1)  # every rank holds all rows ...
    assert torch.equal(kept0["inputs"], split_inputs(sudoku4))  # ... in test-split order, without padding


def split_inputs(data) -> torch.Tensor:
    _, test = read_split(data, "test")
    return torch.from_numpy(np.asarray(test["all"]["inputs"], dtype=np.int32))


def test_final_evaluation_keeps_rows_in_test_split_order(sudoku4):
    fields = ("inputs", "puzzle_identifiers", "predictions", "q_halt_logits")
    result = fit(small_train(sudoku4, max_steps=2, global_batch_size=24, eval_max_batches=None), small_arch(), keep_predictions=fields)
    kept = result.final_eval["predictions"]
    assert set(kept) == set(fields)
    assert torch.equal(kept["inputs"], split_inputs(sudoku4))  # 64 rows in batches of 24: the padding is dropped
    assert kept["predictions"].shape == (64, 16) and kept["q_halt_logits"].shape == (64,)
    with pytest.raises(ValueError, match=r"unknown fields \['logits'\]"):
        evaluate(result.model, PuzzleLoader(sudoku4, "test", 8, mode="test"), torch.device("cpu"), keep_predictions=("logits",))


def test_evaluate_cli_on_a_training_checkpoint(sudoku4, tmp_path, capsys):
    from puzzle_hrm.evaluate import main

    trained = fit(small_train(sudoku4, max_steps=3, checkpoint_dir=str(tmp_path)), small_arch())
    main([f"checkpoint={tmp_path / 'last.pt'}", f"data={sudoku4}", "batch_size=8", f"predictions={tmp_path / 'preds.pt'}", "device=cpu"])
    printed = capsys.readouterr().out
    full = fit(small_train(sudoku4, max_steps=3, eval_max_batches=None), small_arch()).final_eval
    assert f'"exact_accuracy": {full["exact_accuracy"]}' in printed
    preds = torch.load(tmp_path / "preds.pt", weights_only=True)
    assert preds["predictions"].shape == (full["count"], 16)
    assert trained.steps == 3


def test_wandb_logging_runs_offline(sudoku4, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    fit(small_train(sudoku4, max_steps=4, wandb=True), small_arch())
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))  # an offline run was written, no network
    assert wandb.run is None  # finished


def test_time_budget_stops_at_a_log_step(sudoku4):
    result = fit(small_train(sudoku4, max_steps=12, max_train_seconds=0.0, log_every=4), small_arch())
    assert result.steps == 4 and result.final_eval["count"] == 16


def test_compiled_training_and_evaluation_match_eager(sudoku4):
    eager = fit(small_train(sudoku4, max_steps=3), small_arch())
    compiled = fit(small_train(sudoku4, max_steps=3, compile=True), small_arch())
    for k, v in weights(eager).items():
        torch.testing.assert_close(weights(compiled)[k], v, rtol=1e-4, atol=1e-5, msg=k)
    assert compiled.final_eval["count"] == eager.final_eval["count"]
    assert compiled.final_eval["token_accuracy"] == pytest.approx(eager.final_eval["token_accuracy"], abs=1e-6)
