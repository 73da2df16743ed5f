"""The official CSV layout (`source,question,answer,rating`) shared by the Sudoku and Maze builders.

Both official builders (sapientinc/HRM dataset/build_{sudoku,maze}_dataset.py) read the same train/test CSV
pair and write one puzzle per row; only the grid alphabet, the rating column's meaning and the
augmentation differ. Those stay in sudoku.py / maze.py; the CSV plumbing, source staging, split writing
and CLI live here once.
"""

import argparse
import csv
import io
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from types import UnionType
from typing import Any, Self, get_args, get_origin

import numpy as np
from huggingface_hub import hf_hub_download

from puzzle_hrm.hub import from_hub
from puzzle_hrm.data.format import (
    DatasetFormatError,
    DatasetMetadata,
    atomic_write_text,
    read_json,
    write_identifiers,
    write_split,
)

CSV_HEADER = ["source", "question", "answer", "rating"]
SPLITS = ("train", "test")


@dataclass
class OfficialTable:
    """Rows of an official CSV as arrays: grids (N, ...) uint8, rating (N,) int64."""

    source: list[str]
    question: np.ndarray
    answer: np.ndarray
    rating: np.ndarray

    def __len__(self) -> int:
        return len(self.source)

    def subset(self, idx: np.ndarray) -> Self:
        return type(self)([self.source[i] for i in idx], self.question[idx], self.answer[idx], self.rating[idx])


Staged = tuple[dict[str, OfficialTable], dict]  # CSV table of each split, provenance


# ----------------------------------------------------------------------------- CSV IO


def read_rows(
    path: Path, seq_len: int, parse_rating: Callable[[str], int], rating_kind: str
) -> tuple[list[str], list[str], list[str], list[int]]:
    """(sources, questions, answers, ratings) of a CSV after the checks that need no grid alphabet, so that
    each error names the file and 1-based data row; `rating_kind` words the rating error ("an integer")."""
    sources, questions, answers, ratings = [], [], [], []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header != CSV_HEADER:
                raise DatasetFormatError(f"{path}: header is {header}, expected {CSV_HEADER}")
            for row, fields_ in enumerate(reader, start=1):
                if len(fields_) != len(CSV_HEADER):
                    raise DatasetFormatError(f"{path}: row {row}: expected {len(CSV_HEADER)} columns, got {len(fields_)}")
                source, question, answer, rating = fields_
                for name, value in (("question", question), ("answer", answer)):
                    if len(value) != seq_len:
                        raise DatasetFormatError(
                            f"{path}: row {row}: {name} has {len(value)} characters, expected {seq_len}")
                try:
                    ratings.append(parse_rating(rating))
                except ValueError:
                    raise DatasetFormatError(f"{path}: row {row}: rating {rating!r} is not {rating_kind}") from None
                sources.append(source)
                questions.append(question)
                answers.append(answer)
    except UnicodeDecodeError as err:
        raise DatasetFormatError(f"{path}: not UTF-8 text (byte {err.object[err.start:err.start + 1]!r} at offset {err.start})") from None
    return sources, questions, answers, ratings


def write_table(path: str | Path, table: OfficialTable, grid_strings: Callable[[np.ndarray], list[str]]) -> None:
    """Official layout with `grid_strings` spelling the grids; atomic so a crash never leaves half a CSV."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    questions, answers = grid_strings(table.question), grid_strings(table.answer)
    writer.writerows(zip(table.source, questions, answers, table.rating.tolist()))
    atomic_write_text(path, buf.getvalue())


# ----------------------------------------------------------------------------- sources


def _download_csv(repo: str, split: str, local_files_only: bool) -> str:
    return hf_hub_download(repo, f"{split}.csv", repo_type="dataset", local_files_only=local_files_only)


def stage_source(
    source: str,
    output_dir: str,
    generators: Mapping[str, Callable[[], Staged]],
    write_csv: Callable[[Path, Any], None],
    hub_rating: str,
    official_name: str,
) -> tuple[dict[str, Path], dict]:
    """CSV file of each split plus what is known of their origin. `source` is "hf://<repo>", a key of
    `generators` (its tables are first written as official CSVs, with a provenance.json beside them, under
    <output_dir>/raw/ so the build can be repeated from them) or a folder of train/test.csv."""
    if source.startswith("hf://"):
        repo = source.removeprefix("hf://")
        hint = f"copy the repo's {' and '.join(f'{s}.csv' for s in SPLITS)} to a folder and pass that folder as the source"
        files = {split: from_hub(source, partial(_download_csv, repo, split), hint) for split in SPLITS}
        return files, {
            "source": source,
            "files": [f"{repo}/{split}.csv" for split in SPLITS],
            "stand_in": False,
            "note": "official CSVs downloaded from the Hugging Face hub",
            "rating": hub_rating,
        }
    if source in generators:
        tables, provenance = generators[source]()
        folder = Path(output_dir) / "raw"
        for split, table in tables.items():
            write_csv(folder / f"{split}.csv", table)
        atomic_write_text(folder / "provenance.json", json.dumps(provenance, indent=1))
    else:
        folder = Path(source)
        if not folder.is_dir():
            names = ", ".join(f"'{name}'" for name in ("hf://<repo>", *generators))
            raise ValueError(f"source {source!r} is neither {names} nor a folder")
    sidecar = folder / "provenance.json"
    provenance = read_json(sidecar) if sidecar.exists() else {
        "source": str(folder), "files": [], "stand_in": False, "rating": "CSV rating column",
        "note": f"CSV folder without provenance.json: assumed to hold the official {official_name} CSVs",
    }
    return {split: folder / f"{split}.csv" for split in SPLITS}, provenance


# ----------------------------------------------------------------------------- builder


def subsample_train(
    table: OfficialTable, split: str, size: int | None, rng: np.random.Generator, counts: dict
) -> OfficialTable:
    """The official `subsample_size`: train rows drawn uniformly without replacement (test kept whole)."""
    if split == "train" and size is not None and size < len(table):
        table = table.subset(rng.choice(len(table), size=size, replace=False))
        counts["after_subsample"] = len(table)
    return table


def write_official_split(
    output_dir: str,
    split: str,
    inputs: np.ndarray,
    labels: np.ndarray,
    per_group: int,
    vocab_size: int,
    provenance: dict,
    log: logging.Logger,
) -> Path:
    """Write (E, seq_len) token rows where every example is its own puzzle and each run of `per_group`
    consecutive examples (an original and its augmented copies) is one group, as the official builders do."""
    num_groups = len(inputs) // per_group
    metadata = DatasetMetadata(
        pad_id=0,
        ignore_label_id=0,
        blank_identifier_id=0,
        vocab_size=vocab_size,
        seq_len=inputs.shape[1],
        num_puzzle_identifiers=1,
        total_groups=num_groups,
        mean_puzzle_examples=1,
        sets=["all"],
        provenance=provenance,
    )
    arrays = {
        "inputs": inputs,
        "labels": labels,
        "puzzle_identifiers": np.zeros(len(inputs), np.int32),  # every example is its own puzzle
        "puzzle_indices": np.arange(len(inputs) + 1, dtype=np.int32),
        "group_indices": np.arange(0, len(inputs) + 1, per_group, dtype=np.int32),
    }
    log.info("%s: %s -> %d examples in %d groups", split, provenance["counts"], len(inputs), num_groups)
    return write_split(output_dir, split, metadata, {"all": arrays})


def build_official(
    config: Any,
    stage: Callable[[Any, np.random.Generator], tuple[dict[str, Path], dict]],
    read: Callable[[Path], OfficialTable],
    build_split: Callable[[Any, str, OfficialTable, np.random.Generator, dict], Path],
) -> Path:
    """Stage, then read and write each split; separate seeded streams keep staging from shifting the
    build's draws. Writes <output_dir>/{train,test}/ and identifiers.json; returns output_dir."""
    stage_rng, build_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(2))
    files, provenance = stage(config, stage_rng)
    for split in SPLITS:
        build_split(config, split, read(files[split]), build_rng, provenance)
    write_identifiers(config.output_dir, ["<blank>"])
    return Path(config.output_dir)


# ----------------------------------------------------------------------------- CLI


def _cli_type(hint):
    """The argparse type of a config field: `int | None` -> int."""
    return next(t for t in get_args(hint) if t is not type(None)) if isinstance(hint, UnionType) else hint


def main(
    config_cls: type,
    build: Callable[[Any], Path],
    argv: list[str] | None,
    description: str,
    source_help: str,
    helps: Mapping[str, str] | None = None,
) -> None:
    """The official `--source-repo` option (or our `--source`) plus one flag per further config field,
    same name, so the CLI cannot drift from the config dataclass."""
    helps = helps or {}
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--source-repo", help="official option: Hugging Face dataset repo (same as --source hf://REPO)")
    src.add_argument("--source", default=config_cls.source, help=source_help)
    for f in fields(config_cls)[1:]:  # after source: one flag per field, same name
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool:
            p.add_argument(flag, action="store_true", help=helps.get(f.name))
        elif get_origin(f.type) is tuple:
            p.add_argument(flag, nargs="+", default=f.default, help=helps.get(f.name))
        else:
            p.add_argument(flag, type=_cli_type(f.type), default=f.default, help=helps.get(f.name))
    args = vars(p.parse_args(argv))
    source_repo = args.pop("source_repo")
    config = config_cls(**{**args, "source": f"hf://{source_repo}" if source_repo else args["source"]})
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = build(config)
    print(f"wrote {out}/train, {out}/test and {out}/identifiers.json from {config.source}")

