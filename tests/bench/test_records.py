import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from hrm_bench import records
from hrm_bench.records import (
    PERF_COLUMNS,
    RUN_COLUMNS,
    SCALING_COLUMNS,
    append_row,
    check_writable,
    git_commit,
    markdown_table,
    now_utc_iso,
)

COLUMNS = ("date", "commit", "cuda", "steps", "mfu", "wall_s")
REPO = Path(__file__).resolve().parents[2]


def read(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def test_column_contracts():
    assert RUN_COLUMNS[RUN_COLUMNS.index("torch") + 1] == "cuda"
    assert len(RUN_COLUMNS) == 34 and len(set(RUN_COLUMNS)) == 34
    assert RUN_COLUMNS[-2:] == ("config", "stop_reason")  # added last: older tables gain them empty
    assert SCALING_COLUMNS == PERF_COLUMNS + ("n_gpus", "scaling_efficiency")
    assert PERF_COLUMNS[:3] == ("date", "command", "commit") and PERF_COLUMNS[-1] == "warmup_s"


def test_append_two_rows_and_read_back(tmp_path):
    csv = tmp_path / "results" / "runs.csv"
    append_row(csv, {"date": "2025-07-01T00:00:00Z", "commit": "0123abc", "cuda": "13.0", "mfu": 0.123456789}, COLUMNS)
    append_row(csv, {"commit": "1234567", "steps": 100, "mfu": None, "wall_s": float("nan")}, COLUMNS)
    table = read(csv)
    assert list(table.columns) == list(COLUMNS)
    assert table.values.tolist() == [
        ["2025-07-01T00:00:00Z", "0123abc", "13.0", "", "0.123456789", ""],
        ["", "1234567", "", "100", "", ""],
    ]


def test_unknown_column_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown columns \['accuracy', 'typo'\]"):
        append_row(tmp_path / "runs.csv", {"date": "x", "accuracy": 1.0, "typo": 2}, COLUMNS)
    assert not list(tmp_path.iterdir())


def test_header_mismatch_names_the_file_and_leaves_it(tmp_path):
    csv = tmp_path / "runs.csv"
    csv.write_text("date,commit,old_column\n2025,abc,1\n")
    with pytest.raises(ValueError, match=re.escape(str(csv))):
        append_row(csv, {"date": "2026"}, COLUMNS)
    assert csv.read_text() == "date,commit,old_column\n2025,abc,1\n"


def test_older_table_without_a_new_column_gains_it(tmp_path):
    csv = tmp_path / "runs.csv"
    older = [c for c in RUN_COLUMNS if c != "valid_path_rate"]  # the contract before valid_path_rate
    csv.write_text(",".join(older) + "\n" + ",".join(f"v{i}" for i in range(len(older))) + "\n")
    append_row(csv, {"suite": "maze", "valid_path_rate": 0.5}, RUN_COLUMNS)
    table = read(csv)
    assert list(table.columns) == list(RUN_COLUMNS)
    assert table.iloc[0]["valid_path_rate"] == "" and table.iloc[0]["pass_at_2"] == f"v{older.index('pass_at_2')}"
    assert table.iloc[0][older].tolist() == [f"v{i}" for i in range(len(older))]
    assert table.iloc[1]["suite"] == "maze" and table.iloc[1]["valid_path_rate"] == "0.5"
    reordered = tmp_path / "reordered.csv"
    reordered.write_text("commit,date\nabc,2025\n")  # same names, other order: not an older contract
    with pytest.raises(ValueError, match="header does not match"):
        append_row(reordered, {"date": "2026"}, COLUMNS)


def test_failed_write_keeps_the_old_table_and_no_temp_files(tmp_path, monkeypatch):
    csv = tmp_path / "runs.csv"
    append_row(csv, {"commit": "abc"}, COLUMNS)
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}

    def crash(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(records.os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        append_row(csv, {"commit": "def"}, COLUMNS)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before  # also: no temp files left


def test_markdown_beside_csv_has_header_and_formatted_rows(tmp_path):
    csv = tmp_path / "perf.csv"
    header = "# Performance\n\nFLOPs: see hrm_bench/metrics.py. Rows marked stand-in are not the official data."
    append_row(csv, {"commit": "a|b", "cuda": "13.0", "mfu": 0.123456, "wall_s": 123456.7, "steps": 7}, COLUMNS, header)
    text = (tmp_path / "perf.md").read_text()
    assert text.startswith(header + "\n\n| date | commit | cuda | steps | mfu | wall_s |\n| --- |")
    assert "|  | a\\|b | 13.0 | 7 | 0.1235 | 123457 |" in text


def test_markdown_table_number_formatting():
    table = pd.DataFrame({"tflops": ["1.23456e-05", "nan", "", "2.5", "n/a"], "torch": ["2.10", "", "", "", ""]})
    lines = markdown_table(table).splitlines()
    assert lines[2:] == ["| 1.235e-05 | 2.10 |", "|  |  |", "|  |  |", "| 2.5 |  |", "| n/a |  |"]


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True)


def test_git_commit_clean_dirty_and_not_a_repo(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # even if pytest's tmp lies inside a repo
    monkeypatch.delenv("HRM_BENCH_COMMIT", raising=False)
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "a.txt").write_text("1")
    git(repo, "add", "a.txt")
    git(repo, "commit", "-q", "-m", "first")
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    assert git_commit(repo) == sha.stdout.strip()
    (repo / "a.txt").write_text("2")
    assert git_commit(repo) == sha.stdout.strip() + "-dirty"

    plain = tmp_path / "plain"
    plain.mkdir()
    assert git_commit(plain) == "unknown"


def test_now_utc_iso():
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", now_utc_iso())


def test_commit_override_wins_over_git(monkeypatch):
    monkeypatch.setenv("HRM_BENCH_COMMIT", "abc1234")  # a copied tree may carry a stale .git
    assert git_commit(".") == "abc1234"


APPENDER = """
import sys
from hrm_bench.records import append_row
for i in range(100):
    append_row(sys.argv[1], {"commit": sys.argv[2], "steps": i}, ("commit", "steps"))
"""


def test_two_processes_appending_at_once_keep_every_row(tmp_path):
    csv = tmp_path / "runs.csv"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    writers = [subprocess.Popen([sys.executable, "-c", APPENDER, str(csv), name], env=env) for name in ("a", "b")]
    assert [w.wait(timeout=300) for w in writers] == [0, 0]
    table = read(csv)
    assert len(table) == 200
    for name in ("a", "b"):
        assert sorted(table[table["commit"] == name]["steps"].astype(int)) == list(range(100))


def test_an_unwritable_results_dir_is_named_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    with pytest.raises(OSError, match=f"{blocker / 'results'}: result rows cannot be written there"):
        check_writable(blocker / "results")
    assert check_writable(tmp_path / "new" / "results").is_dir()


def test_generated_page_keeps_a_page_with_hand_notes(tmp_path):
    page = tmp_path / "hybrid-cpu.md"
    assert records.write_generated_page(page, "# table 1\n") is None  # nothing there yet
    assert records.write_generated_page(page, "# table 2\n") is None  # a generated page is simply replaced
    assert page.read_text() == "# table 2\n"
    page.write_text(f"# table 2\n\n{records.HAND_NOTES}\n\nwhat a person saw\n")
    kept = records.write_generated_page(page, "# table 3\n")
    assert page.read_text() == "# table 3\n"
    assert kept.parent == tmp_path and kept.name.startswith("hybrid-cpu.") and kept.suffix == ".md"
    assert "what a person saw" in kept.read_text()


def test_generated_page_keeps_two_noted_pages_of_the_same_second(tmp_path):
    page = tmp_path / "hybrid-h200.md"
    kept = []
    for note in ("first note", "second note"):
        page.write_text(f"# table\n\n{records.HAND_NOTES}\n\n{note}\n")
        os.utime(page, (1_700_000_000, 1_700_000_000))  # both pages carry the same mtime second
        kept.append(records.write_generated_page(page, "# table\n"))
    assert kept[0] != kept[1] and kept[1].name.endswith("-2.md")
    assert "first note" in kept[0].read_text() and "second note" in kept[1].read_text()
