"""The official HRM on-disk dataset layout, read and written byte-compatibly.

A dataset root holds one folder per split plus a list of puzzle identifier names:

    <root>/identifiers.json                      ["<blank>", ...]
    <root>/<split>/dataset.json                  DatasetMetadata
    <root>/<split>/<set>__inputs.npy             (N, seq_len) integer tokens
    <root>/<split>/<set>__labels.npy             (N, seq_len) integer tokens
    <root>/<split>/<set>__puzzle_identifiers.npy (P,)   int32, one per puzzle
    <root>/<split>/<set>__puzzle_indices.npy     (P+1,) int32, example offsets of each puzzle
    <root>/<split>/<set>__group_indices.npy      (G+1,) int32, puzzle offsets of each group

This is what the official `PuzzleDataset` (sapientinc/HRM puzzle_dataset.py) loads. Writes are
atomic (temp folder + rename) so an interrupted build never leaves a half-written split behind.
"""

import json
import logging
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import UnionType
from typing import NoReturn, get_args, get_origin, get_type_hints

import numpy as np

logger = logging.getLogger(__name__)

IGNORE_LABEL_ID = -100  # the loss's ignore index (official models/losses.py)

ARRAY_NAMES = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")
TOKEN_ARRAYS = ("inputs", "labels")  # large: memory-mapped on read
_CHUNK_ROWS = 1 << 18  # rows per chunk when range-checking memory-mapped token arrays

SetArrays = dict[str, np.ndarray]


class DatasetFormatError(ValueError):
    """A dataset file breaks the official layout; the message names the file (and row)."""


@dataclass
class DatasetMetadata:
    """Contents of dataset.json: the official `PuzzleDatasetMetadata` fields plus our provenance."""

    pad_id: int
    ignore_label_id: int | None  # label value the loader turns into IGNORE_LABEL_ID (None: keep all)
    blank_identifier_id: int  # puzzle identifier used for padding rows
    vocab_size: int
    seq_len: int
    num_puzzle_identifiers: int
    total_groups: int  # summed over sets
    mean_puzzle_examples: float
    sets: list[str]
    provenance: dict | None = None  # ours: source, files, generator, params, stand_in, note

    def __post_init__(self):
        self.mean_puzzle_examples = float(self.mean_puzzle_examples)  # official pydantic writes 1 as 1.0

    def to_dict(self) -> dict:
        """Official keys only, plus provenance when set (the official loader ignores extra keys)."""
        d = asdict(self)
        if d["provenance"] is None:
            del d["provenance"]
        return d

    @classmethod
    def from_json(cls, path: str | Path) -> "DatasetMetadata":
        raw = read_json(path)
        if not isinstance(raw, dict):
            raise DatasetFormatError(f"{path}: expected a JSON object, got {type(raw).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise DatasetFormatError(f"{path}: unknown key(s) {unknown}")
        for name, hint in get_type_hints(cls).items():
            if name not in raw and name != "provenance":
                raise DatasetFormatError(f"{path}: missing required key '{name}'")
            if name in raw and not _has_type(raw[name], hint):
                raise DatasetFormatError(f"{path}: '{name}' should be {hint}, got {raw[name]!r}")
        return cls(**raw)


def _has_type(value, hint) -> bool:
    """isinstance against a dataclass annotation such as `int | None` or `list[str]` (no bools for ints)."""
    allowed = tuple(get_origin(t) or t for t in (get_args(hint) if isinstance(hint, UnionType) else (hint,)))
    if float in allowed:
        allowed += (int,)
    return isinstance(value, allowed) and not isinstance(value, bool)


def read_json(path: str | Path) -> object:
    """Parsed JSON; a missing or malformed file raises DatasetFormatError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DatasetFormatError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetFormatError(f"{path}: not valid JSON ({e})") from None


def _temp_path(target: Path, tag: str) -> Path:
    """A fresh hidden name beside `target`; same folder so os.replace is an atomic rename."""
    return target.parent / f".{target.name}.{tag}-{uuid.uuid4().hex[:12]}"


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temp file in the same folder + os.replace, so readers never see a partial file.
    The data is fsynced before the rename and an existing file keeps its permissions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path, "tmp")
    try:
        with open(tmp, "x", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- validation


def _fail(where: str, msg: str) -> NoReturn:
    raise DatasetFormatError(f"{where}: {msg}")


def _check_range(where: str, arr: np.ndarray, hi: int, allowed: int | None = None) -> None:
    """Values must lie in [0, hi) (or equal `allowed`); chunked so memmaps are never loaded whole."""
    for start in range(0, len(arr), _CHUNK_ROWS):
        chunk = np.asarray(arr[start : start + _CHUNK_ROWS])
        if chunk.size == 0 or (chunk.min() >= 0 and chunk.max() < hi):
            continue
        bad = (chunk < 0) | (chunk >= hi)
        if allowed is not None:
            bad &= chunk != allowed
        if bad.any():
            first = tuple(np.argwhere(bad)[0])
            extra = f" or == {allowed}" if allowed is not None else ""
            _fail(where, f"row {start + first[0]} has value {chunk[first]} outside [0, {hi}){extra}")


def _check_offsets(where: str, offsets: np.ndarray, end: int, what: str) -> None:
    """An index array: 1-D, starts at 0, ends at `end`, never decreases."""
    if offsets.ndim != 1 or len(offsets) < 1:
        _fail(where, f"must be a non-empty 1-D array, got shape {offsets.shape}")
    if offsets[0] != 0 or offsets[-1] != end:
        _fail(where, f"must start at 0 and end at {end} ({what}), got {offsets[0]} .. {offsets[-1]}")
    if np.any(np.diff(offsets) < 0):
        _fail(where, f"decreases at position {int(np.argmax(np.diff(offsets) < 0)) + 1}")


def _validate_set(meta: DatasetMetadata, arrays: SetArrays, where: str, set_name: str) -> int:
    """Validate one set's five arrays; returns its number of groups."""
    file = {name: f"{where}/{set_name}__{name}.npy" for name in ARRAY_NAMES}
    missing = [name for name in ARRAY_NAMES if name not in arrays]
    if missing:
        _fail(file[missing[0]], "array missing")
    for name in ARRAY_NAMES:
        if not np.issubdtype(arrays[name].dtype, np.integer):
            _fail(file[name], f"dtype {arrays[name].dtype} is not an integer type")

    inputs, labels = arrays["inputs"], arrays["labels"]
    for name, arr in (("inputs", inputs), ("labels", labels)):
        if arr.ndim != 2 or arr.shape[1] != meta.seq_len:
            _fail(file[name], f"shape {arr.shape} does not match (N, seq_len={meta.seq_len}) from dataset.json")
    if len(labels) != len(inputs):
        _fail(file["labels"], f"{len(labels)} rows but inputs has {len(inputs)}")
    _check_range(file["inputs"], inputs, meta.vocab_size)
    _check_range(file["labels"], labels, meta.vocab_size, allowed=meta.ignore_label_id)

    ids = arrays["puzzle_identifiers"]
    if ids.ndim != 1:
        _fail(file["puzzle_identifiers"], f"must be 1-D, got shape {ids.shape}")
    _check_offsets(file["puzzle_indices"], arrays["puzzle_indices"], len(inputs), "number of examples")
    if len(arrays["puzzle_indices"]) != len(ids) + 1:
        got = len(arrays["puzzle_indices"])
        _fail(file["puzzle_indices"], f"has {got} entries, expected number of puzzles + 1 = {len(ids) + 1}")
    _check_range(file["puzzle_identifiers"], ids, meta.num_puzzle_identifiers)
    _check_offsets(file["group_indices"], arrays["group_indices"], len(ids), "number of puzzles")
    return len(arrays["group_indices"]) - 1


def validate_split(metadata: DatasetMetadata, arrays: dict[str, SetArrays], where: str) -> None:
    """Check a split against the official layout; raise DatasetFormatError naming `where` and the problem."""
    json_file = f"{where}/dataset.json"
    if sorted(arrays) != sorted(metadata.sets):
        _fail(json_file, f"sets {metadata.sets} do not match the arrays' sets {sorted(arrays)}")
    for key in ("vocab_size", "seq_len", "num_puzzle_identifiers"):
        if getattr(metadata, key) <= 0:
            _fail(json_file, f"{key} must be positive, got {getattr(metadata, key)}")
    if not 0 <= metadata.pad_id < metadata.vocab_size:
        _fail(json_file, f"pad_id {metadata.pad_id} outside [0, vocab_size={metadata.vocab_size})")
    if not 0 <= metadata.blank_identifier_id < metadata.num_puzzle_identifiers:
        _fail(json_file, f"blank_identifier_id outside [0, num_puzzle_identifiers={metadata.num_puzzle_identifiers})")
    groups = sum(_validate_set(metadata, arrays[s], where, s) for s in metadata.sets)
    if groups != metadata.total_groups:
        _fail(json_file, f"total_groups is {metadata.total_groups} but the group_indices hold {groups} groups")


# ----------------------------------------------------------------------------- write / read


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Replace folder `target` by `tmp`; the old one is removed only after the new one is in place
    (a crash between the two renames leaves it intact as a hidden `.<split>.old-*` folder)."""
    old = _temp_path(target, "old") if target.exists() else None
    if old is not None:
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old)


def write_split(root: str | Path, split: str, metadata: DatasetMetadata, arrays: dict[str, SetArrays]) -> Path:
    """Validate, then write `<root>/<split>/` atomically; returns the split folder."""
    target = Path(root) / split
    validate_split(metadata, arrays, str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(target, "tmp")
    tmp.mkdir()
    try:
        (tmp / "dataset.json").write_text(json.dumps(metadata.to_dict()))
        for set_name, set_arrays in arrays.items():
            for name in ARRAY_NAMES:
                np.save(tmp / f"{set_name}__{name}.npy", set_arrays[name])
        _swap_into_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful swap
    logger.info("wrote %s (%d groups)", target, metadata.total_groups)
    return target


def write_identifiers(root: str | Path, names: list[str]) -> None:
    """`<root>/identifiers.json`: puzzle identifier id -> name (official: for visualisation only)."""
    atomic_write_text(Path(root) / "identifiers.json", json.dumps(names))


def read_identifiers(root: str | Path) -> list[str]:
    path = Path(root) / "identifiers.json"
    names = read_json(path)
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise DatasetFormatError(f"{path}: expected a JSON list of strings")
    return names


def _load_array(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise DatasetFormatError(f"{path}: file not found") from None
    except (ValueError, OSError, EOFError) as e:
        raise DatasetFormatError(f"{path}: not a readable .npy array ({e})") from None


def read_split(root: str | Path, split: str, mmap: bool = True) -> tuple[DatasetMetadata, dict[str, SetArrays]]:
    """Load and validate a split; inputs/labels are memory-mapped (never copied) when `mmap`."""
    folder = Path(root) / split
    metadata = DatasetMetadata.from_json(folder / "dataset.json")
    arrays = {
        set_name: {
            name: _load_array(folder / f"{set_name}__{name}.npy", mmap and name in TOKEN_ARRAYS)
            for name in ARRAY_NAMES
        }
        for set_name in metadata.sets
    }
    validate_split(metadata, arrays, str(folder))
    return metadata, arrays
