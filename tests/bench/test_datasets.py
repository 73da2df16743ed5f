"""Suite datasets: reused only when complete and built with the same parameters; a failed rebuild keeps the older set."""

import json
from pathlib import Path

import pytest

from hrm_bench import datasets
from hrm_bench.datasets import IN_PROGRESS, STAMP, ensure_dataset


def suite_data(out: Path, **overrides) -> dict:
    return {"builder": "sudoku", "source": "generate", "output_dir": str(out), "box": 2, "num_train": 32, "num_test": 8,
            "min_blanks": 2, "max_blanks": 4, **overrides}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_failed_rebuild_keeps_the_older_set_whole(tmp_path, monkeypatch):
    out = tmp_path / "data"
    ensure_dataset(suite_data(out))
    before = snapshot(out)
    real_build = datasets.BUILDERS["sudoku"][1]

    def build_train_then_fail(config):
        real_build(config)  # writes train and test ...
        (Path(config.output_dir) / "test" / "dataset.json").unlink()
        raise OSError(28, "No space left on device")  # ... then dies part way

    monkeypatch.setitem(datasets.BUILDERS, "sudoku", (datasets.BUILDERS["sudoku"][0], build_train_then_fail))
    with pytest.raises(OSError):
        ensure_dataset(suite_data(out, num_train=48))
    assert snapshot(out) == before  # the older build, whole, with its own record
    assert json.loads((out / STAMP).read_text())["num_train"] == 32
    assert not out.with_name("data.previous").exists()


def test_a_killed_build_is_rebuilt_not_reused_and_foreign_folders_are_refused(tmp_path):
    out = tmp_path / "data"
    (out / "train").mkdir(parents=True)
    (out / IN_PROGRESS).write_text("")  # what a killed build leaves: no record
    (out / "train" / "stale.npy").write_bytes(b"partial")
    ensure_dataset(suite_data(out))
    assert not (out / "train" / "stale.npy").exists() and not (out / IN_PROGRESS).exists() and (out / STAMP).exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=f"{foreign}: exists and was not built here"):
        ensure_dataset(suite_data(foreign))
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_shipped_sources_resolve_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    resolved = datasets.shipped({"source": "datasets/sources/arc/arc_raw.tar.gz", "output_dir": "x"})
    assert resolved["source"] == str(datasets.REPO_ROOT / "datasets/sources/arc/arc_raw.tar.gz")
    assert datasets.shipped({"source": "generate"}) == {"source": "generate"}
