"""Feature cache: equals running the backbone now, disk round trip, fingerprint refusals, same loss."""

import json

import numpy as np
import pytest
import torch

from hybrid.backbone import tiny_backbone
from hybrid.features import FeatureCache, FeatureCacheMismatch, fingerprint, open_or_build, token_arrays
from hybrid.model import HybridLM, supervised_positions
from puzzle_hrm.data.format import IGNORE_LABEL_ID

from .tiny import right_padded_batch, tiny_config

LENGTHS = [[9, 6, 12], [7, 7], [5, 11, 8, 10]]
PROMPTS = [[5, 3, 8], [4, 2], [3, 9, 5, 6]]


@pytest.fixture(scope="module")
def backbone():
    return tiny_backbone(seed=0)


def batches(vocab_size: int, seed: int = 0):
    return [right_padded_batch(n, p, vocab_size, seed=seed + i) for i, (n, p) in enumerate(zip(LENGTHS, PROMPTS))]


@pytest.fixture(scope="module")
def cache(backbone):
    return FeatureCache.build(backbone, batches(backbone.vocab_size))


def test_a_cached_batch_equals_running_the_backbone_now(backbone, cache):
    data = batches(backbone.vocab_size)
    assert len(cache) == sum(len(n) for n in LENGTHS)
    got = cache.batch([3, 4])  # exactly the second collated batch: bit-identical in float32
    with torch.no_grad():
        hidden, _ = backbone.hidden_states(data[1]["input_ids"], data[1]["attention_mask"])
    assert torch.equal(got.hidden_states, hidden)
    for name in ("input_ids", "attention_mask", "labels", "prompt_lengths"):
        assert torch.equal(getattr(got, name), data[1][name]), name


def test_any_selection_is_padded_per_batch(backbone, cache):
    data = batches(backbone.vocab_size)
    got = cache.batch([6, 0])  # 11 and 9 tokens, from different collated batches
    assert got.hidden_states.shape == (2, 11, backbone.hidden_size) and got.indices.tolist() == [6, 0]
    assert got.attention_mask.sum(1).tolist() == [11, 9]
    assert got.hidden_states[1, 9:].abs().sum() == 0 and (got.labels[1, 9:] == IGNORE_LABEL_ID).all()
    assert (got.input_ids[1, 9:] == backbone.tokenizer.pad_token_id).all()
    with torch.no_grad():
        hidden, _ = backbone.hidden_states(data[2]["input_ids"], data[2]["attention_mask"])
    torch.testing.assert_close(got.hidden_states[0], hidden[1, :11])  # same states, other padding
    assert got.prompt_lengths.tolist() == [9, 5]
    with pytest.raises(IndexError, match="indices"):
        cache.batch([len(cache)])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_disk_round_trip_is_memory_mapped(backbone, cache, tmp_path, dtype):
    built = cache if dtype == "float32" else FeatureCache.build(backbone, batches(backbone.vocab_size), dtype="float16")
    built.save(tmp_path)
    loaded = FeatureCache.load(tmp_path, cache.fingerprint)
    assert isinstance(loaded.hidden, np.memmap) and loaded.hidden.dtype == np.dtype(dtype)
    a, b = cache.batch([8, 1, 5]), loaded.batch([8, 1, 5])
    for name in ("attention_mask", "input_ids", "labels", "prompt_lengths"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    tol = dict(rtol=0, atol=0) if dtype == "float32" else dict(rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(b.hidden_states, a.hidden_states, **tol)
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["examples"] == len(cache) and index["fingerprint"] == cache.fingerprint


def test_saving_again_replaces_the_arrays(cache, tmp_path):
    cache.save(tmp_path)
    first = set(tmp_path.glob("*.npy"))
    cache.save(tmp_path)
    second = set(tmp_path.glob("*.npy"))
    assert len(second) == 5 and not first & second  # fresh names, the old build removed
    assert not list(tmp_path.glob(".*"))  # no temp files left


def test_a_cache_from_another_backbone_or_other_tokens_is_refused(backbone, cache, tmp_path):
    cache.save(tmp_path)
    other_model = fingerprint(tiny_backbone(seed=1), token_arrays(batches(backbone.vocab_size)))
    with pytest.raises(FeatureCacheMismatch, match=r"different backbone \(model config or weights\);"):
        FeatureCache.load(tmp_path, other_model)
    other_tokens = fingerprint(backbone, token_arrays(batches(backbone.vocab_size, seed=7)))
    with pytest.raises(FeatureCacheMismatch, match=r"different tokens \(tokenizer, prompt format or task set\)"):
        FeatureCache.load(tmp_path, other_tokens)
    with pytest.raises(FileNotFoundError, match="no feature cache"):
        FeatureCache.load(tmp_path / "missing", cache.fingerprint)


def test_open_or_build_builds_once_then_loads(backbone, tmp_path):
    data = batches(backbone.vocab_size)
    built = open_or_build(tmp_path, backbone, data)
    loaded = open_or_build(tmp_path, backbone, data)
    assert isinstance(loaded.hidden, np.memmap) and loaded.fingerprint == built.fingerprint
    with pytest.raises(FeatureCacheMismatch):
        open_or_build(tmp_path, backbone, batches(backbone.vocab_size, seed=7))


def test_left_padded_batches_are_rejected(backbone):
    batch = right_padded_batch([4, 6], [2, 2], backbone.vocab_size)
    batch["attention_mask"] = batch["attention_mask"].flip(1)
    with pytest.raises(ValueError, match="right-padded"):
        FeatureCache.build(backbone, [batch])


def test_float16_overflow_is_an_error(backbone):
    class Loud:  # a backbone whose states exceed float16's range
        device, tokenizer = backbone.device, backbone.tokenizer

        def hidden_states(self, input_ids, attention_mask, layer=None, use_cache=False):
            return torch.full((*input_ids.shape, 4), 1e6), None

    with pytest.raises(ValueError, match="do not fit in float16"):
        FeatureCache.build(Loud(), batches(backbone.vocab_size), dtype="float16")


def test_the_cache_gives_the_same_loss_as_the_uncached_path(backbone, cache):
    torch.manual_seed(0)
    model = HybridLM(tiny_config(injector="cab", use_act=False), backbone)
    data = batches(backbone.vocab_size)[2]

    def loss(hidden, batch):
        positions, targets = supervised_positions(batch["labels"])
        return model.loss(list(model(hidden, batch["attention_mask"], batch["prompt_lengths"], positions=positions)), targets)[0]

    with torch.no_grad():
        uncached = loss(backbone.hidden_states(data["input_ids"], data["attention_mask"])[0], data)
    cached = cache.batch([5, 6, 7, 8])
    assert torch.equal(loss(cached.hidden_states, vars(cached)), uncached)
