"""Shared fixtures of the dataset-builder tests."""

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from puzzle_hrm.data import official_csv
from puzzle_hrm.data.format import DatasetFormatError


@dataclass
class FakeHub:
    """Stands in for huggingface_hub.hf_hub_download: serves `folder`'s files and records each call."""

    folder: Path
    calls: list[tuple[str, str, str]] = field(default_factory=list)

    def download(self, repo_id: str, filename: str, repo_type: str, local_files_only: bool = False) -> str:
        self.calls.append((repo_id, filename, repo_type))
        return str(self.folder / filename)

    def assert_downloaded_splits(self, repo: str) -> None:
        assert self.calls == [(repo, f"{split}.csv", "dataset") for split in ("train", "test")]


@pytest.fixture
def fake_hub(tmp_path, monkeypatch) -> FakeHub:
    """A hub serving tmp_path/hub; write train.csv/test.csv there before building from hf://."""
    hub = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(official_csv, "hf_hub_download", hub.download)
    return hub


@pytest.fixture
def csv_error(tmp_path):
    """Write `table` as a CSV, let `edit` corrupt its lines, and return read_csv's error message after
    checking that it starts with the file name (every builder's CSV errors name the file, then the row)."""

    def check(write_csv, read_csv, table, edit) -> str:
        path = tmp_path / "bad.csv"
        write_csv(path, table)
        lines = path.read_text().splitlines()
        edit(lines)
        path.write_text("\n".join(lines) + "\n")
        with pytest.raises(DatasetFormatError) as err:
            read_csv(path)
        assert str(err.value).startswith(f"{path}: ")
        return str(err.value)

    return check
