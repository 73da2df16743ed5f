"""The official on-disk layout: round trips, atomic writes and precise errors."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from puzzle_hrm.data import format as fmt
from puzzle_hrm.data.format import (
    DatasetFormatError,
    DatasetMetadata,
    atomic_write_text,
    read_identifiers,
    read_split,
    validate_split,
    write_identifiers,
    write_split,
)

OFFICIAL_FILES = {"dataset.json"} | {f"all__{name}.npy" for name in fmt.ARRAY_NAMES}


def tiny_split(seed: int = 0) -> tuple[DatasetMetadata, dict]:
    """3 groups holding 2, 1, 2 puzzles of 1-3 examples each; tokens in [0, 12), label 0 = ignore."""
    rng = np.random.default_rng(seed)
    puzzle_sizes = [1, 3, 2, 1, 2]
    num_examples = sum(puzzle_sizes)
    arrays = {
        "inputs": rng.integers(0, 12, (num_examples, 9)),  # int64, as the official builders write
        "labels": rng.integers(0, 12, (num_examples, 9)),
        "puzzle_identifiers": np.array([1, 2, 3, 1, 2], np.int32),
        "puzzle_indices": np.concatenate([[0], np.cumsum(puzzle_sizes)]).astype(np.int32),
        "group_indices": np.array([0, 2, 3, 5], np.int32),
    }
    metadata = DatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=12, seq_len=9,
                               num_puzzle_identifiers=4, total_groups=3, mean_puzzle_examples=9 / 5, sets=["all"])
    return metadata, {"all": arrays}


def assert_same_split(a: tuple[DatasetMetadata, dict], b: tuple[DatasetMetadata, dict]) -> None:
    assert a[0] == b[0]
    assert a[1].keys() == b[1].keys()
    for set_name in a[1]:
        for name in fmt.ARRAY_NAMES:
            np.testing.assert_array_equal(a[1][set_name][name], b[1][set_name][name])


def hidden_entries(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_round_trip_and_official_file_names(tmp_path):
    metadata, arrays = tiny_split()
    metadata.provenance = {"source": "test", "stand_in": True}
    write_split(tmp_path, "train", metadata, arrays)
    write_identifiers(tmp_path, ["<blank>", "a", "b", "c"])

    assert {p.name for p in (tmp_path / "train").iterdir()} == OFFICIAL_FILES
    loaded = read_split(tmp_path, "train")
    assert_same_split((metadata, arrays), loaded)
    assert isinstance(loaded[1]["all"]["inputs"], np.memmap)  # token arrays are memory-mapped
    assert not isinstance(loaded[1]["all"]["group_indices"], np.memmap)  # index arrays are loaded
    assert read_identifiers(tmp_path) == ["<blank>", "a", "b", "c"]
    assert hidden_entries(tmp_path) == []


def test_dataset_json_bytes_match_official_builder(tmp_path):
    """Without provenance, dataset.json is what the official `json.dump(metadata.model_dump(), f)` writes."""
    metadata, arrays = tiny_split()
    metadata = dataclasses.replace(metadata, mean_puzzle_examples=2)  # an int, as the official builder passes
    arrays["all"]["puzzle_indices"] = np.array([0, 2, 4, 6, 8, 9], np.int32)
    write_split(tmp_path, "test", metadata, arrays)
    official = (
        '{"pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0, "vocab_size": 12, "seq_len": 9, '
        '"num_puzzle_identifiers": 4, "total_groups": 3, "mean_puzzle_examples": 2.0, "sets": ["all"]}'
    )
    assert (tmp_path / "test" / "dataset.json").read_text() == official
    assert read_split(tmp_path, "test")[0].provenance is None


def test_overwrite_replaces_split_without_leftovers(tmp_path):
    write_split(tmp_path, "train", *tiny_split(0))
    second = tiny_split(1)
    write_split(tmp_path, "train", *second)
    assert_same_split(second, read_split(tmp_path, "train"))
    assert hidden_entries(tmp_path) == []


def test_failed_write_keeps_previous_split(tmp_path, monkeypatch):
    first = tiny_split(0)
    write_split(tmp_path, "train", *first)
    calls = []

    def failing_save(path, arr):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        with open(path, "wb") as f:
            np.lib.format.write_array(f, arr)

    monkeypatch.setattr(fmt.np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_split(tmp_path, "train", *tiny_split(1))
    monkeypatch.undo()
    assert_same_split(first, read_split(tmp_path, "train"))
    assert hidden_entries(tmp_path) == []


def test_invalid_arrays_write_nothing(tmp_path):
    first = tiny_split(0)
    write_split(tmp_path, "train", *first)
    metadata, arrays = tiny_split(1)
    arrays["all"]["inputs"][2, 3] = 12  # == vocab_size
    with pytest.raises(DatasetFormatError, match=r"all__inputs\.npy: row 2 has value 12"):
        write_split(tmp_path, "train", metadata, arrays)
    assert_same_split(first, read_split(tmp_path, "train"))
    assert hidden_entries(tmp_path) == []


def test_range_check_reports_row_across_chunks(monkeypatch):
    monkeypatch.setattr(fmt, "_CHUNK_ROWS", 2)
    metadata, arrays = tiny_split()
    arrays["all"]["labels"][7, 0] = -5
    with pytest.raises(DatasetFormatError, match=r"where/all__labels\.npy: row 7 has value -5"):
        validate_split(metadata, arrays, "where")


def test_ignore_label_value_is_allowed_outside_vocab():
    metadata, arrays = tiny_split()
    metadata.ignore_label_id = -100
    arrays["all"]["labels"][0, :] = -100
    validate_split(metadata, arrays, "where")


def _corrupt(mutate):
    """Write a good split, damage it on disk with `mutate(folder)`, return the split folder."""
    def run(tmp_path):
        write_split(tmp_path, "train", *tiny_split())
        mutate(tmp_path / "train")
        return tmp_path / "train"
    return run


def _edit_json(**changes):
    def mutate(folder):
        meta = json.loads((folder / "dataset.json").read_text())
        meta.update(changes)
        (folder / "dataset.json").write_text(json.dumps(meta))
    return mutate


def _array(name, fn, problem):
    """A case that rewrites all__<name>.npy as fn(old array)."""
    file = f"all__{name}.npy"

    def mutate(folder):
        np.save(folder / file, fn(np.load(folder / file)))
    return mutate, file, problem


def _file(file, damage, problem):
    return (lambda folder: damage(folder / file)), file, problem


BAD_SPLITS = {  # name: (mutate(split folder), file the error must name, problem it must state)
    "seq_len mismatch": (_edit_json(seq_len=8), "all__inputs.npy", "seq_len=8"),
    "out-of-range token": _array("inputs", lambda a: a + 12, "outside [0, 12)"),
    "negative label": _array("labels", lambda a: a - 1, "has value -1"),
    "puzzle indices decrease": _array("puzzle_indices", lambda a: a[[0, 2, 1, 3, 4, 5]], "decreases"),
    "puzzle indices end early": _array("puzzle_indices", lambda a: np.minimum(a, 6), "end at 9"),
    "group indices end wrong": _array("group_indices", lambda a: a[:-1], "end at 5"),
    "identifier out of range": _array("puzzle_identifiers", lambda a: a + 3, "outside [0, 4)"),
    "float tokens": _array("inputs", lambda a: a.astype(np.float32), "not an integer type"),
    "total_groups mismatch": (_edit_json(total_groups=4), "dataset.json", "total_groups is 4"),
    "unknown key": (_edit_json(colour="red"), "dataset.json", "unknown key"),
    "wrong type": (_edit_json(seq_len="9"), "dataset.json", "'seq_len' should be"),
    "missing file": _file("all__labels.npy", lambda path: path.unlink(), "file not found"),
    "corrupt npy": _file("all__labels.npy", lambda path: path.write_bytes(b"junk"), "not a readable"),
    "corrupt json": _file("dataset.json", lambda path: path.write_text('{"pad_id": 0,'), "not valid JSON"),
}


@pytest.mark.parametrize("case", BAD_SPLITS, ids=list(BAD_SPLITS))
def test_bad_split_error_names_file(tmp_path, case):
    mutate, file_name, problem = BAD_SPLITS[case]
    folder = _corrupt(mutate)(tmp_path)
    with pytest.raises(DatasetFormatError) as err:
        read_split(tmp_path, "train")
    assert f"{folder}/{file_name}" in str(err.value)
    assert problem in str(err.value)


def test_missing_required_key(tmp_path):
    folder = _corrupt(lambda f: None)(tmp_path)
    meta = json.loads((folder / "dataset.json").read_text())
    del meta["vocab_size"]
    (folder / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetFormatError, match=r"dataset\.json: missing required key 'vocab_size'"):
        read_split(tmp_path, "train")


def test_sets_must_match_arrays():
    metadata, arrays = tiny_split()
    metadata.sets = ["all", "extra"]
    with pytest.raises(DatasetFormatError, match=r"where/dataset\.json: sets"):
        validate_split(metadata, arrays, "where")


def test_atomic_write_text(tmp_path):
    target = tmp_path / "sub" / "note.txt"
    atomic_write_text(target, "first")
    target.chmod(0o640)
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert target.stat().st_mode & 0o777 == 0o640  # a replaced file keeps its permissions
    assert hidden_entries(target.parent) == []

