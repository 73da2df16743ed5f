"""`python -m hrm_bench.run suite=variants` / `suite=ablations`: several runs of the one runner, one table.

A sweep suite (`kind: sweep`) names base suites (sudoku, arc1, ...), seeds and variants; a variant is
a list of Hydra overrides (`model=trm`, `++model.L_cycles=4`, `++suite.train.ema=true`). Every
(base, variant, seed) is composed as `python -m hrm_bench.run suite=<base> <overrides> seed=<s>` would
be, run by `hrm_bench.run.run` (data, training, evaluation, scoring, one row in results/runs.csv with
suite=<sweep name>, variant=<label>), so nothing here trains or scores. The sweep's `cpu:` / `gpu:`
block adds overrides for every variant (`overrides`) and per variant (`variants`), and may replace
the seeds. At the end, per base: results/<sweep>-<base>-<hardware profile>.md, mean ± std over
seeds (hrm_bench.report.seed_tables) with throughput beside the metric, and a bar plot (.png) beside it.
`{base}` in an override is replaced by the base suite's name.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from hydra import compose
from omegaconf import DictConfig, OmegaConf

from hrm_bench import records
from hrm_bench.profiles import detect_profile
from hrm_bench.report import seed_tables

logger = logging.getLogger(__name__)

PASSED_ON = ("hardware", "results_dir", "checkpoint_root")  # top-level keys every run of the sweep shares (hardware with its settings)


@dataclass
class SweepPlan:
    name: str
    bases: tuple[str, ...]
    metrics: dict[str, str]  # base suite -> the metric of its table
    seeds: tuple[int, ...]
    common: list[str]  # overrides of every run
    base_overrides: dict[str, list[str]]  # base suite -> overrides of its runs
    variants: dict[str, list[str]]  # label -> overrides of its runs (the last word), tier additions included
    profile_name: str
    shared: list[str]  # hardware / results_dir / checkpoint_root of the sweep's own command
    results_dir: Path
    checkpoint_root: Path


def plan_from_config(cfg: DictConfig) -> SweepPlan:
    """The sweep with its tier block merged in: `bases`, `metrics`, `seeds` replaced, `overrides`,
    `base_overrides` and `variants` added to (a later override of the same key wins)."""
    profile = detect_profile(cfg.hardware.profile)
    suite = OmegaConf.to_container(cfg.suite, resolve=True)
    block = suite.get("cpu" if profile.device == "cpu" else "gpu") or {}
    picked = {key: block.get(key, suite.get(key)) for key in ("bases", "metrics", "seeds")}
    extra = block.get("variants", {})
    if unknown := sorted(set(extra) - set(suite["variants"])):
        raise ValueError(f"suite {suite['name']}: tier block names unknown variants {unknown}")
    if missing := sorted(set(picked["bases"]) - set(picked["metrics"])):
        raise ValueError(f"suite {suite['name']}: no metric for base suites {missing}")
    common = [*suite.get("overrides", []), *block.get("overrides", [])]
    per_base = {base: [*(suite.get("base_overrides") or {}).get(base, []), *(block.get("base_overrides") or {}).get(base, [])] for base in picked["bases"]}
    return SweepPlan(
        name=suite["name"],
        bases=tuple(picked["bases"]),
        metrics=picked["metrics"],
        seeds=tuple(picked["seeds"]),
        common=common,
        base_overrides=per_base,
        variants={label: [*spec, *extra.get(label, [])] for label, spec in suite["variants"].items()},
        profile_name=profile.name,
        shared=shared_overrides(cfg),
        results_dir=Path(cfg.results_dir),
        checkpoint_root=Path(cfg.checkpoint_root),
    )


def shared_overrides(cfg: DictConfig) -> list[str]:
    """The sweep command's own hardware choice and output folders, for every run of it."""
    hardware = [f"hardware.{key}={cfg.hardware[key]}" for key in ("compile", "attn_backend") if cfg.hardware.get(key) is not None]
    return [f"hardware={cfg.hardware.profile}", *hardware, *(f"{key}={cfg[key]}" for key in PASSED_ON if key != "hardware")]


def last_per_key(overrides: list[str]) -> list[str]:
    """One override per key, the last one given (a tier block's value over the suite's)."""
    by_key = {o.lstrip("+~").split("=", 1)[0]: o for o in overrides}
    return list(by_key.values())


def run_overrides(plan: SweepPlan, base: str, label: str, seed: int) -> list[str]:
    """The overrides of one run: what `python -m hrm_bench.run` would be given for it."""
    checkpoint_dir = f"++suite.train.checkpoint_dir={plan.checkpoint_root / f'{plan.name}-{base}-{label}-{plan.profile_name}-seed{seed}'}"
    own = [o.replace("{base}", base) for o in [*plan.common, *plan.base_overrides[base], *plan.variants[label]]]
    return [f"suite={base}", *plan.shared, f"seed={seed}", f"variant={label}", checkpoint_dir, *last_per_key(own)]


def run_one(plan: SweepPlan, base: str, label: str, seed: int) -> dict:
    from hrm_bench import run as bench_run

    overrides = run_overrides(plan, base, label, seed)
    run_plan = bench_run.plan_from_config(compose(config_name="config", overrides=overrides), overrides=overrides)
    logger.info("%s: %s / %s, seed %d: %s", plan.name, base, label, seed, " ".join(overrides))
    return bench_run.run(dataclasses.replace(run_plan, suite=plan.name))


def table(plan: SweepPlan, base: str, rows: list[dict]) -> str:
    metric = plan.metrics[base]
    summary = seed_tables.seed_summary(pd.DataFrame(rows), metric)
    stamp = records.run_stamp("hrm_bench.run", Path(__file__).resolve().parents[2])
    first = rows[0]
    header = (
        f"# {plan.name} on {base}: {metric} over seeds\n\n"
        f"Made by `{stamp['command']}` at commit {stamp['commit']} on {stamp['date']}; device {first['device']} "
        f"({first['hardware']}), torch {first['torch']}; seeds {list(plan.seeds)}; {len(rows)} rows in results/runs.csv "
        f"(suite={plan.name}). Every variant trains on the base suite's data (unless its overrides change the data) with the same batch and step budget "
        f"(steps per row: {sorted({r['steps'] for r in rows})}). Std is the sample standard deviation over seeds.\n\n"
        + f"Every run: `{' '.join(plan.common + plan.base_overrides[base]) or '(the base suite as it is)'}`; the variants:\n\n"
        + "\n".join(f"- {label}: `{' '.join(last_per_key(overrides)).replace('{base}', base) or '(none)'}`" for label, overrides in plan.variants.items())
    )
    seed_tables.plot(summary, metric, plan.results_dir / f"{plan.name}-{base}-{plan.profile_name}.png",
                f"{plan.name} on {base} ({first['hardware']}): {metric}, mean ± std over {len(plan.seeds)} seeds")
    return seed_tables.markdown(summary, metric, header)


def run_suite(plan: SweepPlan) -> dict[str, list[dict]]:
    done: dict[str, list[dict]] = {}
    for base in plan.bases:
        rows = [run_one(plan, base, label, seed) for label in plan.variants for seed in plan.seeds]
        records.write_generated_page(plan.results_dir / f"{plan.name}-{base}-{plan.profile_name}.md", table(plan, base, rows))
        done[base] = rows
    return done


def main(cfg: DictConfig) -> dict[str, list[dict]]:
    return run_suite(plan_from_config(cfg))
