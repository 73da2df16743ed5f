"""results/REPORT.md: does this HRM reproduce the paper, how much does it vary, what does it cost, and what
does more test-time compute buy. Written by `python -m hrm_bench.report` (no arguments).

Inputs, all committed: results/runs.csv (one row per run), results/evals/*.csv and results/logs/*.log
(every evaluation during training), results/test_time/*.json (curves of the final evaluation),
results/perf.csv (throughput), datasets/sources/*/provenance.json (data), and the paper / peer /
rerun numbers with their sources in hrm_bench/report/reference_numbers.csv. Nothing in the report is typed
by hand: every number comes from one of these files, and every table row names its run's date and
command. Plots go to results/report/*.png.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd

from hrm_bench import records, run_logs
from puzzle_hrm.data.arc import DEFAULT_ARC_ARCHIVE, read_tasks
from puzzle_hrm.data.format import atomic_write_text

REPO_ROOT = Path(__file__).resolve().parents[2]
REFERENCE_FILE = Path(__file__).with_name("reference_numbers.csv")
BENCHMARKS = {  # suite -> (benchmark of reference_numbers.csv, headline metric)
    "sudoku": ("sudoku", "exact_accuracy"),
    "sudoku_hard": ("sudoku", "exact_accuracy"),
    "maze": ("maze", "exact_accuracy"),
    "arc1": ("arc1", "pass_at_2"),
    "arc2": ("arc2", "pass_at_2"),
}
TITLES = {"sudoku": "Sudoku-Extreme 1k", "maze": "Maze-Hard 30x30 1k", "arc1": "ARC-AGI-1", "arc2": "ARC-AGI-2"}
ARC_EVALUATION = {"arc1": "ARC-AGI/data/evaluation", "arc2": "ARC-AGI-2/data/evaluation"}  # folders of the shipped archive
RUN_KEY = ["suite", "data", "hardware", "model", "variant"]


def pct(value: float | None) -> str:
    return "" if value is None or pd.isna(value) else f"{100 * value:.1f} %"


def read_references(path: Path = REFERENCE_FILE) -> pd.DataFrame:
    table = pd.read_csv(path, keep_default_na=False)
    table["value"] = table["value"].astype(float)
    return table


@functools.cache
def recipe(suite: str) -> dict:
    """The suite's GPU recipe: its data folder, epochs, global batch and, when the suite fixes its train
    group count, its optimizer steps (official epochs x groups / global batch; ARC's depend on the build)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        gpu = compose(config_name="config", overrides=[f"suite={suite}"]).suite.gpu
    groups = gpu.data.get("subsample_size") or gpu.data.get("num_train")
    steps = int(gpu.train.epochs * groups // gpu.train.global_batch_size) if groups else None
    return {"data": Path(gpu.data.output_dir).name, "epochs": gpu.train.epochs, "batch": gpu.train.global_batch_size, "steps": steps}


def our_results(runs: pd.DataFrame) -> pd.DataFrame:
    """One line per (suite, data, hardware, model, variant): the headline metric's mean and sample std over
    seeds (newest row per seed), seeds, steps, GPU-minutes, device, provenance and the newest row's command."""
    rows = runs[runs["suite"].isin(BENCHMARKS)].copy()
    if rows.empty:
        return pd.DataFrame()
    rows["benchmark"] = rows["suite"].map(lambda s: BENCHMARKS[s][0])
    rows["value"] = [r[BENCHMARKS[r["suite"]][1]] for _, r in rows.iterrows()]
    rows["gpu_minutes"] = np.where(rows["hardware"] == "cpu", np.nan, rows["wall_s"] * rows["n_gpus"].fillna(1) / 60)
    rows = rows.sort_values("date", kind="stable").drop_duplicates([*RUN_KEY, "seed"], keep="last")
    grouped = rows.groupby(RUN_KEY, sort=False)
    out = grouped.agg(benchmark=("benchmark", "first"), mean=("value", "mean"), std=("value", "std"), seeds=("seed", "nunique"),
                      steps=("steps", "max"), gpu_minutes=("gpu_minutes", lambda s: s.sum(min_count=1)), device=("device", "last"),
                      provenance=("data_provenance", "last"), date=("date", "last"), command=("command", "last"),
                      commit=("commit", "last"), examples_per_s=("train_examples_per_s", "mean")).reset_index()
    out["recipe_steps"] = [recipe(s)["steps"] if h != "cpu" else None for s, h in zip(out["suite"], out["hardware"])]
    return out


def headline(ours: pd.DataFrame, benchmark: str) -> pd.Series | None:
    """The run that says most about the paper's number: GPU before CPU, then the most steps."""
    mine = ours[ours["benchmark"] == benchmark] if len(ours) else ours
    if mine.empty:
        return None
    return mine.assign(gpu=mine["hardware"] != "cpu").sort_values(["gpu", "steps"], ascending=False).iloc[0]


def gap_reasons(run: pd.Series, reruns: pd.Series) -> list[str]:
    reasons = []
    if str(run["provenance"]).startswith("stand-in"):
        reasons.append(f"stand-in data ({run['provenance']}), not the official set")
    if run["hardware"] == "cpu":
        reasons.append("CPU tier: a small model on small data, not the paper's recipe")
    else:
        planned = recipe(run["suite"])
        if run["data"] != planned["data"]:
            reasons.append(f"data {run['data']}, not the recipe's {planned['data']}")
        if pd.notna(run["recipe_steps"]) and run["steps"] < run["recipe_steps"]:
            reasons.append(f"budget: {int(run['steps']):,} of the recipe's {int(run['recipe_steps']):,} steps "
                           f"({run['steps'] / run['recipe_steps']:.0%}); accuracy rises late in the official runs")
        elif pd.isna(run["recipe_steps"]):
            reasons.append(f"budget: {int(run['steps']):,} steps of a {planned['epochs']:,}-epoch recipe at batch {planned['batch']}")
    if run["seeds"] < 2:
        spread = f" (the independent reruns span {pct(reruns.min())} to {pct(reruns.max())})" if len(reruns) > 1 else ""
        reasons.append(f"one seed: the seed-to-seed spread is not measured{spread}")
    return reasons


def summary_section(refs: pd.DataFrame, ours: pd.DataFrame) -> list[str]:
    lines = ["## Paper vs ours vs reruns", "",
             "| benchmark | metric | HRM paper | TRM paper | ARC Prize verified | independent reruns | ours (mean ± std, seeds) | gap to the HRM paper |",
             "|---|---|---|---|---|---|---|---|"]
    for benchmark, title in TITLES.items():
        ref = refs[refs["benchmark"] == benchmark]
        cell = {kind: ", ".join(pct(v) for v in ref[ref["kind"] == kind]["value"]) for kind in ("paper", "peer", "verified", "rerun")}
        run = headline(ours, benchmark)
        metric = ref["metric"].iloc[0] if len(ref) else ""
        mine, gap = "no row", ""
        if run is not None:
            spread = f" ± {pct(run['std'])}" if pd.notna(run["std"]) else ""
            mine = f"{pct(run['mean'])}{spread} ({int(run['seeds'])}; {run['suite']}, {run['hardware']}, {int(run['steps']):,} steps)"
            paper = ref[ref["kind"] == "paper"]["value"]
            gap = f"{100 * (paper.iloc[0] - run['mean']):.1f} points below" if len(paper) else ""
        lines.append(f"| {title} | {metric} | {cell['paper']} | {cell['peer']} | {cell['verified']} | {cell['rerun']} | {mine} | {gap} |")
    lines += ["", "Sources (hrm_bench/report/reference_numbers.csv):", ""]
    lines += [f"- {r.who}, {TITLES[r.benchmark]} ({r.setting}): {pct(r.value)} — {r.source}" + (f" ({r.note})" if r.note else "")
              for r in refs.itertuples()]
    return lines + [""]


def benchmark_sections(refs: pd.DataFrame, ours: pd.DataFrame) -> list[str]:
    lines = ["## Per benchmark: our runs", ""]
    for benchmark, title in TITLES.items():
        lines += [f"### {title}", ""]
        mine = ours[ours["benchmark"] == benchmark] if len(ours) else ours
        if mine.empty:
            lines += ["No run of this benchmark in results/runs.csv yet.", ""]
            continue
        lines += ["| suite | data | provenance | hardware (device) | seeds | metric mean ± std | steps (of recipe) | GPU-min | train ex/s | newest row: date, commit, command |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in mine.itertuples():
            recipe = f" of {int(r.recipe_steps):,}" if pd.notna(r.recipe_steps) else ""
            spread = f" ± {pct(r.std)}" if pd.notna(r.std) else ""
            gpu_min = f"{r.gpu_minutes:.1f}" if pd.notna(r.gpu_minutes) else "—"
            lines.append(f"| {r.suite} | {r.data} | {r.provenance} | {r.hardware} ({r.device}) | {r.seeds} | {pct(r.mean)}{spread} | "
                         f"{int(r.steps):,}{recipe} | {gpu_min} | {r.examples_per_s:,.0f} | {r.date}, {r.commit}, `{r.command}` |")
        run = headline(ours, benchmark)
        paper = refs[(refs["benchmark"] == benchmark) & (refs["kind"] == "paper")]["value"]
        reruns = refs[(refs["benchmark"] == benchmark) & (refs["kind"] == "rerun")]["value"]
        if len(paper):
            lines += ["", f"**Gap:** our most complete run ({run['suite']}, {run['hardware']}, {run['date']}) reaches {pct(run['mean'])}; "
                      f"the HRM paper reports {pct(paper.iloc[0])}. Likely reasons: " + "; ".join(gap_reasons(run, reruns)) + "."]
        lines.append("")
    return lines


def training_curves(results_dir: Path) -> pd.DataFrame:
    """Every evaluation of every run: results/evals/*.csv, plus runs known only from their logs."""
    curves = run_logs.read_eval_curves(results_dir).assign(run=lambda t: [run_logs.row_id(r) for _, r in t.iterrows()])
    logged = [run_logs.evals_from_log(p).assign(suite=p.stem.split("-")[0], run=p.name) for p in sorted((results_dir / "logs").glob("*.log"))]
    logged = [t for t in logged if len(t) and t["suite"].iloc[0] in BENCHMARKS]
    return pd.concat([curves, *logged], ignore_index=True) if logged else curves


def plot_training_curves(curves: pd.DataFrame, path: Path) -> None:
    fig, axes = records.figure(width=11, height=3.2, ncols=len(TITLES), squeeze=False)
    for ax, (benchmark, title) in zip(axes[0], TITLES.items()):
        mine = curves[curves["suite"].map(lambda s: BENCHMARKS.get(s, ("",))[0]) == benchmark] if len(curves) else curves
        for run, points in mine.groupby("run", sort=False):
            ax.plot(points["step"], points["exact_accuracy"], marker="o", label=str(run)[:40])
        ax.set(title=title, xlabel="training step", ylabel="eval exact accuracy", ylim=(-0.02, 1.0))
        if len(mine):
            ax.legend(fontsize=6)
        else:
            ax.text(0.5, 0.5, "no evaluation recorded", ha="center", transform=ax.transAxes)
    records.save_figure(fig, path)


def plot_test_time(curves: list[dict], path: Path) -> None:
    """Exact accuracy vs outer steps of one rollout (solid: fixed steps, dashed: Q-policy capped at k),
    ARC pass@2 vs voting variants (both rules), Maze valid-path rate vs outer steps."""
    from matplotlib.ticker import ScalarFormatter

    fig, axes = records.figure(width=11, height=3.4, ncols=3, squeeze=False)
    steps_ax, votes_ax, maze_ax = axes[0]
    for c in curves:
        label = run_logs.row_id(c)[:40]
        k = np.arange(1, len(c["exact_accuracy_by_steps"]) + 1)
        line, = steps_ax.plot(k, c["exact_accuracy_by_steps"], label=label)
        steps_ax.plot(k, c["policy_exact_accuracy_by_steps"], "--", color=line.get_color())
        if "arc_votes" in c:
            votes = [p["votes"] for p in c["arc_votes"]]
            line, = votes_ax.plot(votes, [p["pass@2"] for p in c["arc_votes"]], marker="o", label=f"{label} per-task mean")
            votes_ax.plot(votes, [p["pass@2_all_pairs"] for p in c["arc_votes"]], "--", marker="x", color=line.get_color(),
                          label=f"{label} all test inputs")
        if "valid_path_rate_by_steps" in c:
            maze_ax.plot(k, c["valid_path_rate_by_steps"], label=label)
    steps_ax.set(title="exact acc. vs outer steps (-- Q-policy)", xlabel="outer steps k", ylabel="exact accuracy")
    votes_ax.set(title="ARC pass@2 vs voting variants", xlabel="variants voting (log2)", ylabel="pass@2")
    votes_ax.set_xscale("log", base=2)
    votes_ax.xaxis.set_major_formatter(ScalarFormatter())
    maze_ax.set(title="Maze valid-path rate vs steps", xlabel="outer steps k", ylabel="valid-path rate")
    for ax in axes[0]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
        else:
            ax.text(0.5, 0.5, "no run with this curve yet", ha="center", transform=ax.transAxes)
    records.save_figure(fig, path)


def plot_halting(curves: list[dict], path: Path) -> None:
    fig, ax = records.figure(width=7, height=3.4)
    for c in curves:
        hist = np.asarray(c["halt_step_histogram"], float)
        ax.plot(np.arange(1, len(hist) + 1), hist / max(hist.sum(), 1), marker="o", label=run_logs.row_id(c)[:40])
    ax.set(title="where the learned Q-policy halts (test set)", xlabel="segment", ylabel="share of puzzles")
    if curves:
        ax.legend(fontsize=6)
    records.save_figure(fig, path)


def plot_throughput(runs: pd.DataFrame, path: Path) -> pd.DataFrame:
    rows = runs[runs["suite"].isin(BENCHMARKS) & runs["train_examples_per_s"].notna()]
    table = rows.groupby(["suite", "hardware"])["train_examples_per_s"].agg(["mean", "count"]).reset_index()
    fig, ax = records.figure(width=7, height=3.4)
    labels = [f"{s}\n{h}" for s, h in zip(table["suite"], table["hardware"])]
    ax.bar(labels, table["mean"])
    ax.set(title="training throughput per suite and hardware profile", ylabel="train examples/s (mean over rows)", yscale="log")
    records.save_figure(fig, path)
    return table


def test_time_section(curves: list[dict]) -> list[str]:
    lines = ["## Test-time compute", "",
             "From results/test_time/*.json: one rollout per test puzzle, read off after every outer step k (fixed-steps "
             "policy) and where the learned Q-policy halts when capped at k.", ""]
    if not curves:
        return lines + ["No run has test-time curves yet (runs from before these files carry only their final numbers).", ""]
    lines += ["| run | command | steps k | exact at k = 1 / halt_max_steps / max | Q-policy at max k | mean Q-halt segment |", "|---|---|---|---|---|---|"]
    for c in curves:
        e, q, hist = c["exact_accuracy_by_steps"], c["policy_exact_accuracy_by_steps"], np.asarray(c["halt_step_histogram"], float)
        mean_halt = float((hist * np.arange(1, len(hist) + 1)).sum() / max(hist.sum(), 1))
        lines.append(f"| {run_logs.row_id(c)} | `{c['command']}` | 1..{len(e)} | {pct(e[0])} / {pct(e[len(hist) - 1])} / {pct(e[-1])} | "
                     f"{pct(q[-1])} | {mean_halt:.2f} |")
    return lines + [""]


def arc_section(curves: list[dict]) -> list[str]:
    lines = ["## ARC: the two pass@k rules", "",
             "Per task the mean over its test inputs (ARC Prize, the later official evaluator; our `pass_at_k` columns) vs "
             "all test inputs right (the notebook of the official commit the paper's numbers came from). Tasks with several "
             "test inputs in the shipped evaluation sets (datasets/sources/arc/arc_raw.tar.gz):", ""]
    for suite, folder in ARC_EVALUATION.items():
        if DEFAULT_ARC_ARCHIVE.exists():
            tasks = read_tasks(DEFAULT_ARC_ARCHIVE, [folder])
            lines.append(f"- {TITLES[suite]} ({folder}): {sum(len(t.test) > 1 for t in tasks)} of {len(tasks)} tasks")
    lines.append("")
    arc = [c for c in curves if "arc_votes" in c]
    if not arc:
        return lines + ["No ARC run has vote curves yet.", ""]
    lines += ["| run | votes | pass@1 mean / all | pass@2 mean / all | tasks (multi-test) |", "|---|---|---|---|---|"]
    for c in arc:
        last = c["arc_votes"][-1]
        lines.append(f"| {run_logs.row_id(c)} | {last['votes']} | {pct(last['pass@1'])} / {pct(last['pass@1_all_pairs'])} | "
                     f"{pct(last['pass@2'])} / {pct(last['pass@2_all_pairs'])} | {c['arc_tasks']} ({c['arc_multi_test_tasks']}) |")
    return lines + [""]


def data_section() -> list[str]:
    lines = ["## Data", ""]
    for folder in sorted((REPO_ROOT / "datasets" / "sources").glob("sudoku-*/provenance.json")):
        p = json.loads(folder.read_text())
        check = p.get("symmetry_check") or f"{p.get('symmetry_leaks', 'not checked')} symmetry leaks"
        lines.append(f"- `{folder.parent.name}` ({'stand-in' if p.get('stand_in') else 'official'}): {', '.join(p['files'])}; "
                     f"train/test symmetry check: {check}.")
        for split, r in p.get("ratings", {}).items():
            lines.append(f"  - {split}: {r['puzzles']:,} puzzles, rating mean {r['mean']}, median {r['p50']:.0f}, p90 {r['p90']:.0f}, "
                         f"p99 {r['p99']:.0f}, max {r['max']}; sources {r['sources']}")
        if "card" in p:
            lines.append(f"  - The official card ({p['card']}) gives no rating distribution to set beside these (only the "
                         "sources, the backtrack definition and 3.8 M train / 423 k test rows); ratings are our solver's backtracks.")
    return lines + [""]


REPRODUCE = """## Adding runs

On one GPU each (the hardware profile picks the official recipe; `++suite.train.max_train_seconds=S` caps
a run, `++suite.train.resume=true` continues it), then regenerate this file. Each run appends its row to
results/runs.csv and writes results/evals/<run>.csv and results/test_time/<run>.json (copy all three back
when `results_dir` points elsewhere):

    python -m hrm_bench.run suite=sudoku seed=0        # Sudoku-Extreme-like stand-in; test-time curve to 64 outer steps
    python -m hrm_bench.run suite=sudoku seed=1
    python -m hrm_bench.run suite=sudoku_hard          # the hard tdoku lists, for the earlier rows
    python -m hrm_bench.run suite=maze                 # generated Maze-Hard stand-in
    python -m hrm_bench.run suite=arc1                 # ARC-AGI-1: pass@k under both rules, vs voting variants
    python -m hrm_bench.report                         # this file and its plots
"""


def write_report(results_dir: Path) -> Path:
    """results/REPORT.md and results/report/*.png from the committed results."""
    runs = pd.read_csv(results_dir / "runs.csv")
    refs, ours = read_references(), our_results(runs)
    figures = results_dir / "report"
    figures.mkdir(parents=True, exist_ok=True)
    curves = run_logs.read_test_time(results_dir)
    plot_training_curves(training_curves(results_dir), figures / "eval_curves.png")
    plot_test_time(curves, figures / "test_time.png")
    plot_halting(curves, figures / "halting.png")
    throughput = plot_throughput(runs, figures / "throughput.png")
    stamp = records.run_stamp("hrm_bench.report", REPO_ROOT)
    lines = [
        "# Reproduction report: HRM (arXiv 2506.21734) in hrm-bench", "",
        f"Made by `{stamp['command'].strip()}` at commit {stamp['commit']} on {stamp['date']} from results/runs.csv "
        f"({len(runs)} rows), results/evals, results/logs, results/test_time, results/perf.csv and hrm_bench/report/reference_numbers.csv. "
        "Rows marked stand-in were not trained on the official data and are not directly comparable with the paper.", "",
        *summary_section(refs, ours), *benchmark_sections(refs, ours),
        "## Training curves", "", "Exact accuracy on the test split at every evaluation of every run (results/evals/*.csv; "
        "older runs from the `eval/` lines of results/logs/*.log).", "", "![eval curves](report/eval_curves.png)", "",
        *test_time_section(curves), "![test-time compute](report/test_time.png)", "", "![halting](report/halting.png)", "",
        *arc_section(curves), *data_section(),
        "## Throughput per hardware profile", "", "| suite | hardware | train examples/s (mean) | rows |", "|---|---|---|---|",
        *[f"| {r.suite} | {r.hardware} | {r.mean:,.0f} | {r.count} |" for r in throughput.itertuples()],
        "", "At fixed shapes, eager vs compiled: results/perf.md (rows in results/perf.csv).", "", "![throughput](report/throughput.png)", "",
        REPRODUCE,
    ]
    path = results_dir / "REPORT.md"
    atomic_write_text(path, "\n".join(lines))
    return path
