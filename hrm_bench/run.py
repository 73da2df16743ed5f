"""`python -m hrm_bench.run suite=sudoku`: build data if missing, train, evaluate, record one row.

Config composition (Hydra, files in hrm_bench/conf): suite (data, training budget, paper number),
model (hrm_v1 = the official architecture), hardware (auto | cpu | h100 | h200 | cuda), seed.
A suite carries a `cpu:` and a `gpu:` block merged over it for the detected hardware tier, so
the same command is a few-minute real run on a laptop and the official recipe on a GPU.
Only `main` sees the DictConfig; everything below it gets typed configs: every key of the composed
config is checked against its dataclass (unknown keys and wrong types are refused, naming the key).
Refusals print `error: <file or key>: <problem>` and exit 2 (puzzle_hrm.cli_errors); a stop signal
saves a checkpoint and exits 130. Outputs go where results_dir / checkpoint_root / the suite's
output_dir say (relative to the working directory), printed at the start of every run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shlex
import sys
import time
from pathlib import Path

import hydra
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from hrm_bench import metrics, records, run_logs, rundirs, scoring
from hrm_bench.datasets import BUILDERS, ensure_dataset
from hrm_bench.profiles import HardwareProfile, detect_profile
from hrm_bench.scoring import ScoringConfig
from puzzle_hrm import registry, resume
from puzzle_hrm.cli_errors import refusals
from puzzle_hrm.config import PuzzleModelConfig
from puzzle_hrm.data.format import DatasetMetadata
from puzzle_hrm.train import FitResult, TrainConfig, fit, planned_steps
from puzzle_hrm.typed_config import check_keys, coerce, typed

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
`config` lists the knobs that set the result (cycles, ACT steps for training and at test time, puzzle
embedding size, gradient and halting rule, loss, EMA, augmentations); `tflops` counts each model's own blocks.
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
    arch: PuzzleModelConfig
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
    # a tier's model block is written for the HRM; another model takes the keys it has (its own file keeps the rest)
    model_keys = registry.model_keys(model["name"]) | {"name"}
    for key in set(block.get("model", {})) - model_keys:
        del model[key]
    for override in overrides:
        path = override.lstrip("+~").split("=", 1)[0].split(".")
        if path[0] == "model" and len(path) == 2:
            model[path[1]] = cfg.model[path[1]]
        elif path[0] == "suite" and len(path) == 3 and path[1] in ("data", "train", "eval"):
            suite[path[1]][path[2]] = cfg.suite[path[1]][path[2]]
    suite["model"] = model
    return suite


TOP_KEYS = {"seed": int, "variant": str, "results_dir": str, "checkpoint_root": str}  # config.yaml besides the groups
HARDWARE_KEYS = {"profile": str, "compile": bool | None, "attn_backend": str | None}
SUITE_KEYS = ("name", "paper", "data", "train", "model", "eval", "scoring", "cpu", "gpu", "kind")
TIER_KEYS = ("data", "train", "model", "eval")
EVAL_KEYS = ("test_time_steps",)  # suite.eval: the final evaluation's rollout length (TrainConfig.test_time_steps)


def check_top_level(cfg: DictConfig, suite_keys: tuple[str, ...] = SUITE_KEYS, tier_keys: tuple[str, ...] = TIER_KEYS) -> dict:
    """The keys outside suite/model (seed, variant, paths, hardware choices), typed; unknown keys refused
    there and among the suite's own keys (its sections are checked against their dataclasses later)."""
    values = OmegaConf.to_container(cfg, resolve=True)
    check_keys({k: v for k, v in values.items() if k not in ("suite", "model", "hardware")}, TOP_KEYS, "")
    check_keys(values["hardware"], HARDWARE_KEYS, "hardware")
    check_keys(values["suite"], suite_keys, "suite")
    for tier in ("cpu", "gpu"):
        check_keys(values["suite"].get(tier) or {}, tier_keys, f"suite.{tier}")
    top = {k: coerce(values[k], t, k) for k, t in TOP_KEYS.items()}
    return top | {f"hardware.{k}": coerce(values["hardware"].get(k), t, f"hardware.{k}") for k, t in HARDWARE_KEYS.items()}


def plan_from_config(cfg: DictConfig, overrides: list[str] | None = None) -> RunPlan:
    """Merge the suite's tier block, apply the hardware profile, and type everything."""
    top = check_top_level(cfg)
    profile = detect_profile(top["hardware.profile"])
    suite = merge_tier(cfg, tier_of(profile), cli_overrides() if overrides is None else overrides)
    model = suite["model"]
    model_name = model.pop("name")
    model.setdefault("forward_dtype", profile.forward_dtype)
    model["attn_backend"] = top["hardware.attn_backend"] or ("flash" if profile.attention == "flash" else "auto")
    arch = registry.model_config(model_name, model)

    check_keys(suite.get("eval", {}), EVAL_KEYS, "suite.eval")
    test_time_steps = coerce(suite.get("eval", {}).get("test_time_steps"), int | None, "suite.eval.test_time_steps")
    train = dict(suite["train"])
    train.update({"seed": top["seed"], "device": profile.device, "test_time_steps": test_time_steps})
    train["compile"] = profile.compile if top["hardware.compile"] is None else top["hardware.compile"]
    train_config = typed(TrainConfig, train, "suite.train")
    if "builder" not in suite["data"] or suite["data"]["builder"] not in BUILDERS:
        raise ValueError(f"suite.data.builder: {suite['data'].get('builder')!r} is not one of {', '.join(sorted(BUILDERS))}")
    typed(BUILDERS[suite["data"]["builder"]][0], {k: v for k, v in suite["data"].items() if k != "builder"}, "suite.data")
    identity = {"suite": suite["name"], "model": model_name, "arch": dataclasses.asdict(arch), "data": suite["data"],
                "train": resume.result_keys(dataclasses.asdict(train_config)), "hardware": profile.name}
    if train_config.checkpoint_dir is None:
        prefix = f"{suite['name']}-{model_name}-{profile.name}-seed{top['seed']}"
        train_config.checkpoint_dir = str(rundirs.run_dir(top["checkpoint_root"], prefix, identity))
    scoring.check_scorable(suite["data"]["builder"], train_config.eval_max_batches)
    return RunPlan(
        suite=suite["name"],
        model_name=model_name,
        variant=top["variant"],
        seed=top["seed"],
        data=suite["data"],
        train=train_config,
        arch=arch,
        profile=profile,
        results_dir=Path(top["results_dir"]),
        paper=suite.get("paper", {}),
        scoring=typed(ScoringConfig, suite.get("scoring", {}), "suite.scoring"),
    )


def result_row(plan: RunPlan, result: FitResult, metadata: DatasetMetadata, peak_mem_gib: float, wall_s: float) -> dict:
    cfg = result.model.config
    # the first step (warm-up) is timed apart; with fewer than two steps trained there is no rate
    examples_per_s = (result.train_examples - plan.train.global_batch_size) / result.train_seconds if result.train_seconds > 0 and result.trained_steps > 1 else None
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
        "config": config_column(plan, cfg),
        "stop_reason": result.stop_reason,
    }


# What changes a result beyond the model's name (the ablation knobs), in the row's `config` column
MODEL_KNOBS = ("H_cycles", "L_cycles", "H_layers", "L_layers", "hidden_size", "mlp_t", "pos_encodings", "puzzle_emb_ndim",
               "halt_max_steps", "one_step_gradient", "act_continue_loss", "forward_dtype")
TRAIN_KNOBS = ("loss_type", "ema", "ema_rate", "global_batch_size", "lr")


def config_column(plan: RunPlan, model_config: PuzzleModelConfig) -> str:
    """`key=value` pairs of the knobs that set this result: model (those it has), training, test-time
    ACT steps and the data's augmentation count."""
    values = {k: getattr(model_config, k) for k in MODEL_KNOBS if hasattr(model_config, k)}
    values |= {k: getattr(plan.train, k) for k in TRAIN_KNOBS if k != "ema_rate" or plan.train.ema}
    values["eval_halt_max_steps"] = plan.train.eval_halt_max_steps or model_config.halt_max_steps
    values["num_aug"] = plan.data.get("num_aug")
    return " ".join(f"{k}={v}" for k, v in values.items() if v is not None)


def describe_provenance(provenance: dict) -> str:
    if not provenance:
        return "official builder (no provenance field)"
    label = "stand-in: " if provenance.get("stand_in") else ""
    return label + str(provenance.get("source", "unknown source"))


def print_locations(plan: RunPlan) -> None:
    """Where this run reads and writes (relative paths are relative to the working directory)."""
    print(f"results: {(plan.results_dir / 'runs.csv').resolve()}\ncheckpoint: {Path(plan.train.checkpoint_dir).resolve()}\n"
          f"data: {Path(plan.data.get('output_dir', '?')).resolve()}", flush=True)


def finished_run(plan: RunPlan, train_cfg: TrainConfig, metadata: DatasetMetadata, rank: int) -> dict | None:
    """With resume, the row of a run that already reached its last step (rank 0 appends it now if
    only its fallback copy was written); None when there is training left to do."""
    saved = rundirs.saved_row(train_cfg.checkpoint_dir) if train_cfg.resume else None
    if saved is None or saved["row"].get("steps") != planned_steps(train_cfg, metadata)[1]:
        return None
    row, csv_path = saved["row"], plan.results_dir / "runs.csv"
    if rank != 0:
        return row
    if saved["recorded_in"] is None:
        rundirs.record_row(csv_path, row, train_cfg.checkpoint_dir, RUNS_HEADER)
        print(f"run already finished at step {row['steps']}; its saved row ({row['date']}) is now appended to {csv_path}")
    else:
        print(f"run already finished at step {row['steps']}: nothing to train, no new row; its row ({row['date']}, variant "
              f"{row['variant']}) is in {saved['recorded_in']}")
    return row


def run(plan: RunPlan) -> dict | None:
    """Build data, train, evaluate; rank 0 appends the row and returns it."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        records.check_writable(plan.results_dir)  # before the training, not after it
        print_locations(plan)
    data_dir = ensure_dataset(plan.data, build=rank == 0)
    if dist.is_initialized():
        dist.barrier()
    train_cfg = dataclasses.replace(plan.train, data_path=str(data_dir))
    metadata = DatasetMetadata.from_json(data_dir / "train" / "dataset.json")
    if (finished := finished_run(plan, train_cfg, metadata, rank)) is not None:
        return finished if rank == 0 else None
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
    rundirs.record_row(plan.results_dir / "runs.csv", row, train_cfg.checkpoint_dir, RUNS_HEADER)
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


def resume_command() -> str:
    """This command line with the resume switch (printed when a run is stopped by a signal)."""
    args = [a for a in sys.argv[1:] if not a.lstrip("+").startswith("suite.train.resume=")]
    return "python -m hrm_bench.run " + " ".join(shlex.quote(a) for a in [*args, "++suite.train.resume=true"])


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    with refusals(resume_hint=resume_command()):
        if cfg.suite.get("kind") == "hybrid":  # the frozen-LLM comparison has its own runner
            from hrm_bench.suites import hybrid as hybrid_suite  # not the top-level hybrid package

            hybrid_suite.main(cfg, cli_overrides())
            return
        if cfg.suite.get("kind") == "sweep":  # several runs of this runner, one table (suite=variants / ablations)
            from hrm_bench.suites import sweep

            sweep.main(cfg)
            return
        init_distributed()
        try:
            run(plan_from_config(cfg))
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()


def preflight(argv: list[str]) -> None:
    """Compose the config once before Hydra's main does, so that an override Hydra refuses (a key
    the config lacks, a bad group name, a parse error) is one `error:` line with exit status 2 too.
    Skipped for Hydra's own flags (--help, --cfg, -m sweeps): Hydra handles those itself."""
    if any(a.startswith("-") for a in argv):
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    overrides = [a for a in argv if not a.startswith("hydra.")]
    with initialize_config_dir(config_dir=str(Path(__file__).parent / "conf"), version_base="1.3"):
        try:
            compose(config_name="config", overrides=overrides)
        except HydraException as err:
            message = str(err).split("\nConfig search path", 1)[0]
            if match := re.match(r"Could not override '([^']+)'", message):  # a key the config lacks
                key = match.group(1)
                groups = [a for a in overrides if "." not in a.split("=", 1)[0]]  # suite=, model=, ...
                parent = OmegaConf.select(compose(config_name="config", overrides=groups), key.rpartition(".")[0] or "")
                section = key.rpartition(".")[0]
                valid = ", ".join(sorted(parent)) if isinstance(parent, DictConfig) and parent else "none listed"
                hint = f" (++{key}=... sets a key the suite file does not list)" if key.startswith("suite.") else ""
                message = f"{key}: unknown key; valid keys{f' of {section}' if section else ''}: {valid}{hint}"
            raise ValueError(message) from err


if __name__ == "__main__":
    with refusals():
        preflight(sys.argv[1:])
    main()
