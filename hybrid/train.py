"""Training the hybrid and its baselines: one loop, any model that implements `Trainable`.

    for step = 1 .. max_steps:
        batch = step's slice of a seeded permutation: cached LLM states, or the collator's batch
        loss  = model.training_loss(batch, verifier scores of each segment's teacher-forced answer)
                (deep supervision over segments; the scores feed ACT's halting targets)
        AdamW step on the trainable parts after clipping the gradient norm
        every eval_every steps: verifier accuracy on the fixed held-out set → eval_curve.csv
        every save_every steps and at the end: checkpoint (trainable parts, optimizer, step, RNG)

The loop never knows which model it trains: the hybrid (HRM controller on cached LLM states),
the HRM-only model and LoRA all plug in through the `Trainable` protocol.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from hybrid.backbone import Backbone
from hybrid.features import FeatureBatch, FeatureCache, open_or_build
from hybrid.generate import Answers, DecodeConfig
from hybrid.tasks import Collator, Example, Task, get_task
from puzzle_hrm import resume
from puzzle_hrm.checkpoint import load, rng_state, save_atomic, set_rng_state
from puzzle_hrm.data.format import IGNORE_LABEL_ID, atomic_write_text
from puzzle_hrm.stop import StopRequest, TrainingInterrupted, stop_on_signals
from puzzle_hrm.tracking import Tracker

logger = logging.getLogger(__name__)

# Per segment, the (B, T) token ids the model predicts for each label position (teacher-forced
# argmax, read only where labels != IGNORE_LABEL_ID) -> per segment the (B,) verifier scores.
CorrectFn = Callable[[Sequence[Tensor]], list[Tensor]]
# Examples, decoding settings, a seeded generator -> one completion per example (Trainable.answer's shape).
AnswerFn = Callable[[list[Example], DecodeConfig, torch.Generator], Answers]


@runtime_checkable
class Trainable(Protocol):
    """What the training loop needs of a model."""

    uses_cached_states: bool  # True: batches are FeatureBatch (hybrid.features); False: the collator's dict batches

    def parameters(self) -> Iterator[nn.Parameter]:
        """The trainable parameters only (the frozen LLM's are not among them)."""
        ...

    def training_loss(self, batch: Any, correct_fn: CorrectFn) -> tuple[Tensor, dict[str, float]]:
        """The loss to backpropagate and scalars to log; call correct_fn only when ACT needs verifier scores."""
        ...

    def answer(self, examples: list[Example], decode: DecodeConfig, generator: torch.Generator) -> Answers:
        """Generated completions for evaluation (the verifier reads them), with tokens and HRM segments used."""
        ...

    def state_dict(self) -> Mapping[str, Tensor]:
        """The trainable parts only."""
        ...

    def load_state_dict(self, state_dict: Mapping[str, Tensor]) -> Any: ...


@dataclass
class HybridTrainConfig:
    """The training loop's settings (the HRM-LM prototype's names); the model's own live in HybridConfig (eval_segments too)."""

    tasks: tuple[str, ...] = ("addition",)  # task names (hybrid.tasks.get_task), mixed in equal shares
    train_n: int = 2000  # training examples per task (the cache holds their LLM states)
    eval_n: int = 100  # held-out evaluation examples in all, split evenly over the tasks
    seed: int = 0  # data, initialisation and sampling
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # max global gradient norm; 0: off
    batch_size: int = 16
    max_steps: int = 300
    max_train_seconds: float | None = None  # stop after this much optimisation time, evaluated and saved (a row's stop_reason says so)
    eval_every: int = 100  # steps; the last step always evaluates
    eval_batch_size: int = 32
    save_every: int = 0  # steps between checkpoints; 0: only at the end
    log_samples_every: int = 100  # steps between logged spot-check completions; 0: off
    samples_logged: int = 3
    max_new_tokens: int = 16
    temperature: float = 0.0  # decoding at evaluation (0: greedy)
    top_p: float = 1.0
    top_k: int = 0
    resume: bool = False  # continue from output_dir/checkpoint.pt if it is there
    cache_dir: str | None = None  # feature cache on disk (memory-mapped); None: in memory
    output_dir: str = "outputs/hybrid"  # checkpoint.pt, eval_curve.csv
    progress: bool = True  # tqdm bar
    wandb: bool = False
    wandb_project: str = "hrm-bench-hybrid"

    def __post_init__(self) -> None:
        self.tasks, self.betas = tuple(self.tasks), tuple(self.betas)
        counts = {k: getattr(self, k) for k in ("train_n", "eval_n", "batch_size", "max_steps", "eval_every", "eval_batch_size", "max_new_tokens")}
        too_small = [f"{k}={v}" for k, v in counts.items() if v < 1]
        if too_small:
            raise ValueError(f"these must be >= 1: {', '.join(too_small)}")
        if not self.tasks:
            raise ValueError("tasks must name at least one task")
        if self.eval_n < len(self.tasks):
            raise ValueError(f"eval_n={self.eval_n} gives no evaluation example to some of the {len(self.tasks)} tasks")

    @property
    def decode(self) -> DecodeConfig:
        return DecodeConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, seed=self.seed)


def answer_scores(predictions: Sequence[Tensor], labels: Tensor, examples: Sequence[Example], tasks: Mapping[str, Task], tokenizer: PreTrainedTokenizerBase) -> list[Tensor]:
    """Per segment, the verifier's (B,) score of each row's teacher-forced answer: the predicted
    ids at the answer's label positions, decoded to text (ACT's halting target). Cheap: a few
    short decodes per row, no generation."""
    answer = labels != IGNORE_LABEL_ID
    scores = []
    for predicted in predictions:
        predicted = predicted.to(labels.device)
        texts = [tokenizer.decode(predicted[row][answer[row]].tolist(), skip_special_tokens=True) for row in range(len(examples))]
        scores.append(torch.tensor([tasks[ex.task].verify(ex, text) for ex, text in zip(examples, texts)]))
    return scores


@dataclass
class TrainData:
    """The tasks, a fixed training set and a fixed held-out evaluation set (both from the seed),
    and, for models that train on cached LLM states, their feature cache.

    The batch of step s depends only on (seed, s): a seeded permutation per epoch. So the data
    position is the step, and resuming needs nothing more.
    """

    tasks: dict[str, Task]
    train: list[Example]
    eval: list[Example]
    collator: Collator
    seed: int
    cache: FeatureCache | None = None  # the active one (the cut of the model being trained)
    caches: dict[int | None, FeatureCache] = field(default_factory=dict)  # every cut built so far

    @classmethod
    def build(cls, config: HybridTrainConfig, collator: Collator) -> TrainData:
        tasks = {name: get_task(name) for name in config.tasks}
        eval_shares = [config.eval_n // len(tasks) + (i < config.eval_n % len(tasks)) for i in range(len(tasks))]
        train = [ex for task in tasks.values() for ex in task.examples("train", config.train_n, config.seed)]
        evals = [ex for task, n in zip(tasks.values(), eval_shares) for ex in task.examples("eval", n, config.seed)]
        return cls(tasks, train, evals, collator, config.seed)

    def cache_states(self, backbone: Backbone, directory: str | None, batch_size: int = 32, layer: int | None = None) -> FeatureCache:
        """Run the frozen LLM once over the training set (the collator's batches, in order), keeping
        the states at `layer` (None: the pre-norm last states); a cut already built is reused.
        On disk a cut after layer k lives in the subfolder layer<k>."""
        if layer not in self.caches:
            batches = [self.collator(self.train[i : i + batch_size]) for i in range(0, len(self.train), batch_size)]
            if directory:
                self.caches[layer] = open_or_build(directory if layer is None else str(Path(directory) / f"layer{layer}"), backbone, batches, layer=layer)
            else:
                self.caches[layer] = FeatureCache.build(backbone, batches, layer=layer)
        self.cache = self.caches[layer]
        return self.cache

    def indices(self, step: int, batch_size: int) -> Tensor:
        """The training examples of step `step`: consecutive slices of one seeded permutation per epoch."""
        n = len(self.train)
        if batch_size > n:
            raise ValueError(f"batch_size {batch_size} exceeds the {n} training examples")
        per_epoch = n // batch_size  # the tail of each permutation is skipped: equal batches
        epoch, k = divmod(step, per_epoch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        return order[k * batch_size : (k + 1) * batch_size]

    def batch(self, step: int, batch_size: int, cached: bool) -> tuple[FeatureBatch | dict[str, Any], CorrectFn]:
        """Step `step`'s batch (cached states or the collator's dict) and its verifier-score function."""
        indices = self.indices(step, batch_size)
        examples = [self.train[i] for i in indices.tolist()]
        if cached:
            if self.cache is None:
                raise ValueError("this model trains on cached LLM states: call cache_states(backbone, …) first")
            batch: FeatureBatch | dict[str, Any] = self.cache.batch(indices)
            labels = batch.labels
        else:
            batch = self.collator(examples)
            labels = batch["labels"]
        return batch, partial(answer_scores, labels=labels, examples=examples, tasks=self.tasks, tokenizer=self.collator.tokenizer)


@dataclass
class FitResult:
    steps: int
    train_seconds: float  # optimisation steps only (no evaluation, no checkpointing)
    train_examples: int  # examples trained on in this call (after a resume: since the resume)
    final_eval: dict[str, float]
    curve: list[dict[str, float]] = field(default_factory=list)

    stop_reason: str = "max_steps"  # max_steps | max_train_seconds: the budget that ended the run (a result row's column)

    @property
    def train_examples_per_s(self) -> float | None:
        return self.train_examples / self.train_seconds if self.train_seconds > 0 and self.train_examples > 0 else None


@contextmanager
def evaluating(module: Any) -> Iterator[None]:
    """`module` in eval mode (a centered bridge then uses its running statistics, not the batch's),
    its own mode restored after. A Trainable that is no nn.Module (LoRATrainable: its LLM always is
    in eval mode) is left as it is."""
    if not isinstance(module, torch.nn.Module):
        yield
        return
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def train_step(trainable: Trainable, optimizer: torch.optim.Optimizer, batch: Any, correct_fn: CorrectFn, grad_clip: float) -> dict[str, float]:
    loss, scalars = trainable.training_loss(batch, correct_fn)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        scalars["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(list(trainable.parameters()), grad_clip))
    optimizer.step()
    return scalars


def evaluate(answer: AnswerFn, data: TrainData, config: HybridTrainConfig) -> tuple[dict[str, float], list[str]]:
    """Verifier accuracy (full marks only) on the fixed held-out set, overall and per task; and the
    completions. `answer` is a Trainable's, or an untrained baseline's.

    Also: decode_tokens_per_s, the tokens generated over the wall time of answering (prompt pass,
    HRM segments and decoding, at eval_batch_size), and with an HRM mean_segments, the segments its
    answers came from (fewer than eval_segments when the ACT q-head halts early)."""
    generator = torch.Generator().manual_seed(config.seed)  # the same sampling at every evaluation
    start_time = time.perf_counter()
    answers = Answers.join([answer(data.eval[start : start + config.eval_batch_size], config.decode, generator) for start in range(0, len(data.eval), config.eval_batch_size)])
    seconds = time.perf_counter() - start_time  # texts are on the host: the device has finished
    correct = {name: [] for name in data.tasks}
    for example, completion in zip(data.eval, answers.texts, strict=True):
        correct[example.task].append(float(data.tasks[example.task].is_correct(example, completion)))
    metrics = {"verifier_accuracy": sum(map(sum, correct.values())) / len(data.eval), "decode_tokens_per_s": answers.new_tokens / seconds}
    if answers.segments_used is not None:
        metrics["mean_segments"] = sum(answers.segments_used) / len(answers.segments_used)
    metrics.update({f"verifier_accuracy/{name}": sum(v) / len(v) for name, v in correct.items()})
    return metrics, answers.texts


def log_samples(step: int, examples: Sequence[Example], completions: Sequence[str]) -> None:
    for example, completion in zip(examples, completions):
        logger.info("step %d sample [%s] %r -> %r (gold %r)", step, example.task, example.question[-80:], completion, example.answer)


def append_curve(path: Path, row: Mapping[str, float]) -> None:
    """Add one evaluation to the CSV curve (rewritten atomically). The header is every column any row
    has, in order of appearance: a resumed run may log columns an older curve lacks (left empty)."""
    rows = list(csv.DictReader(io.StringIO(path.read_text()))) if path.is_file() else []
    rows.append(dict(row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


def save_checkpoint(path: Path, trainable: Trainable, optimizer: torch.optim.Optimizer, step: int, config: HybridTrainConfig) -> None:
    """Trainable parts, optimizer, step (= the data position, see TrainData), RNG and config."""
    state = {"model": dict(trainable.state_dict()), "optimizer": optimizer.state_dict(), "step": step, "rng": rng_state(), "config": asdict(config)}
    save_atomic(state, path)


# HybridTrainConfig keys that drive a run without changing what it trains (may differ on resume)
RUN_CONTROLS = frozenset({"max_steps", "max_train_seconds", "resume", "output_dir", "cache_dir", "progress", "wandb", "wandb_project", "eval_every",
                          "eval_batch_size", "save_every", "log_samples_every", "samples_logged"})
CHECKPOINT_KEYS = ("model", "optimizer", "step", "rng", "config")


def load_checkpoint(path: Path, trainable: Trainable, optimizer: torch.optim.Optimizer, config: HybridTrainConfig | None = None) -> int:
    """Restore a checkpoint of this loop, refusing one of another kind or trained with other settings."""
    state = load(path)  # weights_only=True
    if missing := [k for k in CHECKPOINT_KEYS if k not in state]:
        raise ValueError(f"{path}: not a checkpoint of hybrid.train (missing {missing})")
    if config is not None:
        resume.refuse(path, resume.section_differences("train", state["config"], asdict(config), RUN_CONTROLS))
    try:
        trainable.load_state_dict(state["model"])
    except RuntimeError as err:  # missing / unexpected / mis-shaped tensors: another model
        raise ValueError(f"{path}: does not fit the model: {err}") from None
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    return state["step"]


def build_optimizer(trainable: Trainable, config: HybridTrainConfig) -> torch.optim.AdamW:
    """The loop's AdamW over the trainable parts only (the prototype's betas and weight decay)."""
    return torch.optim.AdamW(list(trainable.parameters()), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)


def fit(trainable: Trainable, data: TrainData, config: HybridTrainConfig) -> FitResult:
    """The loop above. Seed before building the model: with the same seed the run is the same,
    and with `resume` it continues bit-identically from output_dir/checkpoint.pt (on CPU).
    SIGINT / SIGTERM stop after the current step: checkpoint saved, TrainingInterrupted raised."""
    with stop_on_signals() as stop:
        return _fit(trainable, data, config, stop)


def _fit(trainable: Trainable, data: TrainData, config: HybridTrainConfig, stop: StopRequest) -> FitResult:
    output = Path(config.output_dir)
    checkpoint, curve_path = output / "checkpoint.pt", output / "eval_curve.csv"
    optimizer = build_optimizer(trainable, config)
    resume.check_start(checkpoint, config.resume)
    start = load_checkpoint(checkpoint, trainable, optimizer, config) if config.resume and checkpoint.is_file() else 0
    if start:
        logger.info("resumed from %s at step %d", checkpoint, start)
    elif curve_path.is_file():
        curve_path.unlink()  # a fresh run's curve holds this run only (its checkpoint is replaced too)
    tracker = Tracker(config, total=config.max_steps, initial=start)
    train_seconds, curve, final, step, stop_reason = 0.0, [], {}, start, "max_steps"
    for step in range(start + 1, config.max_steps + 1):
        batch, correct_fn = data.batch(step - 1, config.batch_size, trainable.uses_cached_states)
        tick = time.perf_counter()
        scalars = train_step(trainable, optimizer, batch, correct_fn, config.grad_clip)  # with grad_clip, reading grad_norm waits for the device
        train_seconds += time.perf_counter() - tick
        tracker.advance()
        tracker.log({f"train/{k}": v for k, v in scalars.items()}, step)
        if config.max_train_seconds is not None and train_seconds >= config.max_train_seconds and step < config.max_steps:
            stop_reason = "max_train_seconds"
        last = step == config.max_steps or stop_reason == "max_train_seconds"
        completions = None
        if step % config.eval_every == 0 or last:
            final, completions = evaluate(trainable.answer, data, config)
            curve.append({"step": step, **final})
            append_curve(curve_path, curve[-1])
            tracker.log({f"eval/{k}": v for k, v in final.items()}, step)
        if config.log_samples_every and step % config.log_samples_every == 0:
            shown = data.eval[: config.samples_logged]
            log_samples(step, shown, completions or trainable.answer(shown, config.decode, torch.Generator().manual_seed(config.seed)).texts)
        if (config.save_every and step % config.save_every == 0) or last or stop:
            save_checkpoint(checkpoint, trainable, optimizer, step, config)
        if stop:
            tracker.close()
            raise TrainingInterrupted(stop.signal_name, step, checkpoint)
        if last:
            break
    tracker.close()
    if not final:  # resumed at max_steps: nothing trained, still report the model's accuracy
        final, _ = evaluate(trainable.answer, data, config)
    return FitResult(step, train_seconds, (step - start) * config.batch_size, final, curve, stop_reason)
