"""`python -m hrm_bench.report`: results/REPORT.md (hrm_bench.report.reproduction); `--suite hybrid`: one table
over seeds (mean ± std) from results/runs.csv.

A suite run records one row per variant and seed (e.g. `python -m hrm_bench.run -m suite=hybrid
seed=0,1,2`). This report groups the chosen rows by variant: mean and sample standard deviation of
the metric over seeds, the number of seeds, and the means of the rows' segments used, trainable
parameters, training and decoding throughput and peak memory. When
a (variant, seed) pair was run more than once, the newest row counts, so a re-run replaces and
never double counts. Writes results/<name>.md (default name: <suite>-seeds) and a bar plot with
error bars beside it (<name>.png).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from hrm_bench import records
from hrm_bench.report import reproduction

# runs.csv columns averaged over seeds beside the metric: their table titles and number formats
SIDE_COLUMNS = {
    "token_accuracy": "token acc",
    "mean_halt_steps": "mean segments",
    "params": "trainable params",
    "steps": "steps",
    "train_examples_per_s": "train ex/s",
    "decode_tokens_per_s": "decode tok/s",
    "peak_mem_gib": "peak mem GiB",
}
SIDE_FORMATS = {"token_accuracy": ".3f", "mean_halt_steps": ".2f", "params": ",.0f", "steps": ",.0f", "train_examples_per_s": ".1f", "decode_tokens_per_s": ".1f", "peak_mem_gib": ".2f"}


def select_rows(table: pd.DataFrame, suite: str, since: str | None, model: str | None, hardware: str | None, until: str | None = None) -> pd.DataFrame:
    """Rows of `suite` (optionally dated from `since` to before `until`, for one model / hardware), newest per (variant, seed)."""
    rows = table[table["suite"] == suite]
    if since:
        rows = rows[rows["date"] >= since]
    if until:
        rows = rows[rows["date"] < until]
    if model:
        rows = rows[rows["model"] == model]
    if hardware:
        rows = rows[rows["hardware"] == hardware]
    if rows.empty:
        raise ValueError(f"no rows of suite {suite!r} match (since={since}, until={until}, model={model}, hardware={hardware})")
    return rows.sort_values("date", kind="stable").drop_duplicates(["variant", "seed"], keep="last")


def seed_summary(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per variant (in the order they first appear): mean, std over seeds (NaN for one seed), n seeds."""
    order = list(dict.fromkeys(rows["variant"]))
    grouped = rows.groupby("variant", sort=False)
    summary = pd.DataFrame({"mean": grouped[metric].mean(), "std": grouped[metric].std(ddof=1), "seeds": grouped["seed"].nunique()})
    for column in SIDE_COLUMNS:
        summary[column] = grouped[column].mean() if column in rows else float("nan")  # older tables may lack one
    return summary.loc[order]


def markdown(summary: pd.DataFrame, metric: str, header: str) -> str:
    titles = [f"{metric} (mean ± std)", "seeds", *SIDE_COLUMNS.values()]
    lines = [header, "", "| variant | " + " | ".join(titles) + " |", "|---" * (len(titles) + 1) + "|"]
    for variant, r in summary.iterrows():
        spread = f" ± {r['std']:.3f}" if pd.notna(r["std"]) else ""
        side = [format(r[c], SIDE_FORMATS[c]) if pd.notna(r[c]) else "" for c in SIDE_COLUMNS]
        lines.append(f"| {variant} | {r['mean']:.3f}{spread} | {int(r['seeds'])} | " + " | ".join(side) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: pd.DataFrame, metric: str, path: Path, title: str) -> None:
    """Horizontal bars in the table's order, each labelled with its seed count: long variant names
    stay readable however many rows the table has."""
    fig, ax = records.figure(width=8, height=1.2 + 0.28 * len(summary))
    labels = [f"{variant} (n={int(n)})" for variant, n in summary["seeds"].items()]
    ax.barh(labels, summary["mean"], xerr=summary["std"].fillna(0), capsize=3)
    ax.invert_yaxis()
    ax.set(xlabel=metric, title=title)
    ax.tick_params(axis="y", labelsize=8)
    records.save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hrm_bench.report", description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default=None, help="a suite's seeds table (e.g. hybrid); none: the whole reproduction report")
    parser.add_argument("--metric", default="verifier_accuracy")
    parser.add_argument("--since", default=None, help="ISO date-time: only rows from then on (e.g. one sweep)")
    parser.add_argument("--until", default=None, help="ISO date-time: only rows before it")
    parser.add_argument("--model", default=None)
    parser.add_argument("--hardware", default=None)
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--name", default=None, help="output file stem in the results dir (default: <suite>-seeds)")
    args = parser.parse_args(argv)
    results = Path(args.results_dir)
    if args.suite is None:
        print(f"wrote {reproduction.write_report(results)}")
        return
    table = pd.read_csv(results / "runs.csv")
    rows = select_rows(table, args.suite, args.since, args.model, args.hardware, args.until)
    summary = seed_summary(rows, args.metric)
    stamp = records.run_stamp("hrm_bench.report", Path(__file__).resolve().parents[2])
    devices = ", ".join(sorted(set(rows["device"].astype(str))))
    header = (
        f"# {args.suite}: {args.metric} over seeds\n\n"
        f"From {len(rows)} rows of results/runs.csv (suite={args.suite}, models {', '.join(sorted(set(rows['model'])))}, "
        f"seeds {sorted(set(rows['seed']))}, device {devices}; rows from {rows['date'].min()} to {rows['date'].max()}). "
        f"Made by `{stamp['command']}` at commit {stamp['commit']} on {stamp['date']}. Std is the sample standard deviation over seeds."
    )
    name = args.name or f"{args.suite}-seeds"
    records.write_generated_page(results / f"{name}.md", markdown(summary, args.metric, header))
    plot(summary, args.metric, results / f"{name}.png", f"{args.suite}: {args.metric}, mean ± std over seeds")
    print(markdown(summary, args.metric, header))
