"""`python -m hrm_bench.run suite=sudoku`: build data if missing, train, evaluate, record one row.

Config composition (Hydra, files in hrm_bench/conf): suite (data, training budget, paper number),
model (hrm_v1 = the official architecture), hardware (auto | cpu | h100 | h200 | cuda), seed.
A suite carries a `cpu:` and a `gpu:` block merged over it for the detected hardware tier, so
the same command is a few-minute real run on a laptop and the official recipe on a GPU.
Only `main` sees the DictConfig; everything below it gets typed configs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path

import hydra
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from hrm_bench import metrics, records, run_logs, scoring
from hrm_bench.datasets import ensure_dataset
from hrm_bench.profiles import HardwareProfile, detect_profile
from hrm_bench.scoring import ScoringConfig
from puzzle_hrm.config import HRMConfig
from puzzle_hrm.data.format import DatasetMetadata
from puzzle_hrm.train import FitResult, TrainConfig, fit

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNS_HEADER = """# Result rows of `python -m hrm_bench.run`

One row per run, appended by `hrm_bench.records` (columns: see DESIGN contracts).
`data_provenance` says where the data came from: rows marked **stand-in** were not trained on the
official data set and are not comparable with the paper. `tflops` = model FLOP/s by the count in
`hrm_bench/metrics.py` (matmuls + attention of every H/L pass, backward only for the one-step-gradient
passes, plus the target-Q forward); `mfu` = tflops / the device's dense bf16 peak (empty on CPU).
`peak_mem_gib` is CUDA max allocated on GPU, peak process RSS on CPU. `mean_halt_steps` is the
segment where the learned Q-policy halts on the test set (evaluation itself always runs halt_max_steps).
ARC rows: `pass_at_1` / `pass_at_2` are per task after voting over the augmented variants (the paper's
and ARC Prize's measure; exact/token accuracy are per augmented test row). Maze rows: `valid_path_rate`
counts predicted paths that join S to G through free cells in the fewest moves (any optimal path).
"""


@dataclasses.dataclass
class RunPlan:
    """Everything one run needs, resolved from the Hydra config and the hardware."""

    suite: str
    model_name: str
    variant: str
    seed: int
    data: dict
    train: TrainConfig
    arch: HRMConfig
    profile: HardwareProfile
    results_dir: Path
    paper: dict
    scoring: ScoringConfig


def tier_of(profile: HardwareProfile) -> str:
    return "cpu" if profile.device == "cpu" else "gpu"


def cli_overrides() -> list[str]:
    """The `key=value` overrides typed on the command line (they win over the suite's tier block)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def merge_tier(cfg: DictConfig, tier: str, overrides: list[str]) -> dict:
    """suite.{data,train,eval,model} ← suite.<tier>.{...}, then command-line keys re-applied on top."""
    suite = OmegaConf.to_container(cfg.suite, resolve=True)
    block = suite.pop(tier, None) or {}
    suite.pop("gpu" if tier == "cpu" else "cpu", None)
    model = OmegaConf.to_container(cfg.model, resolve=True)
    sections = {key: suite.setdefault(key, {}) for key in ("data", "train", "eval")} | {"model": model}
    for key, section in sections.items():
        section.update(block.get(key, {}))
    for override in overrides:
        path = override.lstrip("+~").split("=", 1)[0].split(".")
        if path[0] == "model" and len(path) == 2:
            model[path[1]] = cfg.model[path[1]]
        elif path[0] == "suite" and len(path) == 3 and path[1] in ("data", "train", "eval"):
            suite[path[1]][path[2]] = cfg.suite[path[1]][path[2]]
    suite["model"] = model
    return suite


def plan_from_config(cfg: DictConfig, overrides: list[str] | None = None) -> RunPlan:
    """Merge the suite's tier block, apply the hardware profile, and type everything."""
    profile = detect_profile(cfg.hardware.profile)
    suite = merge_tier(cfg, tier_of(profile), cli_overrides() if overrides is None else overrides)
    model = suite["model"]
    model_name = model.pop("name")
    model.setdefault("forward_dtype", profile.forward_dtype)
    model["attn_backend"] = cfg.hardware.attn_backend or ("flash" if profile.attention == "flash" else "auto")
    arch = HRMConfig.from_dict(model)

    train = dict(suite["train"])
    train.update({"seed": cfg.seed, "device": profile.device, "eval_halt_max_steps": suite["eval"].get("halt_max_steps")})
    train["compile"] = profile.compile if cfg.hardware.compile is None else cfg.hardware.compile
    train.setdefault("checkpoint_dir", str(Path(cfg.checkpoint_root) / f"{suite['name']}-{model_name}-{profile.name}-seed{cfg.seed}"))
    scoring.check_scorable(suite["data"]["builder"], train.get("eval_max_batches"))
    return RunPlan(
        suite=suite["name"],
        model_name=model_name,
        variant=cfg.variant,
        seed=cfg.seed,
        data=suite["data"],
        train=TrainConfig(**train),
        arch=arch,
        profile=profile,
        results_dir=Path(cfg.results_dir),
        paper=suite.get("paper", {}),
        scoring=ScoringConfig(**suite.get("scoring", {})),
    )


def result_row(plan: RunPlan, result: FitResult, metadata: DatasetMetadata, peak_mem_gib: float, wall_s: float) -> dict:
    cfg = result.model.config
    examples_per_s = (result.train_examples - plan.train.global_batch_size) / result.train_seconds if result.train_seconds > 0 else None
    flops = metrics.hrm_flops_per_example(cfg, training=True)
    tflops = metrics.model_tflops(flops, examples_per_s) if examples_per_s else None
    n_devices = dist.get_world_size() if dist.is_initialized() else 1  # examples/s above is the global rate
    final = result.final_eval
    provenance = metadata.provenance or {}
    return {
        **records.run_stamp("hrm_bench.run", REPO_ROOT),
        "suite": plan.suite,
        "model": plan.model_name,
        "variant": plan.variant,
        "data": Path(plan.train.data_path).name,
        "data_provenance": describe_provenance(provenance),
        "seed": plan.seed,
        "hardware": plan.profile.name,
        "device": plan.profile.device_name,
        "n_gpus": plan.profile.n_gpus,
        "torch": plan.profile.torch,
        "cuda": plan.profile.cuda,
        "params": metrics.count_parameters(result.model),
        "steps": result.steps,
        "wall_s": wall_s,
        "train_examples_per_s": examples_per_s,
        "train_tokens_per_s": examples_per_s * cfg.seq_len if examples_per_s else None,
        "tflops": tflops,
        "mfu": metrics.mfu(tflops, plan.profile.mfu_peak_tflops, n_devices) if tflops else None,
        "peak_mem_gib": peak_mem_gib,
        "eval_puzzles_per_s": final["count"] / final["eval_seconds"],
        "exact_accuracy": final["exact_accuracy"],
        "token_accuracy": final["token_accuracy"],
        "mean_halt_steps": final["mean_halt_steps"],
        "q_halt_accuracy": final["q_halt_accuracy"],
    }


def describe_provenance(provenance: dict) -> str:
    if not provenance:
        return "official builder (no provenance field)"
    label = "stand-in: " if provenance.get("stand_in") else ""
    return label + str(provenance.get("source", "unknown source"))


def run(plan: RunPlan) -> dict | None:
    """Build data, train, evaluate; rank 0 appends the row and returns it."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    data_dir = ensure_dataset(plan.data, build=rank == 0)
    if dist.is_initialized():
        dist.barrier()
    train_cfg = dataclasses.replace(plan.train, data_path=str(data_dir))
    metadata = DatasetMetadata.from_json(data_dir / "train" / "dataset.json")
    logger.info("suite=%s model=%s hardware=%s data=%s", plan.suite, plan.model_name, plan.profile.name, data_dir)
    builder = plan.data["builder"]
    start = time.perf_counter()
    with metrics.PeakMemory(plan.profile.device) as memory:
        result = fit(train_cfg, plan.arch, checkpoint_extra={"dataset_metadata": metadata.to_dict(), "commit": records.git_commit(REPO_ROOT)},
                     keep_predictions=scoring.PREDICTION_FIELDS.get(builder, ()))
    if rank != 0:
        return None
    row = result_row(dataclasses.replace(plan, train=train_cfg), result, metadata, memory.gib(), time.perf_counter() - start)
    submission = submission_path(plan, row["date"])
    row.update(scoring.suite_scores(builder, data_dir, result.final_eval.get("predictions", {}), plan.scoring, submission))
    records.append_row(plan.results_dir / "runs.csv", row, records.RUN_COLUMNS, RUNS_HEADER)
    run_logs.write_eval_curve(plan.results_dir, row, result.evals)
    run_logs.write_test_time(plan.results_dir, row, scoring.test_time_curves(builder, data_dir, result.final_eval, plan.scoring))
    print_summary(plan, row, result, submission if builder == "arc" else None)
    return row


def submission_path(plan: RunPlan, date: str) -> Path:
    """Where an ARC run's submission JSON goes: results/submissions/<suite>-<model>-<hardware>-seed<n>-<date>.json."""
    return plan.results_dir / "submissions" / f"{run_logs.run_id(plan.suite, plan.model_name, plan.profile.name, plan.seed, date)}.json"


SUITE_SCORES = ("pass_at_1", "pass_at_2", "valid_path_rate")


def print_summary(plan: RunPlan, row: dict, result: FitResult, submission: Path | None) -> None:
    lines = [
        f"suite={plan.suite} model={plan.model_name} hardware={plan.profile.name} ({plan.profile.device_name}) seed={plan.seed}",
        f"data: {row['data']} [{row['data_provenance']}]",
        f"steps={row['steps']} wall={row['wall_s']:.1f}s train={row['train_examples_per_s'] or 0:.1f} examples/s",
        f"exact_accuracy={row['exact_accuracy']:.4f} token_accuracy={row['token_accuracy']:.4f} "
        f"mean_halt_steps={row['mean_halt_steps']:.2f} halt histogram={result.final_eval['halt_step_histogram']}",
        "exact accuracy after outer step k = 1, 2, ..: " + " ".join(f"{a:.4f}" for a in result.final_eval["exact_accuracy_by_steps"]),
        "Q-policy capped at k: " + " ".join(f"{a:.4f}" for a in result.final_eval["policy_exact_accuracy_by_steps"]),
    ]
    if scores := [f"{key}={row[key]:.4f}" for key in SUITE_SCORES if row.get(key) is not None]:
        lines.append(" ".join(scores))
    if submission is not None:
        lines.append(f"ARC Prize submission: {submission}")
    paper = {k: v for k, v in plan.paper.items() if k != "source"}
    if paper:
        lines.append(f"paper ({plan.paper.get('source', '')}): " + " ".join(f"{k}={v}" for k, v in paper.items()))
    lines.append(f"row appended to {plan.results_dir / 'runs.csv'} (+ runs.md)")
    print("\n".join(lines))


def init_distributed() -> None:
    """torchrun sets WORLD_SIZE; NCCL on GPUs, gloo on CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group(backend)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    if cfg.suite.get("kind") == "hybrid":  # the frozen-LLM comparison has its own runner
        from hrm_bench import hybrid_suite

        hybrid_suite.main(cfg, cli_overrides())
        return
    init_distributed()
    try:
        run(plan_from_config(cfg))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
