"""Inputs that used to surface as library internals: the hub offline, a CSV that is not UTF-8."""

import pytest

from puzzle_hrm import checkpoint, hub
from puzzle_hrm.data import official_csv
from puzzle_hrm.data.format import DatasetFormatError
from puzzle_hrm.data.sudoku import read_csv


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.hub_reachable.cache_clear()
    yield
    hub.hub_reachable.cache_clear()


def test_hf_sources_offline_are_one_line_naming_the_repo(offline, tmp_path):
    with pytest.raises(ValueError) as err:
        official_csv.stage_source("hf://hrm-bench-test/no-such-repo", str(tmp_path), {}, None, "", "Sudoku-Extreme")
    message = str(err.value)
    assert message.startswith("hf://hrm-bench-test/no-such-repo: the hub is unreachable and it is not in the local Hugging Face cache")
    assert "offline, copy the repo's train.csv and test.csv to a folder" in message and "\n" not in message
    with pytest.raises(ValueError, match=r"^hf://hrm-bench-test/no-such-ckpt: the hub is unreachable .* checkpoint=<folder>"):
        checkpoint.checkpoint_file("hf://hrm-bench-test/no-such-ckpt")


def test_a_csv_that_is_not_utf8_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b"source,question,answer,rating\nx,\xff\xfe,1,0\n")
    with pytest.raises(DatasetFormatError, match=f"{path}: not UTF-8 text"):
        read_csv(path, box=2)
