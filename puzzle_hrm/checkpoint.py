"""Checkpoints: atomic writes, `weights_only=True` loads, and enough state to resume bit-identically.

A training checkpoint holds the model (puzzle-embedding table included), every optimizer, the step,
the ACT carry (rows in flight are part of the training state), the data position, the RNG states,
and, for reproducibility, the resolved configs, dataset metadata and git commit.
"""

from __future__ import annotations

import dataclasses
import glob
import io
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from puzzle_hrm.config import HRMConfig
from puzzle_hrm.hub import from_hub
from puzzle_hrm.model import HRM, HRMCarry, HRMInnerCarry


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save to a temp file in the same folder, fsync, then rename: a crash never leaves half a
    file, and a power cut after the rename never leaves an empty one. Temp files of writes that were
    killed (never renamed, never removed) are removed first: on ARC each is ~2 GB."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphan_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            writer = KeepWriteError(f, path)
            try:
                torch.save(obj, writer)
            except RuntimeError:  # torch's writer turns a failed write (a full disk) into an opaque RuntimeError
                if writer.error is None:
                    raise
                raise writer.error from None
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class KeepWriteError(io.RawIOBase):
    """A file's writer that remembers the OSError of a failed write (errno and path stay known)."""

    def __init__(self, f, name: Path) -> None:
        super().__init__()
        self.f, self.name, self.error = f, name, None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err if err.filename else OSError(err.errno, err.strerror, str(self.name))
            raise


def remove_orphan_temps(path: str | Path) -> list[Path]:
    """Delete `.<name>.*.tmp` beside `path`: what save_atomic leaves when its process is killed
    mid-write (one writer per checkpoint, so none of them is still being written)."""
    path = Path(path)
    orphans = list(path.parent.glob(f".{glob.escape(path.name)}.*.tmp")) if path.parent.is_dir() else []
    for orphan in orphans:
        orphan.unlink(missing_ok=True)
    return orphans


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # unpickling errors come in many types; name the file either way
        raise ValueError(f"checkpoint {path} could not be loaded with weights_only=True: {unpickler_reason(err)}") from err


def unpickler_reason(err: Exception) -> str:
    """torch's weights_only error is a page of advice around one line that says what was refused."""
    text = str(err)
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)", text)
    return match.group(1).strip() if match else text


def carry_to_dict(carry: HRMCarry | None) -> dict[str, torch.Tensor] | None:
    """The carry as flat tensors: the model's states by name (z_H, z_L, ...), steps, halted, data.<key>."""
    if carry is None:
        return None
    inner = carry.inner_carry
    flat = {f.name: getattr(inner, f.name) for f in dataclasses.fields(inner)}
    flat.update({"steps": carry.steps, "halted": carry.halted})
    flat.update({f"data.{k}": v for k, v in carry.current_data.items()})
    return flat


def carry_from_dict(flat: dict[str, torch.Tensor] | None, device: torch.device, inner_type: type = HRMInnerCarry) -> HRMCarry | None:
    """Inverse of carry_to_dict; inner_type is the model's state dataclass (model.inner.carry_type)."""
    if flat is None:
        return None
    flat = {k: v.to(device) for k, v in flat.items()}
    data = {k.removeprefix("data."): v for k, v in flat.items() if k.startswith("data.")}
    inner = inner_type(**{f.name: flat[f.name] for f in dataclasses.fields(inner_type)})
    return HRMCarry(inner, flat["steps"], flat["halted"], data)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_model_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], where: str) -> None:
    """Strict load with an error that lists what differs (missing, unexpected, shape)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}" for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(f"checkpoint {where} does not fit the model:\n  missing: {missing}\n  unexpected: {unexpected}\n  shape mismatches: {shapes}")
    model.load_state_dict(state_dict)


# ---- official checkpoints (sapientinc/HRM pretrain.py saves the ACTLossHead's state_dict) ----
OFFICIAL_PREFIXES = ("_orig_mod.", "model.")  # torch.compile wrapper, then the loss head's `model`


def from_official_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`[_orig_mod.]model.inner.X` → `inner.X`; keys are otherwise identical by construction."""
    converted = {}
    for key, value in state_dict.items():
        for prefix in OFFICIAL_PREFIXES:
            key = key.removeprefix(prefix)
        converted[key] = value
    return converted


def to_official_state_dict(model: HRM) -> dict[str, torch.Tensor]:
    """Our weights under the official key names, loadable by the official evaluate/pretrain code."""
    return {f"model.{k}": v for k, v in model.state_dict().items()}


HF_PREFIX = "hf://"
OFFICIAL_WEIGHTS_NAME = "checkpoint"  # the weights file of the hub repos (sapientinc/HRM-checkpoint-*)
_STEP_NAME = re.compile(r"step_(\d+)")  # official training runs: checkpoints/<project>/<run>/step_<N>
OUR_WEIGHTS_NAME = "last.pt"  # puzzle_hrm.train


def checkpoint_file(spec: str) -> Path:
    """The weights file that `spec` names: a file; a folder holding a checkpoint; or `hf://<org>/<repo>`,
    a hub repo laid out as the official ones (weights + all_config.yaml), downloaded through huggingface_hub."""
    if spec.startswith(HF_PREFIX):
        repo_id = spec.removeprefix(HF_PREFIX)
        if repo_id.count("/") != 1:
            raise ValueError(f"{spec}: expected {HF_PREFIX}<org>/<repo>, e.g. {HF_PREFIX}sapientinc/HRM-checkpoint-sudoku-extreme")
        from huggingface_hub import snapshot_download

        folder = from_hub(spec, lambda local_only: snapshot_download(repo_id=repo_id, local_files_only=local_only),
                          "download the repo elsewhere and pass its folder as checkpoint=<folder>")
        return weights_in_folder(folder, spec)
    path = Path(spec)
    return weights_in_folder(path, spec) if path.is_dir() else path


def weights_in_folder(folder: Path, where: str) -> Path:
    """`checkpoint` (hub repos), else the highest `step_<N>` (official runs), else `last.pt` (ours)."""
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    steps = sorted((int(m.group(1)), m.group(0)) for m in map(_STEP_NAME.fullmatch, names) if m)
    for name in (OFFICIAL_WEIGHTS_NAME, steps[-1][1] if steps else None, OUR_WEIGHTS_NAME):
        if name in names:
            return folder / name
    raise FileNotFoundError(f"{where}: {folder} holds no weights file: looked for {OFFICIAL_WEIGHTS_NAME!r}, "
                            f"'step_<N>' or {OUR_WEIGHTS_NAME!r}; found {names or 'no files'}")


def read_official_arch(config_path: str | Path) -> dict[str, Any]:
    """The `arch` section of the official all_config.yaml written beside each checkpoint."""
    from omegaconf import OmegaConf

    config_path = Path(config_path)
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: the official all_config.yaml must sit beside the checkpoint")
    arch = OmegaConf.to_container(OmegaConf.load(config_path), resolve=True).get("arch")
    if not isinstance(arch, dict):
        raise ValueError(f"{config_path} has no `arch` section")
    return arch


def load_official(path_or_state_dict: str | Path | dict, config: HRMConfig | dict, metadata=None) -> HRM:
    """Our HRM holding an official checkpoint's weights.

    `config` is an HRMConfig or the official `arch` dict; `metadata` (a DatasetMetadata) supplies
    seq_len, vocab_size and num_puzzle_identifiers as the official code takes them from the data.
    Mismatched keys or shapes raise a ValueError listing every difference.
    """
    if isinstance(path_or_state_dict, (str, Path)):
        where, state_dict = str(path_or_state_dict), load(path_or_state_dict)
    else:
        where, state_dict = "<state_dict>", path_or_state_dict
    if isinstance(config, dict):
        values = dict(config)
        if metadata is not None:
            values.update(seq_len=metadata.seq_len, vocab_size=metadata.vocab_size, num_puzzle_identifiers=metadata.num_puzzle_identifiers)
        config = HRMConfig.from_dict(values)
    model = HRM(config)
    load_model_weights(model, from_official_state_dict(state_dict), where)
    return model
