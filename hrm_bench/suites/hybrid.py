"""`python -m hrm_bench.run suite=hybrid`: every hybrid variant on the same data, seed and eval set.

One pass: load the frozen LLM, fix the tasks' training and held-out sets, then per variant build
(or prompt) the model, train it with `hybrid.train.fit` if it trains, evaluate verifier accuracy
on the held-out set, and append one row to results/runs.csv. The HRM variants share one feature
cache of the LLM's states, built once. At the end results/hybrid-<hardware profile>.md (e.g.
hybrid-cpu.md, hybrid-h100.md) compares the variants.
On a GPU profile the LLM and every trained part live on the GPU; the cache stays in host memory
and each batch is copied over. The frozen LLM runs in `backbone_dtype` (float32 by default, on
every device; bfloat16 for larger LLMs); the trained parts stay float32. `matmul_precision` is
torch.set_float32_matmul_precision's: "highest" (the default) keeps float32 matmuls exact, "high"
lets a GPU run them as TF32.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import transformers
from omegaconf import DictConfig, OmegaConf

from hrm_bench import metrics, records, rundirs
from hrm_bench.profiles import HardwareProfile, detect_profile
from hybrid.backbone import Backbone, backbone_by_name
from hybrid.baselines import llm_only_answers
from hybrid.config import HybridConfig
from hybrid.generate import Answers
from hybrid.hrm_only import HRMOnlyTrainable
from hybrid.lora import LoRATrainable
from hybrid.prefix import PrefixTrainable
from hybrid.tasks import Collator, Example
from hybrid.train import RUN_CONTROLS, AnswerFn, HybridTrainConfig, TrainData, Trainable, evaluate, fit
from hybrid.trainable import HybridTrainable, hybrid_trainable
from puzzle_hrm import resume
from puzzle_hrm.typed_config import check_keys, typed

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
HRM_VARIANTS: dict[str, dict[str, Any]] = {  # HybridConfig settings of each HRM-controller variant
    "hrm_grb": {"injector": "grb", "logit_bias_head": False},
    "hrm_cab": {"injector": "cab", "logit_bias_head": False},
    "hrm_grb_vocab": {"injector": "grb", "logit_bias_head": True},
    "hrm_cab_vocab": {"injector": "cab", "logit_bias_head": True},
    "hrm_grb_act": {"injector": "grb", "logit_bias_head": False, "use_act": True},
    # injected after half the LLM's layers, so its frozen top half reads the signal (the rows above: after the last layer, the baseline)
    "hrm_grb_mid": {"injector": "grb", "logit_bias_head": False, "inject_depth": 0.5},
    "hrm_cab_mid": {"injector": "cab", "logit_bias_head": False, "inject_depth": 0.5},
    "hrm_tokens_grb_mid": {"injector": "grb", "logit_bias_head": False, "inject_depth": 0.5, "input_tokens": 16},
    # the diagnosis' two levers (results/hybrid-diagnosis.md): delta at the stream's scale, input standardised over the questions
    "hrm_cab_rel_centered": {"injector": "cab", "logit_bias_head": False, "relative_injection": True, "centered_input": True},
    "hrm_grb_mid_rel_centered": {"injector": "grb", "logit_bias_head": False, "inject_depth": 0.5, "relative_injection": True, "centered_input": True},
    # z_H as 4 soft tokens between prompt and answer, read by every layer of the LLM (hybrid.prefix)
    "hrm_prefix_centered": {"injector": "prefix", "logit_bias_head": False, "centered_input": True},
    # its levers: 16 soft tokens (more room for a multi-digit answer); the loss on the last segment only
    # (one CE, not the sum of 3, and one LLM pass per step instead of 3)
    "hrm_prefix16_centered": {"injector": "prefix", "logit_bias_head": False, "centered_input": True, "prefix_tokens": 16},
    "hrm_prefix_last_centered": {"injector": "prefix", "logit_bias_head": False, "centered_input": True, "deep_supervision": False},
    # and z_H as 4 key/value slots in every layer's attention too (prefix tuning): every layer reads the
    # controller directly, as LoRA changes every layer, not only through the first layer's soft tokens
    "hrm_prefix_kv_centered": {"injector": "prefix", "logit_bias_head": False, "centered_input": True, "prefix_kv_tokens": 4},
}
LLM_ONLY = ("llm_zero_shot", "llm_few_shot")
VARIANTS = (*LLM_ONLY, *HRM_VARIANTS, "hrm_only", "lora")
BACKBONE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision
DATA_PROVENANCE = "generated: toy addition (hybrid.tasks) and reasoning-gym generators, hash-disjoint train/eval"


@dataclass
class SuitePlan:
    backbone: str
    backbone_dtype: torch.dtype
    matmul_precision: str  # float32 matmuls: "highest" exact, "high" TF32 on a GPU
    variants: tuple[str, ...]
    few_shot: int
    train: HybridTrainConfig
    model: dict[str, Any]  # HybridConfig fields shared by the HRM variants
    variant_train: dict[str, dict[str, Any]]  # per-variant HybridTrainConfig overrides
    eval_segments: tuple[int, ...]  # extra evaluations of each trained HRM variant at these segment counts, one row each
    profile: HardwareProfile
    seed: int
    results_dir: Path
    output_dir: Path  # checkpoint_root: one folder per variant and configuration (variant_dir)


def plan_from_config(cfg: DictConfig, overrides: list[str]) -> SuitePlan:
    """The suite with its cpu:/gpu: block merged in; command-line `suite.<section>.<key>=` keys win."""
    from hrm_bench.run import check_top_level  # the keys every suite shares (seed, paths, hardware)

    top = check_top_level(cfg, SUITE_KEYS, ("train", "model", "variant_train", "eval_segments"))
    profile = detect_profile(top["hardware.profile"])
    suite = OmegaConf.to_container(cfg.suite, resolve=True)
    tier = "cpu" if profile.device == "cpu" else "gpu"
    block = suite.get(tier) or {}
    sections = {key: {**(suite.get(key) or {}), **block.get(key, {})} for key in ("train", "model", "variant_train")}
    for override in overrides:
        path = override.lstrip("+~").split("=", 1)[0].split(".")
        if len(path) == 3 and path[0] == "suite" and path[1] in sections:
            sections[path[1]][path[2]] = OmegaConf.to_container(cfg.suite[path[1]], resolve=True)[path[2]]
    keys = {override.lstrip("+~").split("=", 1)[0] for override in overrides}  # command-line keys win over the tier block
    unknown = sorted(set(suite["variants"]) - set(VARIANTS))
    if unknown:
        raise ValueError(f"suite.variants: unknown hybrid variants {unknown}; choose from {list(VARIANTS)}")
    typed(HybridConfig, sections["model"], "suite.model")  # names a bad key before any model is built
    train = typed(HybridTrainConfig, {**sections["train"], "seed": top["seed"]}, "suite.train")
    check_keys(sections["variant_train"], VARIANTS, "suite.variant_train")
    for variant, values in sections["variant_train"].items():
        typed(HybridTrainConfig, {**sections["train"], **values}, f"suite.variant_train.{variant}")
    return SuitePlan(
        backbone=suite["backbone"],
        backbone_dtype=backbone_dtype(suite.get("backbone_dtype", "float32")),
        matmul_precision=matmul_precision(suite.get("matmul_precision", "highest")),
        variants=tuple(suite["variants"]),
        few_shot=suite["few_shot"],
        train=train,
        model=sections["model"],
        variant_train=sections["variant_train"],
        eval_segments=tuple((suite.get("eval_segments") if "suite.eval_segments" in keys else block.get("eval_segments", suite.get("eval_segments"))) or ()),
        profile=profile,
        seed=top["seed"],
        results_dir=Path(top["results_dir"]),
        output_dir=Path(top["checkpoint_root"]),
    )


SUITE_KEYS = ("kind", "name", "backbone", "backbone_dtype", "matmul_precision", "variants", "few_shot", "eval_segments", "train", "model", "variant_train", "cpu", "gpu")


def variant_train(plan: SuitePlan, variant: str) -> HybridTrainConfig:
    """The variant's training config, its output_dir named by everything that makes its result:
    hybrid-<variant>-<backbone>-<profile>-seed<n>-<hash8> (run controls left out: a longer budget continues it)."""
    train = replace(plan.train, **plan.variant_train.get(variant, {}))
    identity = {"variant": variant, "backbone": plan.backbone, "backbone_dtype": str(plan.backbone_dtype), "matmul_precision": plan.matmul_precision, "few_shot": plan.few_shot,
                "model": plan.model, "train": resume.result_keys(asdict(train), RUN_CONTROLS), "hardware": plan.profile.name}
    prefix = f"hybrid-{variant}-{plan.backbone.replace('/', '_')}-{plan.profile.name}-seed{plan.seed}"
    return replace(train, output_dir=str(rundirs.run_dir(plan.output_dir, prefix, identity)))


def backbone_dtype(name: str) -> torch.dtype:
    if name not in BACKBONE_DTYPES:
        raise ValueError(f"backbone_dtype must be one of {sorted(BACKBONE_DTYPES)}, got {name!r}")
    return BACKBONE_DTYPES[name]


def matmul_precision(name: str) -> str:
    if name not in MATMUL_PRECISIONS:
        raise ValueError(f"matmul_precision must be one of {list(MATMUL_PRECISIONS)}, got {name!r}")
    return name


def config_column(plan: SuitePlan) -> str:
    """The row's `config`: what sets the numerics besides the variant (the transformers version too:
    5.17 and 5.24 read the same GGUF differently, see hybrid.backbone.align_eos)."""
    dtype = str(plan.backbone_dtype).removeprefix("torch.")
    return f"backbone_dtype={dtype} matmul_precision={plan.matmul_precision} transformers={transformers.__version__}"


def llm_only(backbone: Backbone, data: TrainData, shots: int, seed: int) -> AnswerFn:
    """The frozen LLM's answers, prompted per task (few-shot shots come from that task's train split)."""

    def answer(examples: list[Example], decode, generator: torch.Generator) -> Answers:
        completions: dict[int, str] = {}
        new_tokens = 0
        for name, task in data.tasks.items():
            rows = [i for i, ex in enumerate(examples) if ex.task == name]
            if rows:
                answers = llm_only_answers(backbone, task, [examples[i] for i in rows], decode, generator, shots, shot_seed=seed)
                completions.update(zip(rows, answers.texts))
                new_tokens += answers.new_tokens
        return Answers([completions[i] for i in range(len(examples))], new_tokens)

    return answer


def hrm_config(model: dict[str, Any], variant: str) -> HybridConfig:
    """The HRM variant's HybridConfig: the suite's shared `model` fields, then the variant's own."""
    return HybridConfig(**{**model, **HRM_VARIANTS[variant]})


def build_trainable(model: dict[str, Any], seed: int, variant: str, backbone: Backbone, data: TrainData) -> Trainable:
    """The variant's model, seeded the same way for every variant, on the backbone's device."""
    torch.manual_seed(seed)  # the same initialisation stream for every variant
    if variant == "lora":  # as many trainable parameters as the HRM controller (hrm_grb); adapters sit on the backbone
        target = sum(p.numel() for p in hybrid_trainable(hrm_config(model, "hrm_grb"), backbone, data.collator).parameters())
        return LoRATrainable(backbone, data.collator, target)
    if variant in HRM_VARIANTS:
        return hybrid_trainable(hrm_config(model, variant), backbone, data.collator).to(backbone.device)
    return HRMOnlyTrainable(HybridConfig(**model), backbone.tokenizer, data.collator).to(backbone.device)


def hardware_columns(profile: HardwareProfile) -> dict[str, Any]:
    """The result row's machine columns (run.py's rows spell the same ones out)."""
    return {"hardware": profile.name, "device": profile.device_name, "n_gpus": profile.n_gpus, "torch": profile.torch, "cuda": profile.cuda}


def run_variant(plan: SuitePlan, variant: str, backbone: Backbone, data: TrainData) -> list[dict[str, Any]]:
    """Train (if it trains) and evaluate one variant: its result row, then for a trained HRM variant
    one row per `eval_segments` count ("<variant>@seg<n>": the same weights thinking longer or shorter)."""
    train = variant_train(plan, variant)
    start = time.perf_counter()
    peak = metrics.PeakMemory(plan.profile.device)
    peak.reset()  # per variant on a GPU; on CPU the process's peak so far
    trainable = None
    if variant in LLM_ONLY:
        shots = plan.few_shot if variant == "llm_few_shot" else 0
        final, _ = evaluate(llm_only(backbone, data, shots, plan.seed), data, train)
        params, steps, examples_per_s, stop_reason = 0, 0, None, None
    else:
        trainable = build_trainable(plan.model, plan.seed, variant, backbone, data)
        result = fit(trainable, data, train)
        final, steps, examples_per_s, stop_reason = result.final_eval, result.steps, result.train_examples_per_s, result.stop_reason
        params = sum(p.numel() for p in trainable.parameters())
    row = result_row(plan, variant, final, params, steps, time.perf_counter() - start, examples_per_s, peak.gib(), stop_reason)
    rows = [row]
    if isinstance(trainable, (HybridTrainable, PrefixTrainable)) and plan.eval_segments:
        completions = {}
        for n in plan.eval_segments:
            trainable.lm.config.eval_segments = n
            swept, completions[n] = evaluate(trainable.answer, data, train)
            rows.append(result_row(plan, f"{variant}@seg{n}", swept, params, steps, row["wall_s"], examples_per_s, peak.gib(), stop_reason))
        logger.info("hybrid suite: %s %s", variant, segment_agreement(completions))
    return rows


def segment_agreement(completions: dict[int, list[str]]) -> str:
    """How many answers change with the segment count (equal accuracy can hide changed answers)."""
    (first, reference), *rest = completions.items()
    changed = [f"@seg{n} {sum(a != b for a, b in zip(reference, texts, strict=True))} of {len(texts)}" for n, texts in rest]
    return f"answers that differ from @seg{first}: " + (", ".join(changed) or "no other segment count")


def result_row(plan: SuitePlan, variant: str, final: dict[str, float], params: int, steps: int, wall_s: float, examples_per_s: float | None, peak_gib: float,
               stop_reason: str | None) -> dict[str, Any]:
    return {
        **records.run_stamp("hrm_bench.run", REPO_ROOT),
        "suite": "hybrid",
        "model": plan.backbone,
        "variant": variant,
        "data": "+".join(plan.train.tasks),
        "data_provenance": DATA_PROVENANCE,
        "seed": plan.seed,
        **hardware_columns(plan.profile),
        "params": params,
        "steps": steps,
        "wall_s": wall_s,
        "train_examples_per_s": examples_per_s,
        "peak_mem_gib": peak_gib,
        "mean_halt_steps": final.get("mean_segments"),  # HRM segments the answers came from
        "verifier_accuracy": final["verifier_accuracy"],
        "decode_tokens_per_s": final["decode_tokens_per_s"],
        "config": config_column(plan),
        "stop_reason": stop_reason,
        "_per_task": {k.split("/", 1)[1]: v for k, v in final.items() if "/" in k},  # for the comparison table only
    }


def comparison_table(plan: SuitePlan, rows: list[dict[str, Any]], cache_s: float | None) -> str:
    tasks = list(plan.train.tasks)
    header = ["variant", "verifier acc.", *(f"{t} acc." for t in tasks), "mean segments", "trainable params", "steps", "train ex/s", "decode tok/s", "wall s", "peak mem GiB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        rate = f"{row['train_examples_per_s']:.1f}" if row["train_examples_per_s"] else ""
        segments = f"{row['mean_halt_steps']:.2f}" if row["mean_halt_steps"] is not None else ""
        cells = [row["variant"], f"{row['verifier_accuracy']:.3f}", *(f"{row['_per_task'][t]:.3f}" for t in tasks), segments, f"{row['params']:,}", str(row["steps"]), rate, f"{row['decode_tokens_per_s']:.1f}", f"{row['wall_s']:.0f}", f"{row['peak_mem_gib']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    train = plan.train
    notes = [
        f"- backbone: {plan.backbone} ({config_column(plan)}); device: {plan.profile.device_name} ({plan.profile.name}), torch {plan.profile.torch}; seed {plan.seed}",
        f"- tasks: {', '.join(tasks)}; {train.train_n} train examples per task, {train.eval_n} held-out eval questions in all (the same for every variant); greedy decoding, at most {train.max_new_tokens} new tokens",
        f"- training: batch {train.batch_size}, lr {train.lr}, AdamW {train.betas} wd {train.weight_decay}, clip {train.grad_clip}; steps per variant in the table; HRM controller {plan.model}",
        f"- feature cache (the LLM's states at each injection cut for the HRM variants, built once per cut, not in their wall s): {cache_s:.0f} s" if cache_s is not None else "- no feature cache was needed",
        "- `_mid` variants inject after half the LLM's layers (its frozen top half reads the signal); the others after its last layer (the baseline); `<variant>@seg<n>`: the same trained weights decoded with n segments",
        "- peak mem: on a GPU torch's peak allocation during the variant; on CPU the process's peak RSS so far (cumulative, in run order)",
        f"- verifier accuracy counts full marks only; mean segments: HRM segments the answers came from (eval_segments {HybridConfig(**plan.model).eval_segments}, fewer where the ACT q-head halts); "
        f"decode tok/s: tokens generated over the wall time of answering the held-out set (prompt pass, HRM, decoding; batches of {train.eval_batch_size})",
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def finished_variant(plan: SuitePlan, variant: str, output_dir: str) -> dict[str, Any] | None:
    """With resume, the saved row of a variant that already ran its steps (not evaluated or recorded again)."""
    saved = rundirs.saved_row(output_dir) if plan.train.resume else None
    trains = variant not in LLM_ONLY
    if saved is None or (trains and saved["row"]["steps"] != variant_train(plan, variant).max_steps):
        return None
    if saved["recorded_in"] is None:
        from hrm_bench.run import RUNS_HEADER

        rundirs.record_row(plan.results_dir / "runs.csv", saved["row"], output_dir, RUNS_HEADER)
    logger.info("hybrid suite: %s already finished; its row (%s) is in %s", variant, saved["row"]["date"], plan.results_dir / "runs.csv")
    return saved["row"]


@contextmanager
def float32_matmul_precision(precision: str) -> Iterator[None]:
    """torch.set_float32_matmul_precision for the block, the process's own restored after."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def run_suite(plan: SuitePlan) -> list[dict[str, Any]]:
    """Every variant of the plan under its float32 matmul precision (the process's own restored after)."""
    with float32_matmul_precision(plan.matmul_precision):
        return compare_variants(plan)


def compare_variants(plan: SuitePlan) -> list[dict[str, Any]]:
    from hrm_bench.run import RUNS_HEADER  # the runs.csv header text lives with the other suites

    records.check_writable(plan.results_dir)  # before the training, not after it
    print(f"results: {(plan.results_dir / 'runs.csv').resolve()}\ncheckpoints: {plan.output_dir.resolve()}", flush=True)
    backbone = backbone_by_name(plan.backbone, plan.backbone_dtype, device=plan.profile.device)
    data = TrainData.build(plan.train, Collator(backbone.tokenizer, backbone.max_positions))
    rows, cache_s = [], None
    for variant in plan.variants:
        logger.info("hybrid suite: variant %s", variant)
        if variant in HRM_VARIANTS:  # each cut's cache is built once, before the variant's clock starts
            tick = time.perf_counter()
            cuts = len(data.caches)
            data.cache_states(backbone, plan.train.cache_dir, layer=backbone.layer_at(hrm_config(plan.model, variant).inject_depth))
            cache_s = (cache_s or 0.0) + (time.perf_counter() - tick if len(data.caches) > cuts else 0.0)
        output_dir = variant_train(plan, variant).output_dir
        if (row := finished_variant(plan, variant, output_dir)) is not None:
            variant_rows = [row]
        else:
            variant_rows = run_variant(plan, variant, backbone, data)
            rundirs.record_row(plan.results_dir / "runs.csv", variant_rows[0], output_dir, RUNS_HEADER)
            for extra in variant_rows[1:]:  # <variant>@seg<n>: the same weights decoded with n segments
                records.append_row(plan.results_dir / "runs.csv", {k: v for k, v in extra.items() if not k.startswith("_")}, records.RUN_COLUMNS, RUNS_HEADER)
        for row in variant_rows:
            rows.append(row)
            logger.info("hybrid suite: %s verifier_accuracy=%.3f (%s)", row["variant"], row["verifier_accuracy"], row["_per_task"])
    records.write_generated_page(plan.results_dir / f"hybrid-{plan.profile.name}.md", f"# Hybrid comparison (`python -m hrm_bench.run suite=hybrid`)\n\n{comparison_table(plan, rows, cache_s)}")
    return rows


def main(cfg: DictConfig, overrides: list[str]) -> list[dict[str, Any]]:
    return run_suite(plan_from_config(cfg, overrides))
