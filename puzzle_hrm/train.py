"""The one training loop (official `pretrain.py` semantics), used by every suite.

Per step: one ACT segment on the carry (halted rows take fresh puzzles), loss summed over the
batch and scaled by 1/global_batch_size, backward through the one-step gradient, gradients summed
across ranks, the cosine-with-warm-up lr set on both optimizers, step. Evaluation every
`eval_interval` epochs, checkpoints every `checkpoint_every` steps; `resume` continues exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from puzzle_hrm import checkpoint as ckpt
from puzzle_hrm import resume
from puzzle_hrm.config import PuzzleModelConfig
from puzzle_hrm.data.format import DatasetMetadata
from puzzle_hrm.data.loader import PuzzleLoader, official_total_steps
from puzzle_hrm.ema import EMA
from puzzle_hrm.evaluate import evaluate
from puzzle_hrm.fp8 import convert_to_fp8
from puzzle_hrm.losses import act_loss
from puzzle_hrm.model import HRM, Batch, HRMCarry
from puzzle_hrm.optim import build_optimizers, cosine_schedule_with_warmup
from puzzle_hrm.registry import build_model, model_name_of
from puzzle_hrm.stop import StopRequest, TrainingInterrupted, stop_on_signals
from puzzle_hrm.tracking import Tracker

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Official `cfg_pretrain.yaml` names and defaults, plus our run controls below the line."""

    data_path: str = "datasets/sudoku"
    global_batch_size: int = 768
    epochs: int = 100000
    eval_interval: int = 10000  # in epochs, as in the official config
    lr: float = 1e-4
    lr_min_ratio: float = 1.0
    lr_warmup_steps: int = 2000
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.1
    puzzle_emb_lr: float = 1e-2
    puzzle_emb_weight_decay: float = 0.1
    seed: int = 0
    loss_type: str = "stablemax_cross_entropy"
    # ---- ours ----
    optimizer: str = "adamw"  # adamw | adam_atan2 (the official optimizer)
    total_steps: int | None = None  # override the schedule length (default: official epochs formula)
    max_steps: int | None = None  # stop early (a budgeted slice of the schedule)
    max_train_seconds: float | None = None  # stop early after this much training time (checked every log_every steps)
    device: str = "auto"
    compile: bool = False
    compile_mode: str | None = None  # torch.compile mode; "reduce-overhead" = CUDA graphs of the segment
    compile_loss: bool = True  # with compile: the ACT loss gets a compiled graph too (fused stablemax, as the official head)
    precision: str = "default"  # default: matmuls in forward_dtype | fp8 (rowwise scales) | fp8_tensorwise (puzzle_hrm/fp8.py)
    eval_max_batches: int | None = None  # cap evaluation (CPU profiles); None = the whole test split
    test_time_steps: int | None = None  # segments of the final evaluation's rollout (test-time compute curves); None = eval_halt_max_steps
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0  # steps; 0 = only at the end (when checkpoint_dir is set)
    resume: bool = False  # continue from checkpoint_dir/last.pt if it exists
    log_every: int = 50
    progress: bool = True
    wandb: bool = False
    wandb_project: str = "hrm-bench"
    ema: bool = False  # TRM's EMA of the weights; evaluation (and evaluate.py on a checkpoint) uses the average
    ema_rate: float = 0.999  # official TRM name and default
    eval_halt_max_steps: int | None = None  # ACT segments at evaluation (default: the model's halt_max_steps)


@dataclass
class TrainState:
    model: HRM
    optimizers: list[torch.optim.Optimizer]
    base_lrs: list[float]
    total_steps: int
    step: int = 0
    carry: HRMCarry | None = None
    ema: EMA | None = None


@dataclass
class FitResult:
    steps: int
    train_seconds: float  # wall time of training steps only (no eval / checkpoint), synced
    warmup_seconds: float  # wall time of the first step (compile, allocator warm-up)
    train_examples: int  # examples processed by segments (global)
    final_eval: dict
    evals: list[dict] = field(default_factory=list)
    last_train_metrics: dict = field(default_factory=dict)
    model: HRM | None = None
    stop_reason: str = "schedule"  # schedule | max_steps | max_train_seconds: what ended the training
    trained_steps: int = 0  # steps trained in this call (0: resumed at the last step)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if `flag` is true on any (a collective: call it on all ranks)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    tensor = torch.tensor(float(flag), device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def model_config_for(arch: PuzzleModelConfig, metadata: DatasetMetadata, local_batch_size: int) -> PuzzleModelConfig:
    """The dataset fixes seq_len, vocabulary and identifiers; the run fixes the per-rank batch."""
    return dataclasses.replace(
        arch, seq_len=metadata.seq_len, vocab_size=metadata.vocab_size, num_puzzle_identifiers=metadata.num_puzzle_identifiers, batch_size=local_batch_size
    )


def planned_steps(cfg: TrainConfig, metadata: DatasetMetadata) -> tuple[int, int]:
    """(schedule length, last step this run trains to): max_steps may end it before the schedule does."""
    total = cfg.total_steps or official_total_steps(metadata, cfg.epochs, cfg.global_batch_size)
    return total, min(total, cfg.max_steps or total)


def build_state(cfg: TrainConfig, arch: PuzzleModelConfig, metadata: DatasetMetadata, device: torch.device) -> TrainState:
    """The training state for a dataset: its shapes fix the model, its size the schedule length."""
    _, world_size = world()
    total, _ = planned_steps(cfg, metadata)
    return init_state(cfg, model_config_for(arch, metadata, cfg.global_batch_size // world_size), device, total)


def init_state(cfg: TrainConfig, model_config: PuzzleModelConfig, device: torch.device, total_steps: int) -> TrainState:
    """Seeded model (identical on every rank) and the optimizers of cfg, for a schedule of total_steps."""
    rank, world_size = world()
    torch.manual_seed(cfg.seed)  # same init on every rank ...
    model = build_model(model_config).to(device)
    if cfg.precision != "default":
        apply_precision(model, cfg.precision)
    if world_size > 1:  # ... and made certain by a broadcast, as the official code does
        with torch.no_grad():
            for tensor in list(model.parameters()) + list(model.buffers()):
                dist.broadcast(tensor, src=0)
    torch.manual_seed(cfg.seed + rank)  # per-rank stream for exploration
    optimizers, base_lrs = build_optimizers(
        model,
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        betas=(cfg.beta1, cfg.beta2),
        puzzle_emb_lr=cfg.puzzle_emb_lr,
        puzzle_emb_weight_decay=cfg.puzzle_emb_weight_decay,
        world_size=world_size,
        fused=device.type == "cuda",
    )
    ema = EMA(model, cfg.ema_rate) if cfg.ema else None
    return TrainState(model=model, optimizers=optimizers, base_lrs=base_lrs, total_steps=total_steps, ema=ema)


PRECISIONS = {"fp8": "rowwise", "fp8_tensorwise": "tensorwise"}  # precision -> fp8 scaling recipe


def apply_precision(model: torch.nn.Module, precision: str) -> None:
    """Opt-in matmul precisions that change the maths (off by default)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {' | '.join(PRECISIONS)}, got {precision!r}")
    convert_to_fp8(model, PRECISIONS[precision])


def compile_forward(model: torch.nn.Module, cfg: TrainConfig) -> Callable:
    """The module itself, or torch.compile of it (the whole ACT segment: one graph per mode)."""
    return torch.compile(model, mode=cfg.compile_mode) if cfg.compile else model


@functools.cache
def compiled_act_loss() -> Callable:
    return torch.compile(act_loss)


def uses_cuda_graphs(cfg: TrainConfig) -> bool:
    return cfg.compile and cfg.compile_mode in ("reduce-overhead", "max-autotune")


def clone_tensors(value: Any) -> Any:
    """A copy of a carry (dataclasses / dicts of tensors) that outlives the CUDA graph's next replay."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: clone_tensors(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value):
        return dataclasses.replace(value, **{f.name: clone_tensors(getattr(value, f.name)) for f in dataclasses.fields(value)})
    return value


def all_reduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Sum gradients over ranks in one flat buffer (the loss is already scaled by 1/global batch)."""
    grads = [p.grad for p in params if p.grad is not None]
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    for g, reduced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        g.copy_(reduced)


def train_step(state: TrainState, forward: Callable, batch: Batch, cfg: TrainConfig, world_size: int) -> dict[str, torch.Tensor]:
    """One ACT segment: forward, backward, all-reduce, schedule, step. Returns summed metrics."""
    state.step += 1  # the official schedule is evaluated at the post-increment step (1 for the first)
    if state.carry is None:
        state.carry = state.model.initial_carry(batch)
    if uses_cuda_graphs(cfg):
        torch.compiler.cudagraph_mark_step_begin()  # the graphs' outputs of the last step may be overwritten now
    state.carry, outputs = forward(carry=state.carry, batch=batch)
    if uses_cuda_graphs(cfg):
        state.carry = clone_tensors(state.carry)
    loss, metrics = (compiled_act_loss() if cfg.compile and cfg.compile_loss else act_loss)(state.carry, outputs, cfg.loss_type)
    (loss / cfg.global_batch_size).backward()
    if world_size > 1:
        all_reduce_grads(list(state.model.parameters()))
    lr = 0.0
    for optimizer, base_lr in zip(state.optimizers, state.base_lrs):
        lr = cosine_schedule_with_warmup(state.step, base_lr, cfg.lr_warmup_steps, state.total_steps, cfg.lr_min_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
    if state.ema is not None:
        state.ema.update(state.model)
    metrics["lr"] = torch.tensor(lr)
    return metrics


def reduce_train_metrics(sums: dict[str, torch.Tensor], global_batch_size: int, n_steps: int) -> dict[str, float]:
    """Official post-processing: losses per example of the global batch, the rest per halted row."""
    if dist.is_available() and dist.is_initialized():
        names = sorted(k for k in sums if k != "lr")
        stacked = torch.stack([sums[k].double() for k in names])
        dist.all_reduce(stacked)
        sums = {**sums, **dict(zip(names, stacked))}
    count = max(sums["count"].item(), 1)
    out = {}
    for k, v in sums.items():
        if k == "lr":
            out[k] = v.item()
        elif k.endswith("loss"):
            out[k] = v.item() / (global_batch_size * n_steps)
        elif k != "count":
            out[k] = v.item() / count
    out["count"] = sums["count"].item()
    return out


def save_training_checkpoint(path: Path, state: TrainState, loader: PuzzleLoader, cfg: TrainConfig, extra: dict[str, Any]) -> None:
    """The whole training state, with the configs and the dataset fingerprint a resume checks."""
    ckpt.save_atomic(
        {
            "model": state.model.state_dict(),
            "optimizers": [o.state_dict() for o in state.optimizers],
            "step": state.step,
            "total_steps": state.total_steps,
            "carry": ckpt.carry_to_dict(state.carry),
            "loader": loader.state_dict(),
            "rng": ckpt.rng_state(),
            "train_config": dataclasses.asdict(cfg),
            "model_config": dataclasses.asdict(state.model.config),
            "model_name": model_name_of(state.model.config),
            "ema": state.ema.state_dict() if state.ema is not None else None,
            "dataset_fingerprint": resume.dataset_fingerprint(cfg.data_path),
            **extra,
        },
        path,
    )


def save_or_warn(path: Path, state: TrainState, loader: PuzzleLoader, cfg: TrainConfig, extra: dict[str, Any]) -> bool:
    """Save a checkpoint; on a full disk (or quota) say where and carry on: the state stays in
    memory and the next interval tries again. Other errors still stop the run."""
    try:
        save_training_checkpoint(path, state, loader, cfg, extra)
        return True
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        logger.error("checkpoint %s not saved at step %d: %s; training continues, next try at the next checkpoint", path, state.step, err)
        return False


TRAINING_CHECKPOINT_KEYS = ("model", "optimizers", "step", "carry", "loader", "rng")


def restore_training_checkpoint(path: Path, state: TrainState, loader: PuzzleLoader, device: torch.device, cfg: TrainConfig | None = None) -> None:
    """Load a checkpoint of this loop, refusing one of another run (configs, data) or another kind."""
    saved = ckpt.load(path, map_location=device)
    if missing := [k for k in TRAINING_CHECKPOINT_KEYS if k not in saved]:
        raise ValueError(f"{path}: not a training checkpoint of puzzle_hrm.train (missing {missing}); "
                         "official weights are evaluated with python -m puzzle_hrm.evaluate, not resumed")
    if cfg is not None:
        resume.check_resumable(path, saved, dataclasses.asdict(cfg), dataclasses.asdict(state.model.config), resume.dataset_fingerprint(cfg.data_path))
    if len(saved["optimizers"]) != len(state.optimizers):
        raise ValueError(f"{path}: holds {len(saved['optimizers'])} optimizer states, the run has {len(state.optimizers)} optimizers")
    ckpt.load_model_weights(state.model, saved["model"], str(path))
    for optimizer, opt_state in zip(state.optimizers, saved["optimizers"], strict=True):
        optimizer.load_state_dict(opt_state)
    state.step = saved["step"]
    state.carry = ckpt.carry_from_dict(saved["carry"], device, state.model.inner.carry_type)
    if state.ema is not None:
        if saved.get("ema") is None:
            raise ValueError(f"checkpoint {path} holds no EMA weights but ema=true; resume with the setting it was trained with")
        state.ema.load_state_dict(saved["ema"], str(path))
    loader.load_state_dict(saved["loader"])
    ckpt.set_rng_state(saved["rng"])
    logger.info("resumed from %s at step %d", path, state.step)


def stop_now(stop: StopRequest, step: int, cfg: TrainConfig, world_size: int, device: torch.device) -> bool:
    """Whether to stop for a signal after this step; under DDP all ranks decide together at log steps."""
    if world_size == 1:
        return bool(stop)
    return step % cfg.log_every == 0 and any_rank(bool(stop), device)


def fit(cfg: TrainConfig, arch: PuzzleModelConfig, checkpoint_extra: dict[str, Any] | None = None,
        keep_predictions: Sequence[str] = ()) -> FitResult:
    """Train on cfg.data_path (official layout) and evaluate on its test split; the final evaluation
    returns the `keep_predictions` fields per test row (see evaluate.PREDICTION_FIELDS).
    SIGINT / SIGTERM stop after the current step: checkpoint saved, TrainingInterrupted raised."""
    with stop_on_signals() as stop:
        return _fit(cfg, arch, checkpoint_extra or {}, keep_predictions, stop)


def _fit(cfg: TrainConfig, arch: PuzzleModelConfig, checkpoint_extra: dict[str, Any], keep_predictions: Sequence[str], stop: StopRequest) -> FitResult:
    rank, world_size = world()
    device = resolve_device(cfg.device)
    train_loader = PuzzleLoader(cfg.data_path, "train", cfg.global_batch_size, mode="train", seed=cfg.seed, epochs_per_iter=cfg.eval_interval, rank=rank, world_size=world_size)
    state = build_state(cfg, arch, train_loader.metadata, device)
    forward = compile_forward(state.model, cfg)
    ckpt_path = Path(cfg.checkpoint_dir) / "last.pt" if cfg.checkpoint_dir else None
    if ckpt_path is not None:
        resume.check_start(ckpt_path, cfg.resume)
    if cfg.resume and ckpt_path is not None and ckpt_path.exists():
        restore_training_checkpoint(ckpt_path, state, train_loader, device, cfg)
    # opened now: an unreadable test split is found before the training, not after it
    test_loader = PuzzleLoader(cfg.data_path, "test", cfg.global_batch_size, mode="test", rank=rank, world_size=world_size)

    def run_eval(keep: Sequence[str] = (), n_steps: int | None = None) -> dict:
        start = time.perf_counter()
        with state.ema.applied(state.model) if state.ema is not None else contextlib.nullcontext():
            # the compiled module when compiling (eval mode gets its own graph), else the model itself
            metrics = evaluate(forward, test_loader, device, max_batches=cfg.eval_max_batches, keep_predictions=keep,
                               n_steps=n_steps, halt_max_steps=cfg.eval_halt_max_steps)  # ends with a host sync
        return {"step": state.step, "eval_seconds": time.perf_counter() - start, **metrics}

    _, last_step = planned_steps(cfg, train_loader.metadata)
    eval_every = max(1, official_total_steps(train_loader.metadata, cfg.eval_interval, cfg.global_batch_size))
    tracker = Tracker(cfg, total=last_step, initial=state.step, enabled=rank == 0)
    result = FitResult(steps=state.step, train_seconds=0.0, warmup_seconds=0.0, train_examples=0, final_eval={},
                       stop_reason="max_steps" if last_step < state.total_steps else "schedule")
    if state.step >= last_step:
        logger.info("checkpoint %s is at step %d, the last step of this run: nothing to train", ckpt_path, state.step)
    start_step = saved_step = state.step  # the checkpoint on disk holds saved_step
    sums: dict[str, torch.Tensor] = {}
    window = 0
    state.model.train()
    batches = iter(train_loader)
    out_of_time = False
    while state.step < last_step and not out_of_time:
        t0 = time.perf_counter()
        _, batch, effective_batch = next(batches)  # fetched only when it will be trained on (resume)
        metrics = train_step(state, forward, {k: v.to(device, non_blocking=True) for k, v in batch.items()}, cfg, world_size)
        sums = {k: sums.get(k, 0) + v.detach() for k, v in metrics.items() if k != "lr"} | {"lr": metrics["lr"]}
        window += 1
        first = result.train_examples == 0
        if state.step % cfg.log_every == 0 or state.step == last_step:
            result.last_train_metrics = reduce_train_metrics(sums, cfg.global_batch_size, window)  # host sync
            tracker.log({f"train/{k}": v for k, v in result.last_train_metrics.items()}, state.step)
            sums, window = {}, 0
        due_eval = state.step % eval_every == 0 and state.step < last_step
        due_ckpt = ckpt_path is not None and cfg.checkpoint_every > 0 and state.step % cfg.checkpoint_every == 0
        if first or due_eval or due_ckpt:
            synchronize(device)  # queued GPU work belongs to the training time
        dt = time.perf_counter() - t0
        if first:
            result.warmup_seconds = dt
        else:
            result.train_seconds += dt
        result.train_examples += effective_batch
        tracker.advance()
        if due_eval:
            result.evals.append(run_eval())
            tracker.log({f"eval/{k}": v for k, v in result.evals[-1].items() if isinstance(v, (int, float))}, state.step)
        if due_ckpt and rank == 0 and save_or_warn(ckpt_path, state, train_loader, cfg, checkpoint_extra):
            saved_step = state.step
        if cfg.max_train_seconds is not None and state.step % cfg.log_every == 0:
            out_of_time = any_rank(result.train_seconds >= cfg.max_train_seconds, device)  # all ranks stop together
            result.stop_reason = "max_train_seconds" if out_of_time else result.stop_reason
        if stop_now(stop, state.step, cfg, world_size, device):
            tracker.close()
            if ckpt_path and rank == 0:
                save_training_checkpoint(ckpt_path, state, train_loader, cfg, checkpoint_extra)
            raise TrainingInterrupted(stop.signal_name or "a stop signal on another rank", state.step, ckpt_path)
    t0 = time.perf_counter()
    synchronize(device)  # work still queued belongs to the training time
    result.train_seconds += time.perf_counter() - t0
    if ckpt_path and rank == 0 and state.step != saved_step:
        save_or_warn(ckpt_path, state, train_loader, cfg, checkpoint_extra)
    result.final_eval = run_eval(keep_predictions, cfg.test_time_steps)
    result.evals.append(result.final_eval)
    tracker.log({f"eval/{k}": v for k, v in result.final_eval.items() if isinstance(v, (int, float))}, state.step)
    tracker.close()
    result.steps, result.trained_steps = state.step, state.step - start_step
    result.model = state.model
    return result
