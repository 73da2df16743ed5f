"""ARC-AGI data: task JSON reading, 30x30 grid encoding, dihedral + colour augmentation, the builder.

Follows the official builder (sapientinc/HRM dataset/build_arc_dataset.py):

- every ARC task (file stem = task id) becomes one group: the original puzzle plus up to `num_aug`
  distinct variants, each a random dihedral transform (tid 0..7) with a random permutation of colours
  1..9 (0 = black stays), deduplicated by a content hash, at most 5 * num_aug draws
  (ARCAugmentRetriesFactor). A variant is its own puzzle identifier, named
  f"{task_id}|||t{tid}|||{mapping digits}" (the original keeps the bare task id);
- tasks of `test_set_name` (e.g. "evaluation") put their train pairs in the train split and their test
  pairs in the test split under the same identifier; all other tasks put every pair in the train split;
- a grid is a 30x30 token array: PAD 0, EOS 1, colour c -> c + 2; it sits at (pad_r, pad_c) with an EOS
  row below and an EOS column right of it (where inside 30x30). Train-split pairs get a random offset
  that fits input and output, except one pair per puzzle (official `no_aug_id`); test split: offset 0.

Besides the official layout the builder writes `test_puzzles.json` (the original test-set tasks,
official format) and `test_examples.json` (per test-split row: [task id, test pair index, puzzle name]),
which is what `puzzle_hrm.arc_eval` needs to undo the augmentation and score.

    python -m puzzle_hrm.data.arc --num-aug 10 --output-dir datasets/arc-aug-10
"""

import argparse
import hashlib
import json
import logging
import tarfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from puzzle_hrm.data.augment import dihedral_transform, inverse_dihedral_transform
from puzzle_hrm.data.format import (
    DatasetFormatError,
    DatasetMetadata,
    atomic_write_text,
    read_json,
    write_identifiers,
    write_split,
)

logger = logging.getLogger(__name__)

MAX_GRID = 30  # ARCMaxGridSize
SEQ_LEN = MAX_GRID * MAX_GRID
PAD, EOS, COLOUR_OFFSET = 0, 1, 2
VOCAB_SIZE = 10 + COLOUR_OFFSET
AUGMENT_RETRIES_FACTOR = 5  # official ARCAugmentRetriesFactor
SEPARATOR = "|||"  # official PuzzleIdSeparator
DEFAULT_ARC_ARCHIVE = Path(__file__).resolve().parents[2] / "datasets/sources/arc/arc_raw.tar.gz"  # see its README
ARC_AGI_1_DIRS = ["ARC-AGI/data/training", "ARC-AGI/data/evaluation", "ConceptARC/corpus"]

Pair = tuple[np.ndarray, np.ndarray]  # (input grid, output grid), uint8 colours 0..9


@dataclass
class ARCTask:
    """One task file: its id, the folder it came from (its set) and its pairs as uint8 grids."""

    task_id: str
    set_name: str  # parent folder name: "training", "evaluation", a ConceptARC concept, ...
    train: list[Pair]
    test: list[Pair]
    raw: dict  # the parsed JSON, kept to write test_puzzles.json


@dataclass(frozen=True)
class TestExample:
    """Where one test-split row comes from."""

    __test__ = False  # not a pytest test class despite the name

    task_id: str
    pair_index: int  # index into the task's "test" list
    name: str  # puzzle identifier name: task id, or task id + augmentation


# ----------------------------------------------------------------------------- reading


def parse_grid(value, where: str) -> np.ndarray:
    """A rectangular list of lists of ints 0..9, 1..30 per side -> (H, W) uint8; else DatasetFormatError."""
    if not (isinstance(value, list) and value and all(isinstance(row, list) for row in value)):
        raise DatasetFormatError(f"{where}: grid must be a non-empty list of rows")
    if len({len(row) for row in value}) != 1:
        raise DatasetFormatError(f"{where}: grid is not rectangular (row lengths {sorted({len(r) for r in value})})")
    if not all(type(x) is int for row in value for x in row):
        raise DatasetFormatError(f"{where}: grid cells must be integers")
    grid = np.array(value, np.int64)
    if not (1 <= grid.shape[0] <= MAX_GRID and 1 <= grid.shape[1] <= MAX_GRID):
        raise DatasetFormatError(f"{where}: grid shape {grid.shape} outside 1..{MAX_GRID} per side")
    if grid.min() < 0 or grid.max() > 9:
        raise DatasetFormatError(f"{where}: colour {grid.max() if grid.max() > 9 else grid.min()} outside 0..9")
    return grid.astype(np.uint8)


def parse_task(raw, where: str, task_id: str, set_name: str) -> ARCTask:
    """Validate one task's JSON ({"train": [{"input", "output"}...], "test": [...]})."""
    if not isinstance(raw, dict) or not isinstance(raw.get("train"), list) or not isinstance(raw.get("test"), list):
        raise DatasetFormatError(f"{where}: expected an object with 'train' and 'test' lists")
    pairs = {}
    for kind in ("train", "test"):
        pairs[kind] = []
        for i, example in enumerate(raw[kind]):
            if not isinstance(example, dict) or {"input", "output"} - set(example):
                raise DatasetFormatError(f"{where}: {kind}[{i}] needs 'input' and 'output'")
            pairs[kind].append(tuple(parse_grid(example[k], f"{where}: {kind}[{i}].{k}") for k in ("input", "output")))
    return ARCTask(task_id, set_name, pairs["train"], pairs["test"], raw)


def _task_texts(source: Path, folder: str) -> dict[str, bytes]:
    """Path -> bytes of every *.json below `folder` (recursively), from a directory or a tar archive."""
    if source.is_dir():
        return {str(p): p.read_bytes() for p in (source / folder).rglob("*.json") if p.is_file()}
    prefix = folder.strip("/") + "/"
    with tarfile.open(source) as tar:
        members = [m for m in tar.getmembers()
                   if m.isfile() and m.name.removeprefix("./").startswith(prefix) and m.name.endswith(".json")]
        return {f"{source}:{m.name.removeprefix('./')}": tar.extractfile(m).read() for m in members}


def read_tasks(source: str | Path, dataset_dirs: list[str], max_tasks: int | None = None) -> list[ARCTask]:
    """Tasks of each folder in sorted path order (the first `max_tasks` of each folder when set)."""
    source = Path(source)
    if not source.exists():
        raise DatasetFormatError(f"{source}: ARC source not found")
    tasks, seen = [], {}
    for folder in dataset_dirs:
        texts = _task_texts(source, folder)
        if not texts:
            raise DatasetFormatError(f"{source}: no task JSON files under {folder!r}")
        for where in sorted(texts)[:max_tasks]:
            try:
                raw = json.loads(texts[where])
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise DatasetFormatError(f"{where}: not valid JSON ({e})") from None
            path = PurePosixPath(where)
            task = parse_task(raw, where, path.stem, path.parent.name)
            if task.task_id in seen:
                raise DatasetFormatError(f"{where}: task id {task.task_id!r} already read from {seen[task.task_id]}")
            seen[task.task_id] = where
            tasks.append(task)
    return tasks


# ----------------------------------------------------------------------------- encoding


def encode_grid(grid: np.ndarray, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """(H, W) colours -> (900,) uint8 tokens: colours + 2 at `offset`, EOS row below / column right."""
    (r, c), (h, w) = offset, grid.shape
    out = np.full((MAX_GRID, MAX_GRID), PAD, np.uint8)
    out[r : r + h, c : c + w] = grid + COLOUR_OFFSET
    if r + h < MAX_GRID:
        out[r + h, c : c + w] = EOS
    if c + w < MAX_GRID:
        out[r : r + h, c + w] = EOS
    return out.reshape(-1)


def decode_grid(tokens: np.ndarray, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Inverse of encode_grid for any token row (also model predictions): from `offset`, the largest
    rectangle of colour tokens bounded by the first non-colour token of each row (the official _crop)."""
    grid = np.asarray(tokens).reshape(MAX_GRID, MAX_GRID)[offset[0] :, offset[1] :].astype(np.int64)
    is_colour = (grid >= COLOUR_OFFSET) & (grid < VOCAB_SIZE)
    width = np.where(is_colour.all(1), grid.shape[1], np.argmin(is_colour, axis=1))  # colour run of each row
    widths = np.minimum.accumulate(width)  # widest rectangle using rows 0..r
    areas = widths * np.arange(1, len(widths) + 1)
    rows = int(np.argmax(areas)) + 1 if areas.max() > 0 else 0
    return (grid[:rows, : widths[rows - 1] if rows else 0] - COLOUR_OFFSET).astype(np.uint8)


# ----------------------------------------------------------------------------- augmentation


def augment_name(task_id: str, tid: int, mapping: np.ndarray) -> str:
    if tid == 0 and np.array_equal(mapping, np.arange(10)):
        return task_id
    return f"{task_id}{SEPARATOR}t{tid}{SEPARATOR}{''.join(map(str, mapping))}"


def parse_name(name: str) -> tuple[str, int, np.ndarray]:
    """Puzzle name -> (task id, dihedral tid, colour mapping old -> new)."""
    if SEPARATOR not in name:
        return name, 0, np.arange(10, dtype=np.uint8)
    task_id, tid, digits = name.rsplit(SEPARATOR, 2)
    return task_id, int(tid.removeprefix("t")), np.array([int(d) for d in digits], np.uint8)


def augment_grid(grid: np.ndarray, tid: int, mapping: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(dihedral_transform(mapping[grid], tid))


def unaugment_grid(grid: np.ndarray, name: str) -> np.ndarray:
    """Undo the augmentation named by `name`: inverse dihedral, then inverse colour map."""
    _, tid, mapping = parse_name(name)
    return np.ascontiguousarray(np.argsort(mapping).astype(np.uint8)[inverse_dihedral_transform(grid, tid)])


def _content_hash(pairs: list[Pair]) -> str:
    """Order-free hash of a variant's grids (shape + bytes), as the official puzzle_hash."""
    def grid_hash(g):
        return hashlib.sha256(bytes(g.shape) + g.tobytes()).hexdigest()
    return hashlib.sha256("|".join(sorted(f"{grid_hash(i)}|{grid_hash(o)}" for i, o in pairs)).encode()).hexdigest()


def augment_task(task: ARCTask, num_aug: int, rng: np.random.Generator) -> list[tuple[str, list[Pair]]]:
    """(name, augmented train + test pairs) of the original and up to `num_aug` distinct variants."""
    pairs = task.train + task.test
    variants = [(task.task_id, pairs)]
    hashes = {_content_hash(pairs)}
    for _ in range(AUGMENT_RETRIES_FACTOR * num_aug):
        if len(variants) > num_aug:
            break
        tid = int(rng.integers(8))
        mapping = np.concatenate([[0], rng.permutation(np.arange(1, 10))]).astype(np.uint8)
        augmented = [(augment_grid(i, tid, mapping), augment_grid(o, tid, mapping)) for i, o in pairs]
        h = _content_hash(augmented)
        if h not in hashes:
            hashes.add(h)
            variants.append((augment_name(task.task_id, tid, mapping), augmented))
    if len(variants) <= num_aug:
        logger.info("task %s: only %d distinct variants", task.task_id, len(variants))
    return variants


# ----------------------------------------------------------------------------- builder


@dataclass
class ARCBuildConfig:
    """Options of the official builder, with our offline source."""

    source: str = str(DEFAULT_ARC_ARCHIVE)  # folder or .tar.gz holding the dataset_dirs
    dataset_dirs: list[str] = field(default_factory=lambda: list(ARC_AGI_1_DIRS))  # relative to source
    test_set_name: str = "evaluation"  # tasks in a folder of this name supply the test split
    output_dir: str = "datasets/arc-aug-1000"
    num_aug: int = 1000  # augmented variants per task (besides the original)
    seed: int = 0
    max_tasks: int | None = None  # per dataset_dir, for quick builds

    def __post_init__(self):
        if self.num_aug < 0 or (self.max_tasks is not None and self.max_tasks < 1):
            raise ValueError(f"need num_aug >= 0 and max_tasks >= 1; got {self.num_aug}, {self.max_tasks}")


class _SplitArrays:
    """One split's arrays, filled puzzle by puzzle. Token rows are encoded straight into arrays
    preallocated for the most rows the split can get (every variant distinct); the pages of rows
    never written are never touched, so memory follows the rows actually built."""

    def __init__(self, capacity: int):
        self.inputs = np.empty((capacity, SEQ_LEN), np.uint8)
        self.labels = np.empty((capacity, SEQ_LEN), np.uint8)
        self.num_examples = 0
        self.puzzle_ids: list[int] = []
        self.puzzle_indices = [0]
        self.group_indices = [0]

    def add_puzzle(self, pairs: list[Pair], puzzle_id: int, rng: np.random.Generator | None) -> None:
        """Append a puzzle; with `rng`, random offsets for all pairs but one (official no_aug_id)."""
        no_aug = int(rng.integers(len(pairs))) if rng is not None else -1
        for k, (inp, out) in enumerate(pairs):
            offset = (0, 0)
            if rng is not None and k != no_aug:
                h, w = max(inp.shape[0], out.shape[0]), max(inp.shape[1], out.shape[1])
                offset = (int(rng.integers(MAX_GRID - h + 1)), int(rng.integers(MAX_GRID - w + 1)))
            self.inputs[self.num_examples] = encode_grid(inp, offset)
            self.labels[self.num_examples] = encode_grid(out, offset)
            self.num_examples += 1
        self.puzzle_ids.append(puzzle_id)
        self.puzzle_indices.append(self.num_examples)

    def end_group(self) -> None:
        if self.group_indices[-1] != len(self.puzzle_ids):
            self.group_indices.append(len(self.puzzle_ids))

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "inputs": self.inputs[: self.num_examples],
            "labels": self.labels[: self.num_examples],
            "puzzle_identifiers": np.array(self.puzzle_ids, np.int32),
            "puzzle_indices": np.array(self.puzzle_indices, np.int32),
            "group_indices": np.array(self.group_indices, np.int32),
        }

    def metadata(self, num_identifiers: int, provenance: dict) -> DatasetMetadata:
        num_puzzles = len(self.puzzle_ids)
        return DatasetMetadata(
            pad_id=PAD,
            ignore_label_id=PAD,
            blank_identifier_id=0,
            vocab_size=VOCAB_SIZE,
            seq_len=SEQ_LEN,
            num_puzzle_identifiers=num_identifiers,
            total_groups=len(self.group_indices) - 1,
            mean_puzzle_examples=self.num_examples / num_puzzles if num_puzzles else 0.0,
            sets=["all"],
            provenance=provenance,
        )


def _new_splits(tasks: list[ARCTask], config: ARCBuildConfig) -> dict[str, _SplitArrays]:
    """Empty train/test splits sized for num_aug + 1 distinct variants of every task."""
    test = sum(len(t.test) for t in tasks if t.set_name == config.test_set_name)
    train = sum(len(t.train) + len(t.test) for t in tasks) - test
    variants = config.num_aug + 1
    return {"train": _SplitArrays(train * variants), "test": _SplitArrays(test * variants)}


def _add_task(task: ARCTask, is_test: bool, splits: dict[str, _SplitArrays], names: list[str], num_aug: int,
              rng: np.random.Generator) -> None:
    """Every variant of `task` becomes a puzzle (named in `names`); all of them form one group per split."""
    for name, pairs in augment_task(task, num_aug, rng):
        names.append(name)
        train_pairs = pairs[: len(task.train)] if is_test else pairs
        if train_pairs:
            splits["train"].add_puzzle(train_pairs, len(names) - 1, rng)
        if is_test and task.test:
            splits["test"].add_puzzle(pairs[len(task.train) :], len(names) - 1, None)
    for split in splits.values():
        split.end_group()


def row_examples(row_identifiers: Sequence[int], names: Sequence[str]) -> list[TestExample]:
    """Where each test-split row comes from, given its puzzle identifier (and identifiers.json's `names`):
    a puzzle's rows are consecutive and are its task's test pairs, in order."""
    examples: list[TestExample] = []
    previous = None
    for puzzle_id in row_identifiers:
        name = names[puzzle_id]
        pair_index = examples[-1].pair_index + 1 if puzzle_id == previous else 0
        examples.append(TestExample(parse_name(name)[0], pair_index, name))
        previous = puzzle_id
    return examples


def build(config: ARCBuildConfig) -> Path:
    """Write <output_dir>/{train,test}/, identifiers.json, test_puzzles.json and test_examples.json."""
    rng = np.random.default_rng(config.seed)
    tasks = read_tasks(config.source, config.dataset_dirs, config.max_tasks)
    splits = _new_splits(tasks, config)
    names = ["<blank>"]
    for task in tasks:
        _add_task(task, task.set_name == config.test_set_name, splits, names, config.num_aug, rng)

    provenance = {
        "source": f"arc:{Path(config.source).name}",
        "files": list(config.dataset_dirs),
        "stand_in": False,
        "note": "real ARC task files (see shared/data/PROVENANCE.md for the upstream commits)",
        "generator": "puzzle_hrm.data.arc",
        "params": asdict(config),
        "counts": {"tasks": len(tasks), "test_tasks": sum(t.set_name == config.test_set_name for t in tasks)},
    }
    for split_name, split in splits.items():
        write_split(config.output_dir, split_name, split.metadata(len(names), provenance), {"all": split.arrays()})
        logger.info("%s: %d examples, %d puzzles", split_name, split.num_examples, len(split.puzzle_ids))
    out = Path(config.output_dir)
    write_identifiers(out, names)
    test_tasks = {t.task_id: t.raw for t in tasks if t.set_name == config.test_set_name}
    atomic_write_text(out / "test_puzzles.json", json.dumps(test_tasks))
    test = splits["test"]
    examples = row_examples(np.repeat(test.puzzle_ids, np.diff(test.puzzle_indices)).tolist(), names)
    atomic_write_text(out / "test_examples.json", json.dumps([[e.task_id, e.pair_index, e.name] for e in examples]))
    return out


def read_test_tasks(root: str | Path) -> dict[str, ARCTask]:
    """The original test-set tasks (test_puzzles.json, official format) of a built dataset."""
    path = Path(root) / "test_puzzles.json"
    raw_tasks = read_json(path)
    if not isinstance(raw_tasks, dict):
        raise DatasetFormatError(f"{path}: expected an object of tasks")
    return {tid: parse_task(raw, f"{path}:{tid}", tid, "") for tid, raw in raw_tasks.items()}


def check_examples(examples: Sequence[TestExample], tasks: dict[str, ARCTask], where: str) -> None:
    """Every example names a task of `tasks` and one of its test pairs; else DatasetFormatError naming the row."""
    for n, e in enumerate(examples):
        if e.task_id not in tasks or not 0 <= e.pair_index < len(tasks[e.task_id].test):
            raise DatasetFormatError(f"{where}: row {n} ({e}) has no test pair in test_puzzles.json")


def read_test_examples(root: str | Path) -> tuple[list[TestExample], dict[str, ARCTask]]:
    """The test-split row map and the original test-set tasks written by `build`."""
    root = Path(root)
    rows = read_json(root / "test_examples.json")
    if not isinstance(rows, list):
        raise DatasetFormatError(f"{root / 'test_examples.json'}: expected a list of [task id, pair index, name]")
    tasks = read_test_tasks(root)
    examples = [TestExample(str(t), int(k), str(n)) for t, k, n in rows]
    check_examples(examples, tasks, str(root / "test_examples.json"))
    return examples, tasks


def main(argv: list[str] | None = None) -> None:
    defaults = ARCBuildConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=defaults.source, help="folder or .tar.gz of ARC task folders")
    p.add_argument("--dataset-dirs", nargs="+", default=defaults.dataset_dirs, help="folders inside source")
    p.add_argument("--test-set-name", default=defaults.test_set_name)
    p.add_argument("--output-dir", default=defaults.output_dir)
    p.add_argument("--num-aug", type=int, default=defaults.num_aug)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--max-tasks", type=int, default=None, help="per dataset dir, for quick builds")
    config = ARCBuildConfig(**vars(p.parse_args(argv)))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = build(config)
    print(f"wrote {out}/train, {out}/test, identifiers.json, test_puzzles.json, test_examples.json")


if __name__ == "__main__":
    main()
