"""Feature cache: the frozen LLM's pre-norm last hidden states, computed once per example.

Why: the injectors act at a fixed cut of the frozen LLM (after its last layer, or after layer k),
so for a fixed (prompt, target) example the states there never change while the controller trains. Cache them once, then
train without running the LLM.

Layout: examples are ragged. The attended tokens of example i are rows offsets[i]:offsets[i+1]
of `hidden` (tokens, D), `input_ids` and `labels`; `prompt_lengths` has one entry per example.
For a cut after layer k the cache also holds `prefix_kv` (prefix tokens, layers above k, 2, KV
heads, head dim): the keys and values of those layers for each prompt's tokens but its last, which
the injection (from the last prompt token on) never changes; example i owns prompt_length_i - 1
rows in order. A step then re-runs the top layers over the answer only (hybrid.model).
`batch(indices)` pads on the right, as the collator does. On disk: one .npy per array, loaded
memory-mapped, and `index.json`, which names the arrays and is written last and atomically, so a
reader never follows it to a half-written build.

Fingerprint: a digest of the backbone (architecture config, weights and the cut) and one of the tokens
(ids, labels, prompt lengths of every example, in order). Together they are exactly what the
cached states depend on, so a cache built from another model, tokenizer, prompt format or task
set is refused with an error that says which.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from hybrid.backbone import Backbone
from puzzle_hrm.data.format import IGNORE_LABEL_ID, atomic_write_text

INDEX = "index.json"
FORMAT_VERSION = 1
DTYPES = ("float32", "float16")
TOKEN_ARRAYS = ("input_ids", "labels", "offsets", "prompt_lengths")
Fingerprint = dict[str, str]  # {"backbone": digest, "tokens": digest}
Batch = Mapping[str, Any]  # the collator's: input_ids, attention_mask, labels, prompt_lengths (+ examples)


class FeatureCacheMismatch(ValueError):
    """The cache on disk was built from a different backbone or different tokens."""


@dataclass
class FeatureBatch:
    """A padded batch of cached examples: what HybridLM.forward and its loss take."""

    hidden_states: Tensor  # (B, T, D) float32, zeros at padding
    attention_mask: Tensor  # (B, T) int64
    input_ids: Tensor  # (B, T) int64, pad_id at padding
    labels: Tensor  # (B, T) int64, IGNORE_LABEL_ID at padding
    prompt_lengths: Tensor  # (B,) int64
    indices: Tensor  # (B,) the examples' positions in the cache
    prefix_kv: Tensor | None = None  # (B, layers above the cut, 2, KV heads, Lp, head dim), left-padded; cuts after layer k only
    prefix_mask: Tensor | None = None  # (B, Lp) int64: 1 on each row's prompt_length - 1 prefix tokens

    def to(self, device: torch.device) -> FeatureBatch:
        """The batch on `device` (the cache itself stays in host memory, memory-mapped)."""
        moved = (self.hidden_states, self.attention_mask, self.input_ids, self.labels, self.prompt_lengths)
        prefix = [None if t is None else t.to(device, non_blocking=True) for t in (self.prefix_kv, self.prefix_mask)]
        return FeatureBatch(*(t.to(device, non_blocking=True) for t in moved), self.indices, *prefix)


class FeatureCache:
    def __init__(self, hidden: np.ndarray, tokens: Mapping[str, np.ndarray], fingerprint: Fingerprint, pad_id: int, prefix_kv: np.ndarray | None = None) -> None:
        self.hidden = hidden  # (tokens, D), in memory or memory-mapped
        self.prefix_kv = prefix_kv  # (prefix tokens, layers above the cut, 2, KV heads, head dim), or None
        self.input_ids, self.labels = tokens["input_ids"], tokens["labels"]  # (tokens,)
        self.offsets, self.prompt_lengths = tokens["offsets"], tokens["prompt_lengths"]  # (N + 1,), (N,)
        self.fingerprint = fingerprint
        self.pad_id = pad_id

    def __len__(self) -> int:
        return len(self.prompt_lengths)

    @classmethod
    def build(cls, backbone: Backbone, batches: Sequence[Batch], dtype: str = "float32", layer: int | None = None) -> FeatureCache:
        """Run the backbone once over the collator's (right-padded) batches; the cache's example i
        is the i-th row over all batches. layer: cache that decoder layer's output (None: the
        pre-norm last states)."""
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        parts, prefix_parts = [], []
        with torch.no_grad():
            for batch in batches:
                mask = batch["attention_mask"].to(backbone.device)
                hidden, kv_cache = backbone.hidden_states(batch["input_ids"].to(backbone.device), mask, layer=layer, use_cache=layer is not None)
                parts.append(hidden[mask.bool()].float().cpu().numpy())  # (attended tokens, D), row-major
                if layer is not None:
                    prefix = torch.arange(mask.shape[1], device=mask.device) < torch.as_tensor(batch["prompt_lengths"], device=mask.device).view(-1, 1) - 1
                    prefix_parts.append(backbone.upper_kv(kv_cache, layer)[prefix].float().cpu().numpy())
        hidden = np.concatenate(parts)
        if not (np.abs(hidden) <= np.finfo(dtype).max).all():
            raise ValueError(f"hidden states are non-finite or do not fit in {dtype} (max |h| = {np.abs(hidden).max()})")
        hidden = hidden.astype(dtype)
        tokens = token_arrays(batches)
        prefix_kv = np.concatenate(prefix_parts).astype(dtype) if prefix_parts else None
        return cls(hidden, tokens, fingerprint(backbone, tokens, layer), backbone.tokenizer.pad_token_id, prefix_kv)

    def batch(self, indices: Sequence[int] | Tensor) -> FeatureBatch:
        """Examples `indices`, padded on the right to their longest."""
        indices = torch.as_tensor(indices, dtype=torch.long).view(-1)
        if len(indices) == 0 or indices.min() < 0 or indices.max() >= len(self):
            raise IndexError(f"indices must be a non-empty selection of 0..{len(self) - 1}, got {indices.tolist()}")
        rows = indices.numpy()
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        B, T = len(indices), int((ends - starts).max())
        hidden = torch.zeros(B, T, self.hidden.shape[1])
        attention_mask = torch.zeros(B, T, dtype=torch.long)
        input_ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        labels = torch.full((B, T), IGNORE_LABEL_ID, dtype=torch.long)
        for row, (start, end) in enumerate(zip(starts.tolist(), ends.tolist())):
            n = end - start
            hidden[row, :n] = torch.from_numpy(np.array(self.hidden[start:end], dtype=np.float32))
            attention_mask[row, :n] = 1
            input_ids[row, :n] = torch.from_numpy(self.input_ids[start:end].astype(np.int64))
            labels[row, :n] = torch.from_numpy(self.labels[start:end].astype(np.int64))
        prompt_lengths = torch.from_numpy(self.prompt_lengths[rows].astype(np.int64))
        return FeatureBatch(hidden, attention_mask, input_ids, labels, prompt_lengths, indices, *self._prefix(rows))

    def _prefix(self, rows: np.ndarray) -> tuple[Tensor | None, Tensor | None]:
        """The rows' prefix keys and values, left-padded: (B, L, 2, H, Lp, hd) and the mask (B, Lp)."""
        if self.prefix_kv is None:
            return None, None
        lengths = self.prompt_lengths.astype(np.int64) - 1
        starts = np.concatenate([[0], np.cumsum(lengths)])[rows]
        Lp = int(lengths[rows].max())
        n_layers, _, heads, head_dim = self.prefix_kv.shape[1:]
        kv = torch.zeros(len(rows), n_layers, 2, heads, Lp, head_dim)
        mask = torch.zeros(len(rows), Lp, dtype=torch.long)
        for row, (start, n) in enumerate(zip(starts.tolist(), lengths[rows].tolist())):
            if n:
                kv[row, ..., Lp - n :, :] = torch.from_numpy(np.array(self.prefix_kv[start : start + n], dtype=np.float32)).permute(1, 2, 3, 0, 4)
                mask[row, Lp - n :] = 1
        return kv, mask

    def save(self, directory: str | Path) -> None:
        """Arrays under fresh names, then index.json atomically, then the previous build's arrays go."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        build_id = uuid.uuid4().hex[:12]
        arrays = {"hidden": self.hidden, "input_ids": self.input_ids, "labels": self.labels, "offsets": self.offsets, "prompt_lengths": self.prompt_lengths}
        if self.prefix_kv is not None:
            arrays["prefix_kv"] = self.prefix_kv
        files = {name: f"{name}-{build_id}.npy" for name in arrays}
        for name, array in arrays.items():
            np.save(directory / files[name], array)
        index = {"format": FORMAT_VERSION, "fingerprint": self.fingerprint, "files": files, "pad_id": self.pad_id, "examples": len(self)}
        atomic_write_text(directory / INDEX, json.dumps(index, indent=1))
        for stale in set(directory.glob("*.npy")) - {directory / f for f in files.values()}:
            stale.unlink()

    @classmethod
    def load(cls, directory: str | Path, expected: Fingerprint) -> FeatureCache:
        """Open a saved cache memory-mapped; `expected` = fingerprint(backbone, token_arrays(batches)) now."""
        path = Path(directory) / INDEX
        if not path.is_file():
            raise FileNotFoundError(f"no feature cache at {directory} ({INDEX} missing)")
        index = json.loads(path.read_text())
        if index.get("format") != FORMAT_VERSION:
            raise FeatureCacheMismatch(f"{path}: format {index.get('format')}, this code reads format {FORMAT_VERSION}; rebuild the cache")
        stale = {"backbone": "backbone (model config or weights)", "tokens": "tokens (tokenizer, prompt format or task set)"}
        differs = [what for key, what in stale.items() if index["fingerprint"].get(key) != expected[key]]
        if differs:
            raise FeatureCacheMismatch(f"the feature cache at {directory} was built from a different {' and '.join(differs)}; delete it or cache elsewhere")
        arrays = {name: np.load(Path(directory) / file, mmap_mode="r") for name, file in index["files"].items()}
        return cls(arrays.pop("hidden"), arrays, index["fingerprint"], index["pad_id"], arrays.pop("prefix_kv", None))


def token_arrays(batches: Sequence[Batch]) -> dict[str, np.ndarray]:
    """The ragged token arrays of collated, right-padded batches (no LLM run)."""
    ids, labels, lengths, prompt_lengths = [], [], [], []
    for batch in batches:
        mask = batch["attention_mask"].bool()
        n = mask.sum(1)
        if not torch.equal(mask, torch.arange(mask.shape[1]) < n.unsqueeze(1)):
            raise ValueError("batches must be right-padded (attention_mask 1…1 0…0 in every row)")
        ids.append(batch["input_ids"][mask].numpy().astype(np.int32))
        labels.append(batch["labels"][mask].numpy().astype(np.int32))
        lengths.append(n.numpy())
        prompt_lengths.append(torch.as_tensor(batch["prompt_lengths"]).numpy())
    offsets = np.concatenate([[0], np.cumsum(np.concatenate(lengths))]).astype(np.int64)
    return {
        "input_ids": np.concatenate(ids),
        "labels": np.concatenate(labels),
        "offsets": offsets,
        "prompt_lengths": np.concatenate(prompt_lengths).astype(np.int64),
    }


def fingerprint(backbone: Backbone, tokens: Mapping[str, np.ndarray], layer: int | None = None) -> Fingerprint:
    """Digests of what the cached states depend on: the backbone's config, weights and cut, and the tokens."""
    model = backbone.model
    config = {k: v for k, v in model.config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
    weights = hashlib.blake2b(json.dumps(config, sort_keys=True, default=str).encode(), digest_size=16)
    if layer is not None:  # the pre-norm cut keeps the digest of caches built before cuts existed
        weights.update(f"layer:{layer}".encode())
    for name, tensor in sorted(model.state_dict().items()):
        weights.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        weights.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    token_digest = hashlib.blake2b(digest_size=16)
    for name in TOKEN_ARRAYS:
        token_digest.update(np.ascontiguousarray(tokens[name], dtype=np.int64))
    return {"backbone": weights.hexdigest(), "tokens": token_digest.hexdigest()}


def open_or_build(directory: str | Path, backbone: Backbone, batches: Sequence[Batch], dtype: str = "float32", layer: int | None = None) -> FeatureCache:
    """The cache at `directory` for these batches, this backbone and cut: loaded if there, else
    built and saved. A cache there from anything else is an error, never silently replaced."""
    if (Path(directory) / INDEX).is_file():
        return FeatureCache.load(directory, fingerprint(backbone, token_arrays(batches), layer))
    cache = FeatureCache.build(backbone, batches, dtype, layer)
    cache.save(directory)
    return cache
