"""ARC: task validation, grid encoding, augmentation round trips and the official-layout builder."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from puzzle_hrm.data.arc import (
    DEFAULT_ARC_ARCHIVE,
    EOS,
    PAD,
    SEPARATOR,
    ARCBuildConfig,
    augment_grid,
    augment_name,
    build,
    decode_grid,
    encode_grid,
    parse_name,
    read_tasks,
    read_test_examples,
    unaugment_grid,
)
from puzzle_hrm.data.augment import dihedral_transform, inverse_dihedral_transform
from puzzle_hrm.data.format import DatasetFormatError, read_identifiers, read_split

needs_arc = pytest.mark.skipif(not DEFAULT_ARC_ARCHIVE.exists(), reason="shared ARC archive not present")


def random_grid(rng, max_side=30):
    return rng.integers(0, 10, size=(rng.integers(1, max_side + 1), rng.integers(1, max_side + 1))).astype(np.uint8)


def pair(rng, h, w):
    return {"input": rng.integers(0, 10, (h, w)).tolist(), "output": rng.integers(0, 10, (w, h + 1)).tolist()}


@pytest.fixture
def tiny_arc(tmp_path):
    """Two training tasks, one evaluation task with two test pairs; one task is colour/shape symmetric."""
    rng = np.random.default_rng(0)
    tasks = {
        "training/aaaa0001": {"train": [pair(rng, 3, 4), pair(rng, 5, 2)], "test": [pair(rng, 2, 2)]},
        "training/aaaa0002": {"train": [{"input": [[0]], "output": [[0]]}], "test": [{"input": [[0, 0]], "output": [[0]]}]},
        "evaluation/bbbb0001": {"train": [pair(rng, 29, 30), pair(rng, 1, 1)], "test": [pair(rng, 4, 6), pair(rng, 7, 3)]},
    }
    for name, task in tasks.items():
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / f"{name}.json").write_text(json.dumps(task))
    return tmp_path / "src", tasks


# ----------------------------------------------------------------------------- grids and augmentation


@pytest.mark.parametrize("tid", range(8))
def test_dihedral_round_trip_on_non_square_grids(tid):
    rng = np.random.default_rng(tid)
    for _ in range(20):
        grid = random_grid(rng)
        np.testing.assert_array_equal(inverse_dihedral_transform(dihedral_transform(grid, tid), tid), grid)
        mapping = np.concatenate([[0], rng.permutation(np.arange(1, 10))]).astype(np.uint8)
        name = augment_name("task", tid, mapping)
        assert parse_name(name)[:2] == ("task", tid)
        np.testing.assert_array_equal(unaugment_grid(augment_grid(grid, tid, mapping), name), grid)


def test_identity_augmentation_keeps_the_bare_task_id():
    assert augment_name("abc", 0, np.arange(10)) == "abc"
    assert SEPARATOR in augment_name("abc", 1, np.arange(10))


def test_encode_layout_and_decode_round_trip():
    rng = np.random.default_rng(1)
    grid = random_grid(rng, 10)
    h, w = grid.shape
    tokens = encode_grid(grid, (3, 5)).reshape(30, 30)
    np.testing.assert_array_equal(tokens[3 : 3 + h, 5 : 5 + w], grid + 2)
    assert (tokens[3 + h, 5 : 5 + w] == EOS).all() and (tokens[3 : 3 + h, 5 + w] == EOS).all()
    assert (tokens[:3] == PAD).all() and tokens[3 + h, 5 + w] == PAD  # corner stays PAD, as official
    np.testing.assert_array_equal(decode_grid(tokens, (3, 5)), grid)
    full = random_grid(rng, 30)
    full = np.zeros((30, 30), np.uint8) + full[0, 0]
    np.testing.assert_array_equal(decode_grid(encode_grid(full)), full)  # no room for EOS
    assert decode_grid(np.ones(900, np.uint8)).shape == (0, 0)  # garbage prediction: empty grid


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"train": [{"input": [[1, 2], [3]], "output": [[1]]}], "test": []}), "not rectangular"),
        (json.dumps({"train": [{"input": [[1, 10]], "output": [[1]]}], "test": []}), "colour 10"),
        (json.dumps({"train": [{"input": [[1] * 31], "output": [[1]]}], "test": []}), "outside 1..30"),
        (json.dumps({"train": [{"input": [[1]]}], "test": []}), "'input' and 'output'"),
    ],
)
def test_bad_task_files_name_the_file(tmp_path, content, message):
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "bad0.json").write_text(content)
    with pytest.raises(DatasetFormatError, match=message) as err:
        read_tasks(tmp_path, ["training"])
    assert "bad0.json" in str(err.value)


# ----------------------------------------------------------------------------- builder


def decode_train_row(row):
    """Decode a translated row: the grid's top-left cell is its first colour token in row-major order."""
    return decode_grid(row, divmod(int(np.argmax(row >= 2)), 30))


def check_test_split_round_trip(root):
    """Every test-split row decodes and un-augments to its original test pair; returns the examples."""
    examples, tasks = read_test_examples(root)
    _, test = read_split(root, "test")
    names = read_identifiers(root)
    arrays = test["all"]
    row_names = np.repeat([names[i] for i in arrays["puzzle_identifiers"]], np.diff(arrays["puzzle_indices"]))
    assert len(examples) == len(arrays["inputs"]) == len(row_names)
    for n, example in enumerate(examples):
        assert example.name == row_names[n]
        inp, out = tasks[example.task_id].test[example.pair_index]
        np.testing.assert_array_equal(unaugment_grid(decode_grid(arrays["inputs"][n]), example.name), inp)
        np.testing.assert_array_equal(unaugment_grid(decode_grid(arrays["labels"][n]), example.name), out)
    return examples


def test_build_tiny_folder(tiny_arc, tmp_path):
    src, raw = tiny_arc
    out = build(ARCBuildConfig(source=str(src), dataset_dirs=["training", "evaluation"], output_dir=str(tmp_path / "out"),
                               num_aug=8, seed=3))
    names = read_identifiers(out)
    assert names[0] == "<blank>" and len(names) == len(set(names))
    assert {"aaaa0001", "aaaa0002", "bbbb0001"} <= set(names)  # identity variants present
    # aaaa0002 is all black, 1x1 and 1x2: colour maps do nothing, only 1x2 vs 2x1 differ -> 2 variants
    n_sym = sum(name.split(SEPARATOR)[0] == "aaaa0002" for name in names)
    assert n_sym == 2
    assert sum(name.split(SEPARATOR)[0] == "aaaa0001" for name in names) == 9

    meta, train = read_split(out, "train")
    assert (meta.vocab_size, meta.seq_len, meta.num_puzzle_identifiers, meta.total_groups) == (12, 900, len(names), 3)
    assert meta.provenance["stand_in"] is False
    t = train["all"]
    # training tasks: all 3 resp. 2 pairs per puzzle; evaluation task: only its 2 train pairs
    assert len(t["inputs"]) == 9 * 3 + n_sym * 2 + 9 * 2
    # translation: some train rows are shifted (first cell PAD), every test row starts at (0, 0)
    assert (t["inputs"][:, 0] == PAD).any()
    meta_test, test = read_split(out, "test")
    assert meta_test.total_groups == 1 and (test["all"]["inputs"][:, 0] >= 2).all()
    assert len(check_test_split_round_trip(out)) == 9 * 2

    # decoding a (possibly shifted) train row at its offset gives back the augmented original grids
    first = int(t["puzzle_indices"][names.index("aaaa0001") - 1])  # identity variant of the first task
    want = [np.array(raw["training/aaaa0001"][k][i]["output"]) for k, i in (("train", 0), ("train", 1), ("test", 0))]
    for row, grid in zip(t["labels"][first : first + 3], want):
        np.testing.assert_array_equal(decode_train_row(row), grid)


def test_variants_are_distinct(tiny_arc, tmp_path):
    src, _ = tiny_arc
    out = build(ARCBuildConfig(source=str(src), dataset_dirs=["training"], test_set_name="none",
                               output_dir=str(tmp_path / "out"), num_aug=50))
    _, train = read_split(out, "train")
    a = train["all"]
    contents = set()
    for p in range(len(a["puzzle_identifiers"])):
        rows = range(a["puzzle_indices"][p], a["puzzle_indices"][p + 1])
        grids = [decode_train_row(a[k][r]) for r in rows for k in ("inputs", "labels")]
        contents.add(tuple(sorted(bytes(g.shape) + g.tobytes() for g in grids)))
    # aaaa0001: the original + 50 variants; the symmetric aaaa0002 only 2 distinct ones (250 draws)
    assert len(contents) == len(a["puzzle_identifiers"]) == 1 + 50 + 2


@needs_arc
def test_build_real_tasks_from_archive(tmp_path):
    out = build(ARCBuildConfig(output_dir=str(tmp_path / "out"), num_aug=3, max_tasks=3, seed=1))
    names = read_identifiers(out)
    meta, _ = read_split(out, "train")
    assert meta.total_groups == 9 and meta.provenance["files"] == ARCBuildConfig().dataset_dirs
    examples = check_test_split_round_trip(out)
    assert {e.task_id for e in examples} <= set(names) and len({e.task_id for e in examples}) == 3


# Digests of builds made with the builder as it was before it encoded into preallocated arrays
# (commit 8a70c81): the memory refactor must not change a byte. dataset.json is hashed without
# provenance.params (it holds the machine's paths).
TINY_BUILD_DIGEST = "0b9fe24cb441be9d814a10f0afe9a9d61ee001a2fb9ca6e6f6037693e0b3549e"
REAL_BUILD_DIGEST = "2d3c1c3c3b34a07b916c4095fd7c12ebf90a6ec03a37708044f14b20d471498f"


def build_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.name == "dataset.json":
            meta = json.loads(data)
            del meta["provenance"]["params"]
            data = json.dumps(meta, sort_keys=True).encode()
        digest.update(str(path.relative_to(root)).encode() + b"\0" + data)
    return digest.hexdigest()


def test_tiny_build_is_byte_identical_to_the_reference(tiny_arc, tmp_path):
    out = build(ARCBuildConfig(source=str(tiny_arc[0]), dataset_dirs=["training", "evaluation"],
                               output_dir=str(tmp_path / "out"), num_aug=8, seed=3))
    assert build_digest(out) == TINY_BUILD_DIGEST


@needs_arc
def test_real_build_is_byte_identical_to_the_reference(tmp_path):
    out = build(ARCBuildConfig(output_dir=str(tmp_path / "out"), num_aug=20, max_tasks=4, seed=1))
    assert build_digest(out) == REAL_BUILD_DIGEST
