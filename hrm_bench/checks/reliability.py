"""`python -m hrm_bench.checks.reliability [--fast]`: try the commands as a careless user and a hostile machine
would, in real processes, and tally what happened into results/reliability.md.

Cases: bad command-line keys and values, bad data and checkpoint files, resuming into another run,
SIGKILL / SIGINT mid-run then resume (compared with an uninterrupted run: weights, optimizer state,
row), a full disk at checkpoint time, an unwritable results folder, a failed row write, a failed
dataset rebuild, two processes appending to one table. Each case ends as one of
  one-line error   refused with `error: <file or key>: <problem>` on one line and exit status 2
  traceback        refused, but with a traceback (or without the one-line form)
  silent wrong     accepted what it should have refused, or recorded a wrong result
  data lost        a row, a checkpoint or an earlier file did not survive
  kept             did what it must (resumed exactly, kept every row, ...)
Faults the machine makes (a full disk, a read-only folder) are real mounts when this runs as root
(tmpfs, a read-only bind mount) and simulated in the process otherwise; the report says which.
`--fast` is the subset CI runs (tests/bench/test_reliability.py).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from hrm_bench import records
from puzzle_hrm import checkpoint as ckpt
from puzzle_hrm.data.format import atomic_write_text

REPO_ROOT = Path(__file__).resolve().parents[2]
KINDS = ("one-line error", "traceback", "silent wrong", "data lost", "kept")
# The Sudoku suite's CPU tier cut down to seconds: 64 generated 4x4 puzzles, a 16-wide HRM.
TINY = ["hardware=cpu", "suite.cpu.data.num_train=64", "suite.cpu.data.num_test=16", "model.hidden_size=16", "model.num_heads=2",
        "model.puzzle_emb_ndim=16", "suite.cpu.train.global_batch_size=16", "++suite.train.progress=false", "++suite.train.log_every=2",
        "++suite.train.eval_max_batches=1"]
HYBRID_TINY = ["suite=hybrid", "hardware=cpu", "suite.backbone=tiny", "suite.variants=[hrm_grb]", "++suite.train.train_n=32",
               "++suite.train.eval_n=4", "++suite.train.batch_size=4", "++suite.train.eval_every=1000", "++suite.train.log_samples_every=0",
               "++suite.train.max_new_tokens=4", "++suite.model.d_h=32", "++suite.model.num_heads=2", "++suite.model.H_layers=1",
               "++suite.model.L_layers=1"]
# In-process faults for when the machine's own cannot be made (not root): run hrm_bench.run under a patch.
FAULTS = {
    "full_disk_once": "import torch; real = torch.save; calls = []\n"
                      "def save(obj, f, *a, **k):\n    calls.append(1)\n    if len(calls) == 1: raise OSError(28, 'No space left on device')\n    return real(obj, f, *a, **k)\n"
                      "torch.save = save\n",
    "row_write_fails": "from hrm_bench import records\n"
                       "def append_row(*a, **k): raise OSError(28, 'No space left on device', str(a[0]))\n"
                       "records.append_row = append_row\n",
    "rebuild_fails": "from hrm_bench import datasets\n(cls, real) = datasets.BUILDERS['sudoku']\n"
                     "def build(config):\n    real(config)\n    import pathlib; (pathlib.Path(config.output_dir) / 'test' / 'dataset.json').unlink()\n"
                     "    raise OSError(28, 'No space left on device')\n"
                     "datasets.BUILDERS['sudoku'] = (cls, build)\n",
}


@dataclass
class Outcome:
    case: str
    group: str
    kind: str
    detail: str


class Workspace:
    """A scratch folder, one shared tiny dataset, and the runner of `python -m hrm_bench.run`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1",
                    "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "")}
        self.env.pop("HRM_BENCH_DEBUG", None)
        self.env.pop("HYDRA_FULL_ERROR", None)

    def paths(self, name: str) -> list[str]:
        return [f"results_dir={self.root / name / 'results'}", f"checkpoint_root={self.root / name / 'ckpt'}",
                f"suite.cpu.data.output_dir={self.data}", f"hydra.run.dir={self.root / name / 'hydra'}"]

    def hybrid_paths(self, name: str) -> list[str]:
        return [f"results_dir={self.root / name / 'results'}", f"checkpoint_root={self.root / name / 'ckpt'}", f"hydra.run.dir={self.root / name / 'hydra'}"]

    def command(self, module: str, args: list[str], fault: str | None = None) -> list[str]:
        if fault is None:
            return [sys.executable, "-m", module, *args]
        script = FAULTS[fault] + f"import runpy, sys; sys.argv = ['{module}', *sys.argv[1:]]; runpy.run_module('{module}', run_name='__main__')"
        return [sys.executable, "-c", script, *args]

    def run(self, module: str, args: list[str], fault: str | None = None, timeout: float = 900, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(module, args, fault), cwd=cwd or self.root, env=self.env, capture_output=True, text=True, timeout=timeout)

    def start(self, module: str, args: list[str]) -> subprocess.Popen:
        return subprocess.Popen(self.command(module, args), cwd=self.root, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def bench(self, name: str, *extra: str, fault: str | None = None) -> subprocess.CompletedProcess:
        return self.run("hrm_bench.run", [*TINY, *self.paths(name), *extra], fault)


# ---------------------------------------------------------------------------------------- judging


def refusal(case: str, group: str, proc: subprocess.CompletedProcess, must_name: str = "") -> Outcome:
    """A case that must be refused: how it was."""
    err = proc.stderr.strip().splitlines()
    last = err[-1] if err else ""
    if proc.returncode == 0:
        return Outcome(case, group, "silent wrong", "accepted (exit 0)")
    if "Traceback" in proc.stderr or "Traceback" in proc.stdout:
        return Outcome(case, group, "traceback", last[:160])
    one_line = proc.returncode == 2 and last.startswith("error: ") and sum(line.startswith("error: ") for line in err) == 1
    if one_line and must_name in last:
        return Outcome(case, group, "one-line error", last[:200])
    return Outcome(case, group, "traceback", f"exit {proc.returncode}: {last[:160]}")


def kept(case: str, group: str, ok: bool, detail: str, failure: str = "data lost") -> Outcome:
    return Outcome(case, group, "kept" if ok else failure, detail)


def rows(results: Path) -> list[dict[str, str]]:
    path = results / "runs.csv"
    return list(csv.DictReader(path.open())) if path.exists() else []


def run_dir(ws: Workspace, name: str) -> Path:
    (folder,) = [p for p in (ws.root / name / "ckpt").iterdir() if p.is_dir()]
    return folder


def same_training_state(a: Path, b: Path) -> str:
    """'' if two checkpoints hold identical model, optimizer, step and carry; else what differs."""
    sa, sb = ckpt.load(a), ckpt.load(b)
    if sa["step"] != sb["step"]:
        return f"step {sa['step']} vs {sb['step']}"
    flat = lambda saved: {**{f"model.{k}": v for k, v in saved["model"].items()},  # noqa: E731
                          **{f"opt{i}.{k}.{n}": t for i, o in enumerate(saved["optimizers"]) for k, s in o["state"].items() for n, t in s.items() if torch.is_tensor(t)}}
    fa, fb = flat(sa), flat(sb)
    differ = [k for k in fa if k not in fb or not torch.equal(fa[k], fb[k])]
    return f"{len(differ)} tensors differ, e.g. {differ[:2]}" if differ else ""


RESULT_KEYS = ("steps", "exact_accuracy", "token_accuracy", "q_halt_accuracy", "mean_halt_steps")


def same_row(a: dict, b: dict, keys=RESULT_KEYS) -> str:
    return ", ".join(f"{k} {a.get(k)} vs {b.get(k)}" for k in keys if a.get(k) != b.get(k))


# ---------------------------------------------------------------------------------------- real faults


@contextlib.contextmanager
def mounted(target: Path, options: list[str]) -> Iterator[bool]:
    """Mount (tmpfs or a bind) at target when we are root and may; yields whether it is real."""
    target.mkdir(parents=True, exist_ok=True)
    ok = hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("mount") is not None and \
        subprocess.run(["mount", *options, str(target)], capture_output=True).returncode == 0
    try:
        yield ok
    finally:
        if ok:
            subprocess.run(["umount", str(target)], capture_output=True)


# ---------------------------------------------------------------------------------------- cases


def bad_command_lines(ws: Workspace) -> Iterator[Outcome]:
    cases = [
        ("typo'd model key (++)", ["++model.H_cycle=3"], "model.H_cycle"),
        ("typo'd model key", ["model.H_cycle=3"], "model.H_cycle"),
        ("model key not a number", ["model.H_cycles=abc"], "model.H_cycles"),
        ("seed not a number", ["seed=abc"], "seed"),
        ("max_steps not a number", ["++suite.train.max_steps=abc"], "suite.train.max_steps"),
        ("lr not a number", ["++suite.train.lr=fast"], "suite.train.lr"),
        ("unknown train key", ["++suite.train.nosuch=1"], "suite.train.nosuch"),
        ("unknown data key", ["++suite.data.nosuch=1"], "suite.data.nosuch"),
        ("unknown top-level key", ["++nosuch=1"], "nosuch"),
        ("unknown suite", ["suite=nosuch"], "suite/nosuch"),
        ("compile not a bool", ["hardware.compile=maybe"], "hardware.compile"),
        ("heads do not divide width", ["model.num_heads=5"], "model"),
        ("unknown data source", ["++suite.data.source=nosuch-folder"], "nosuch-folder"),
        ("hf:// data offline", ["++suite.data.source=hf://sapientinc/sudoku-extreme", f"++suite.data.output_dir={ws.root / 'hfdata'}"], "hf://sapientinc/sudoku-extreme"),
    ]
    for name, args, key in cases:
        yield refusal(name, "bad command line", ws.bench("bad", *args), key)
    for name, args, key in (("hybrid: unknown variant", ["suite.variants=[nosuch]"], "suite.variants"),
                            ("hybrid: model key not a number", ["++suite.model.d_h=wide"], "suite.model.d_h"),
                            ("hybrid: unknown train key", ["++suite.train.nosuch=1"], "suite.train.nosuch")):
        yield refusal(name, "bad command line", ws.run("hrm_bench.run", [*HYBRID_TINY, *ws.hybrid_paths("hbad"), *args]), key)


def sudoku_csvs(folder: Path, text: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        (folder / f"{split}.csv").write_bytes(text)
    return folder


def bad_files(ws: Workspace, base: Path) -> Iterator[Outcome]:
    """Data and checkpoint files that are not what they claim; base: a finished run's folder."""
    header = b"source,question,answer,rating\n"
    for name, text in (("CSV not UTF-8", header + b"x,\xff\xfe" + b"." * 14 + b"," + b"1" * 16 + b",0\n"),
                       ("CSV with another header", b"a,b\n1,2\n"),
                       ("CSV row of the wrong length", header + b"x,...,1234,0\n")):
        folder = sudoku_csvs(ws.root / "csv" / name.replace(" ", "_"), text)
        yield refusal(name, "bad file", ws.bench("csv", f"++suite.data.source={folder}", f"++suite.data.output_dir={ws.root / 'csvdata' / folder.name}"), str(folder))
    last = base / "last.pt"
    evaluate = lambda *args: ws.run("puzzle_hrm.evaluate", list(args))  # noqa: E731
    yield refusal("evaluate: no arguments", "bad file", evaluate(), "checkpoint")
    yield refusal("evaluate: unknown key", "bad file", evaluate(f"checkpoint={last}", f"data={ws.data}", "nosuch=1"), "nosuch")
    yield refusal("evaluate: batch_size not a number", "bad file", evaluate(f"checkpoint={last}", f"data={ws.data}", "batch_size=abc"), "batch_size")
    yield refusal("evaluate: missing checkpoint", "bad file", evaluate(f"checkpoint={ws.root / 'none.pt'}", f"data={ws.data}"), "none.pt")
    junk = ws.root / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    yield refusal("evaluate: junk checkpoint", "bad file", evaluate(f"checkpoint={junk}", f"data={ws.data}"), "junk.pt")
    evil = ws.root / "evil.pt"
    torch.save({"x": EvilPickle()}, evil)
    marker = ws.root / "pwned"
    proc = evaluate(f"checkpoint={evil}", f"data={ws.data}")
    yield Outcome("evaluate: pickle that runs code", "bad file", "silent wrong", "code ran") if marker.exists() else refusal("evaluate: pickle that runs code", "bad file", proc, "evil.pt")
    broken = ws.root / "broken-data"
    shutil.copytree(ws.data, broken)
    (broken / "test" / "dataset.json").write_text("{not json")
    yield refusal("evaluate: malformed dataset.json", "bad file", evaluate(f"checkpoint={last}", f"data={broken}"), "dataset.json")
    yield refusal("evaluate: hf:// checkpoint offline", "bad file", evaluate("checkpoint=hf://sapientinc/HRM-checkpoint-sudoku-extreme", f"data={ws.data}"), "hf://sapientinc")


class EvilPickle:
    """Unpickling it would create the file `pwned` (weights_only=True loads must refuse it)."""

    def __reduce__(self):
        return (open, ("pwned", "w"))


def resumes(ws: Workspace) -> Iterator[Outcome]:
    """A finished 6-step run, then everything one may wrongly do with its folder."""
    ws.bench("base", "++suite.train.max_steps=6")
    base, results = run_dir(ws, "base"), ws.root / "base" / "results"
    before = (base / "last.pt").read_bytes()
    yield refusal("plain re-run over an existing checkpoint", "resume", ws.bench("base", "++suite.train.max_steps=2"), "resume=true")
    yield kept("... the existing checkpoint survives", "resume", (base / "last.pt").read_bytes() == before, "last.pt unchanged")
    proc = ws.bench("base", "++suite.train.max_steps=6", "++suite.train.resume=true")
    n = len(rows(results))
    yield kept("resume of a finished run", "resume", proc.returncode == 0 and n == 1 and "already finished" in proc.stdout,
               f"exit {proc.returncode}, {n} row(s): {proc.stdout.strip().splitlines()[-1:]}", failure="silent wrong")
    proc = ws.bench("base", "model.H_cycles=3", "variant=H3", "++suite.train.lr=1e-4", "++suite.train.resume=true", f"++suite.train.checkpoint_dir={base}")
    yield refusal("resume into another model / lr", "resume", proc, "model.H_cycles: 2 -> 3")
    saved = ckpt.load(base / "last.pt")
    for name, bad in (("resume from a bare (official) state dict", saved["model"]),
                      ("resume from a checkpoint lacking `loader`", {k: v for k, v in saved.items() if k != "loader"}),
                      ("resume with one of two optimizer states", {**saved, "optimizers": saved["optimizers"][:1]})):
        folder = ws.root / "badckpt" / str(abs(hash(name)))
        ckpt.save_atomic(bad, folder / "last.pt")
        yield refusal(name, "resume", ws.bench("badckpt", "++suite.train.max_steps=6", "++suite.train.resume=true", f"++suite.train.checkpoint_dir={folder}"), str(folder))
    yield from bad_files(ws, base)


def kill_and_resume(ws: Workspace, steps: int = 40) -> Iterator[Outcome]:
    """SIGKILL after the first periodic checkpoint, resume, SIGINT after the next one, resume to the end:
    the same weights, optimizer state and row as one uninterrupted run."""
    args = [f"++suite.train.max_steps={steps}", "++suite.train.checkpoint_every=4"]
    ws.bench("straight", *args)
    straight = run_dir(ws, "straight")
    cmd = [*TINY, *ws.paths("cut"), *args]
    killed = wait_then_signal(ws, cmd, lambda d: (d / "last.pt").exists(), signal.SIGKILL)
    yield kept("SIGKILL mid-run", "kill", killed.returncode == -signal.SIGKILL, f"exit {killed.returncode}"
               + ("" if killed.returncode == -signal.SIGKILL else ": finished before the signal, not tested"), failure="silent wrong")
    first = ckpt.load(run_dir(ws, "cut") / "last.pt")["step"]
    interrupted = wait_then_signal(ws, [*cmd, "++suite.train.resume=true"], lambda d: ckpt.load(d / "last.pt")["step"] > first, signal.SIGINT)
    out = interrupted.stdout
    yield kept("SIGINT mid-run: checkpoint, resume hint, exit 130", "kill",
               interrupted.returncode == 130 and "resume with: python -m hrm_bench.run" in out and "Traceback" not in out,
               f"exit {interrupted.returncode}: {out.strip().splitlines()[-1][:160] if out.strip() else ''}")
    done = ws.bench("cut", *args, "++suite.train.resume=true")
    cut_rows, straight_rows = rows(ws.root / "cut" / "results"), rows(ws.root / "straight" / "results")
    differs = same_training_state(straight / "last.pt", run_dir(ws, "cut") / "last.pt") if done.returncode == 0 else f"resume exit {done.returncode}"
    differs = differs or (same_row(straight_rows[0], cut_rows[0]) if len(cut_rows) == 1 else f"{len(cut_rows)} rows")
    yield kept("resume after SIGKILL + SIGINT == uninterrupted", "kill", not differs, differs or "weights, optimizer state and row identical")


def wait_then_signal(ws: Workspace, args: list[str], ready: Callable[[Path], bool], sig: int) -> subprocess.CompletedProcess:
    """Start a run, send `sig` once ready(its run folder) holds, wait for it to end."""
    proc = ws.start("hrm_bench.run", args)
    root = Path(next(a for a in args if a.startswith("checkpoint_root=")).split("=", 1)[1])
    deadline = time.monotonic() + 900
    while proc.poll() is None and time.monotonic() < deadline:
        folders = [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
        with contextlib.suppress(Exception):  # a checkpoint being replaced is read again next time
            if folders and ready(folders[0]):
                proc.send_signal(sig)
                break
        time.sleep(0.02)
    out, _ = proc.communicate(timeout=900)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


def hybrid_kill_and_resume(ws: Workspace, steps: int = 40) -> Iterator[Outcome]:
    """The hybrid loop (tiny LLM): SIGKILL after a checkpoint, resume, SIGINT, resume == uninterrupted."""
    args = [*HYBRID_TINY, f"++suite.train.max_steps={steps}", "++suite.train.save_every=2"]
    paths = ws.hybrid_paths
    ws.run("hrm_bench.run", [*args, *paths("hstraight")])
    killed = wait_then_signal(ws, [*args, *paths("hcut")], lambda d: (d / "checkpoint.pt").exists(), signal.SIGKILL)
    first = ckpt.load(run_dir(ws, "hcut") / "checkpoint.pt")["step"]
    interrupted = wait_then_signal(ws, [*args, *paths("hcut"), "++suite.train.resume=true"],
                                   lambda d: ckpt.load(d / "checkpoint.pt")["step"] > first, signal.SIGINT)
    yield kept("hybrid: SIGINT mid-run: checkpoint, resume hint, exit 130", "kill",
               interrupted.returncode == 130 and "resume with:" in interrupted.stdout and "Traceback" not in interrupted.stdout,
               f"exit {interrupted.returncode}")
    cut_early = killed.returncode == -signal.SIGKILL
    done = ws.run("hrm_bench.run", [*args, *paths("hcut"), "++suite.train.resume=true"])
    a, b = (ckpt.load(run_dir(ws, name) / "checkpoint.pt") for name in ("hstraight", "hcut"))
    differ = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    ra, rb = rows(ws.root / "hstraight" / "results"), rows(ws.root / "hcut" / "results")
    detail = f"killed: exit {killed.returncode}; resume exit {done.returncode}; {len(differ)} tensors differ; rows {len(ra)} / {len(rb)}"
    ok = cut_early and done.returncode == 0 and not differ and len(rb) == 1 and not same_row(ra[0], rb[0], ("steps", "verifier_accuracy"))
    yield kept("hybrid: SIGKILL + SIGINT mid-run, resume == uninterrupted", "kill", ok, detail)


def machine_faults(ws: Workspace) -> Iterator[Outcome]:
    """Full disk at checkpoint time, an unwritable results folder, a failed row write, a failed rebuild."""
    with mounted(ws.root / "full" / "ckpt", ["-t", "tmpfs", "-o", "size=4k", "tmpfs"]) as real:
        proc = ws.bench("full", "++suite.train.max_steps=4", "++suite.train.checkpoint_every=2", fault=None if real else "full_disk_once")
        log = proc.stdout + proc.stderr  # Hydra's job log goes to stdout
        named = "not saved at step 2" in log and str(ws.root / "full" / "ckpt") in log
        yield kept(f"full disk at checkpoint time ({'tmpfs' if real else 'simulated'})", "disk",
                   proc.returncode == 0 and named and len(rows(ws.root / "full" / "results")) == 1,
                   f"exit {proc.returncode}; path named: {named}; training went on and the row was recorded")
    earlier = ws.root / "ro" / "results"
    records.append_row(earlier / "runs.csv", {"suite": "earlier"}, records.RUN_COLUMNS)
    before = {p.name: p.read_bytes() for p in earlier.iterdir()}
    ro_options = ["--bind", "-o", "ro", str(earlier)]
    with mounted(ws.root / "ro" / "results_ro", ro_options) as real:
        target = ws.root / "ro" / "results_ro" if real else earlier
        if not real:
            os.chmod(earlier, 0o555)
        try:
            proc = ws.bench("ro", f"results_dir={target}")
        finally:
            os.chmod(earlier, 0o755)
        outcome = refusal(f"read-only results folder ({'ro bind mount' if real else 'chmod 555'})", "disk", proc, str(target))
        if not real and os.geteuid() == 0:  # root writes through chmod: the case is not real
            outcome = Outcome(outcome.case, "disk", outcome.kind, "skipped: root ignores chmod and mount failed")
        yield outcome
        intact = {p.name: p.read_bytes() for p in earlier.iterdir()} == before
        yield kept("... earlier files in it intact, nothing trained", "disk", intact and not (ws.root / "ro" / "ckpt").exists(), "runs.csv / runs.md unchanged")
    proc = ws.bench("rowfail", "++suite.train.max_steps=2", fault="row_write_fails")
    yield refusal("row write fails after training", "disk", proc, "row.json")
    fallback = next((ws.root / "rowfail" / "ckpt").glob("*/row.json"), None)
    again = ws.bench("rowfail", "++suite.train.max_steps=2", "++suite.train.resume=true")
    table = rows(ws.root / "rowfail" / "results")
    yield kept("... the row is kept beside the checkpoint and appended on resume", "disk",
               fallback is not None and again.returncode == 0 and len(table) == 1 and table[0]["steps"] == "2",
               f"fallback {fallback and fallback.name}; {len(table)} row(s) after resume")
    stamp = ws.data / "build_config.json"
    old = {p: p.read_bytes() for p in ws.data.rglob("*") if p.is_file()}
    proc = ws.bench("rebuild", "suite.cpu.data.num_train=48", fault="rebuild_fails")
    yield refusal("dataset rebuild fails part way", "disk", proc, "No space left")
    same = {p: p.read_bytes() for p in ws.data.rglob("*") if p.is_file()} == old
    yield kept("... the older build is whole, its record its own", "disk", same and json.loads(stamp.read_text())["num_train"] == 64,
               "every file of the older build unchanged" if same else "the dataset folder changed")


def elsewhere(ws: Workspace) -> Iterator[Outcome]:
    """suite=arc1 from a folder outside the repository, output paths left at their defaults."""
    cwd = ws.root / "elsewhere"
    cwd.mkdir()
    args = ["suite=arc1", "hardware=cpu", "suite.cpu.data.max_tasks=1", "suite.cpu.data.num_aug=1", "++suite.train.max_steps=1",
            "++suite.train.log_every=1", "suite.cpu.train.global_batch_size=4", "model.hidden_size=16", "model.num_heads=2",
            "model.puzzle_emb_ndim=16", "++suite.train.progress=false", "hydra.run.dir=hydra"]
    proc = ws.run("hrm_bench.run", args, cwd=cwd)
    printed = [line for line in proc.stdout.splitlines() if line.startswith(("results: ", "checkpoint: ", "data: "))]
    ok = proc.returncode == 0 and {p.split(":")[0] for p in printed} == {"results", "checkpoint", "data"} and (cwd / "results" / "runs.csv").exists()
    yield kept("suite=arc1 from another directory: shipped source found, outputs where printed", "elsewhere", ok,
               f"exit {proc.returncode}; printed {[p.split(':')[0] for p in printed]}", failure="silent wrong")


APPENDER = "import sys\nfrom hrm_bench.records import append_row\nfor i in range(100):\n    append_row(sys.argv[1], {'commit': sys.argv[2], 'steps': i}, ('commit', 'steps'))\n"


def concurrency(ws: Workspace) -> Iterator[Outcome]:
    table = ws.root / "concurrent" / "runs.csv"
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, str(table), name], env=ws.env) for name in ("a", "b")]
    codes = [p.wait(timeout=600) for p in procs]
    n = len(list(csv.DictReader(table.open()))) if table.exists() else 0
    yield kept("two processes append 100 rows each to one table", "concurrency", codes == [0, 0] and n == 200, f"{n} of 200 rows kept")


# ---------------------------------------------------------------------------------------- report


def run_cases(root: Path, fast: bool) -> list[Outcome]:
    ws = Workspace(root)
    groups: list[Callable[[Workspace], Iterator[Outcome]]] = [concurrency, kill_and_resume, hybrid_kill_and_resume]
    if fast:
        groups += [fast_refusals]
    else:
        groups += [bad_command_lines, resumes, machine_faults, elsewhere]
    outcomes = []
    for group in groups:
        for outcome in group(ws):
            print(f"[{outcome.kind}] {outcome.group}: {outcome.case} -- {outcome.detail}", flush=True)
            outcomes.append(outcome)
    return outcomes


def fast_refusals(ws: Workspace) -> Iterator[Outcome]:
    """CI's subset: a resume into another configuration and an unwritable results folder."""
    base = run_dir(ws, "cut")  # the finished run of kill_and_resume
    yield refusal("resume into another model / lr", "resume", ws.bench("cut", "model.H_cycles=3", "++suite.train.lr=1e-4", "++suite.train.resume=true",
                                                                         f"++suite.train.checkpoint_dir={base}"), "model.H_cycles: 2 -> 3")
    blocker = ws.root / "a-file"
    blocker.write_text("")
    yield refusal("results folder cannot be created", "disk", ws.bench("blocked", f"results_dir={blocker / 'results'}"), str(blocker))


def summary(outcomes: list[Outcome]) -> Counter:
    return Counter(o.kind for o in outcomes)


def report(outcomes: list[Outcome], command: str, seconds: float) -> str:
    counts = summary(outcomes)
    lines = [
        "# Reliability: bad inputs, kills, full disks, concurrent writers",
        "",
        f"Made by `{command}` on {records.now_utc_iso()[:10]} (2-core CPU, commit {records.git_commit(REPO_ROOT)}), {seconds:.0f} s. "
        "Every case runs the real command in its own process (hrm_bench/checks/reliability.py says how each is judged).",
        "",
        "| tried | one-line error | traceback | silent wrong | data lost | kept |",
        "|---|---|---|---|---|---|",
        f"| {len(outcomes)} | " + " | ".join(str(counts.get(k, 0)) for k in KINDS) + " |",
        "",
        "| group | case | outcome | detail |",
        "|---|---|---|---|",
    ]
    lines += [f"| {o.group} | {o.case} | {o.kind} | {o.detail.replace('|', '/')} |" for o in outcomes]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> Counter:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="the CI subset: kills, concurrency, two refusals")
    parser.add_argument("--out", default=str(REPO_ROOT / "results" / "reliability.md"), help="the report (Markdown)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hrm-reliability-") as root:
        outcomes = run_cases(Path(root).resolve(), args.fast)
    command = "python -m hrm_bench.checks.reliability" + (" --fast" if args.fast else "")
    atomic_write_text(args.out, report(outcomes, command, time.perf_counter() - start))
    counts = summary(outcomes)
    print(f"{args.out}: " + ", ".join(f"{k} {counts.get(k, 0)}" for k in KINDS))
    return counts


if __name__ == "__main__":
    bad = main()
    sys.exit(1 if bad.get("traceback") or bad.get("silent wrong") or bad.get("data lost") else 0)
