import json

import pytest
import torch

from hrm_bench.perf import regress
from hrm_bench.perf.microbench import CALIBRATION, WORKLOADS

CAL = CALIBRATION.name


class FakeClock:
    """Deterministic time: each reading advances it by `tick`; work advances it explicitly."""

    def __init__(self, tick: float = 1e-4) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now

    def work(self, seconds: float):
        def run() -> None:
            self.now += seconds

        return run


def synthetic_samples(loss_factor: float = 1.0, rounds: int = 40) -> dict[str, list[float]]:
    """A noisy run of a machine where calibration takes 1 ms, loss 10 ms and loader 0.05 ms:
    the whole machine runs 1.8x slower in most rounds (drift), each workload (calibration too) is
    hit by a 10x burst in its own few rounds, and every sample carries a +-8 % jitter."""
    base = {CAL: 1e-3, "loss": 10e-3 * loss_factor, "loader": 0.05e-3}
    samples: dict[str, list[float]] = {name: [] for name in base}
    for r in range(rounds):
        drift = 1.8 if 10 <= r < 35 else 1.0
        for k, (name, seconds) in enumerate(base.items()):
            burst = 10.0 if r % 13 == k else 1.0
            jitter = 1.0 + 0.08 * ((r * 7 + k * 3) % 5 - 2) / 2
            samples[name].append(seconds * drift * burst * jitter)
    return samples


BASELINE = {"loss": 10.0, "loader": 0.05}


def test_scores_cancel_drift_and_bursts():
    assert regress.scores(synthetic_samples()) == pytest.approx(BASELINE, rel=0.1)


def test_clean_run_passes_and_injected_slowdown_is_flagged():
    clean = regress.compare(regress.scores(synthetic_samples()), BASELINE, threshold=regress.DEFAULT_THRESHOLD)
    assert [c.status for c in clean] == ["ok", "ok"]
    slowed = {c.name: c for c in regress.compare(regress.scores(synthetic_samples(loss_factor=1.6)), BASELINE, threshold=regress.DEFAULT_THRESHOLD)}
    assert slowed["loss"].regressed and slowed["loss"].status == "REGRESSION"
    assert slowed["loss"].slowdown == pytest.approx(1.6, rel=0.1)
    assert not slowed["loader"].regressed


def test_a_workload_missing_from_the_baseline_is_reported_not_failed():
    (comparison,) = regress.compare({"new_one": 3.0}, BASELINE, threshold=regress.DEFAULT_THRESHOLD)
    assert comparison.slowdown is None and not comparison.regressed and comparison.status.startswith("new")


def test_slowed_stretches_each_call_by_the_factor():
    clock = FakeClock()
    per_call = regress.time_calls(regress.slowed(clock.work(0.01), 1.6, clock), calls=5, clock=clock)
    assert per_call == pytest.approx(0.016, rel=0.05)


def test_calls_per_sample_fills_the_sample_duration():
    clock = FakeClock(tick=0.0)
    assert regress.calls_per_sample(clock.work(regress.SAMPLE_S / 4), clock) == 4
    assert regress.calls_per_sample(clock.work(regress.SAMPLE_S * 3), clock) == 1


def test_parse_slowdowns():
    names = ["loss", "loader"]
    assert regress.parse_slowdowns("", names) == {}
    assert regress.parse_slowdowns("loss:1.6, loader:2", names) == {"loss": 1.6, "loader": 2.0}
    for bad in ("loss", "nope:2", "loss:0.5", "loss:fast"):
        with pytest.raises(ValueError, match=regress.INJECT_ENV):
            regress.parse_slowdowns(bad, names)


def test_cli_writes_a_baseline_and_passes_against_it(tmp_path, capsys, monkeypatch):
    """Smoke test of the real workloads (two rounds); no timing is asserted."""
    threads = torch.get_num_threads()
    monkeypatch.setattr(regress, "configure_process", lambda: torch.set_num_threads(1))  # no mallopt here
    baseline = tmp_path / "baseline.json"
    try:
        assert regress.main(["--baseline", str(baseline), "--update-baseline", "--rounds", "2"]) == 0
    finally:
        torch.set_num_threads(threads)
    record = json.loads(baseline.read_text())
    assert set(record["scores"]) == {w.name for w in WORKLOADS}
    assert all(score > 0 for score in record["scores"].values())
    assert {"date", "commit", "device", "torch", "threads"} <= set(record)
    assert "PASS" in capsys.readouterr().out
