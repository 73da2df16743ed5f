"""What a resume must check: the checkpoint belongs to the run that is asked for.

A checkpoint records the model config, the train config and the dataset it was trained on. Resuming
with another model, another recipe or other data would continue (or, at the last step, re-report)
someone else's run under the new labels, so any difference in a key that changes results is refused,
naming the keys. Run controls (how long, how often to log or save, where) may change between slices.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping

from puzzle_hrm.checkpoint import remove_orphan_temps

# TrainConfig keys that say how a run is driven, not what it computes: they may differ on resume
# and do not name a different run. eval_max_batches only caps the final report and test_time_steps only
# lengthens its curve, not the training; compile settings change kernels, not the maths.
RUN_CONTROLS = frozenset({
    "data_path", "max_steps", "max_train_seconds", "device", "compile", "compile_mode", "compile_loss", "eval_max_batches",
    "test_time_steps", "checkpoint_dir",
    "checkpoint_every", "resume", "log_every", "progress", "wandb", "wandb_project",
})
# Model config keys that the run fixes but that do not change the maths (per-rank batch: world size; kernels).
MODEL_RUN_CONTROLS = frozenset({"batch_size", "attn_backend"})
# Files that identify a built dataset: the per-split metadata and the builder's parameters.
FINGERPRINT_FILES = ("train/dataset.json", "test/dataset.json", "build_config.json")


class ResumeMismatch(ValueError):
    """The checkpoint was trained with another configuration or other data."""


def result_keys(config: Mapping[str, Any], controls: frozenset[str] = RUN_CONTROLS) -> dict[str, Any]:
    """The part of a config that changes results."""
    return {k: v for k, v in config.items() if k not in controls}


def differences(saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """`key: saved -> wanted` for each key whose values differ (tuples and lists compare equal)."""
    def norm(value: Any) -> Any:
        return list(value) if isinstance(value, tuple) else value

    keys = sorted(set(saved) | set(wanted))
    return [f"{k}: {saved.get(k, '<absent>')!r} -> {wanted.get(k, '<absent>')!r}" for k in keys if norm(saved.get(k)) != norm(wanted.get(k))]


def dataset_fingerprint(data_dir: str | Path) -> str:
    """sha256 over the files that identify a dataset (those present), so a rebuilt or other set differs."""
    digest = hashlib.sha256()
    for name in FINGERPRINT_FILES:
        path = Path(data_dir) / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def section_differences(section: str, saved: Mapping[str, Any], wanted: Mapping[str, Any], controls: frozenset[str]) -> list[str]:
    return [f"{section}.{d}" for d in differences(result_keys(saved, controls), result_keys(wanted, controls))]


def refuse(path: Path, found: list[str]) -> None:
    if found:
        raise ResumeMismatch(f"{path}: cannot resume, the checkpoint was trained with other settings ({'; '.join(found)}); "
                             "use another checkpoint_dir for the new run, or the old settings to continue")


def check_resumable(path: Path, saved: Mapping[str, Any], train: Mapping[str, Any], model: Mapping[str, Any], fingerprint: str) -> None:
    """Refuse to resume `saved` (a loaded checkpoint) into a run with other results-changing settings."""
    found = section_differences("train", saved.get("train_config", {}), train, RUN_CONTROLS)
    found += section_differences("model", saved.get("model_config", {}), model, MODEL_RUN_CONTROLS)
    if saved.get("dataset_fingerprint") not in (None, fingerprint):
        found.append("dataset: its dataset.json / build_config.json differ from the checkpoint's")
    refuse(path, found)


def check_start(path: Path, resume: bool) -> None:
    """Before a run writes `path`: remove temp files of killed writes; refuse to start from scratch
    over an existing checkpoint (it may be a longer run's: continue it, or choose another folder)."""
    remove_orphan_temps(path)
    if path.exists() and not resume:
        raise ValueError(f"{path}: a checkpoint of an earlier run is there; pass resume=true to continue it, "
                         "or use another checkpoint_dir (or remove this one) to train from scratch")
