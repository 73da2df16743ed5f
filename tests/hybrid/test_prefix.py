"""Prefix injection: the teacher-forced logits are the whole sequence's (prompt ++ soft tokens ++
answer) through the LLM's own forward, decoding reads the same soft tokens (cache = recompute =
training), and only the controller side trains."""

import inspect

import pytest
import torch

from hybrid.backbone import cache_keyword, tiny_backbone
from hybrid.config import HybridConfig
from hybrid.generate import DecodeConfig, generate
from hybrid.model import token_mean_loss
from hybrid.prefix import PrefixTrainable
from hybrid.tasks import AdditionTask, Collator, pad
from hybrid.trainable import hybrid_trainable
from tests.hybrid.test_lora import one_thread  # noqa: F401 (autouse: one intra-op thread for tiny models)

from .tiny import tiny_config

TASK = AdditionTask(digits=2)


@pytest.fixture(scope="module")
def backbone():
    return tiny_backbone(seed=0, num_layers=3, initializer_range=0.2)


def trainable(backbone, **overrides) -> PrefixTrainable:
    torch.manual_seed(0)
    config = tiny_config(**{"injector": "prefix", "logit_bias_head": False, "prefix_tokens": 3, **overrides})
    built = hybrid_trainable(config, backbone, Collator(backbone.tokenizer, backbone.max_positions))
    assert isinstance(built, PrefixTrainable)
    return built


def answers(model: PrefixTrainable, examples):
    return pad(model.collator.target_ids(examples), model.backbone.tokenizer.pad_token_id, "right")


@pytest.mark.parametrize("depth", [1.0, 0.5])
def test_teacher_forced_logits_are_the_whole_sequences(backbone, depth):
    model = trainable(backbone, inject_depth=depth)
    examples = TASK.examples("train", 3, seed=0)
    prompts = model.collator.prompts(examples)
    read = model.lm.read_prompts(prompts["input_ids"], prompts["attention_mask"])
    answer_ids, answer_mask = answers(model, examples)
    logits = model.lm.answer_logits(read, answer_ids, answer_mask, n_segments=2)
    softs = [c.soft for c in model.lm.conditionings(read, 2)]
    m = model.lm.config.prefix_tokens
    for segment, soft in zip(logits, softs, strict=True):
        expected = []
        for row in range(len(examples)):
            prompt = prompts["input_ids"][row][prompts["attention_mask"][row].bool()]
            answer = answer_ids[row][answer_mask[row].bool()]
            embeds = torch.cat((backbone.embed(prompt), soft[row], backbone.embed(answer))).unsqueeze(0)
            out = backbone.model(inputs_embeds=embeds).logits[0]  # one unpadded row, the model's own forward
            expected.append(out[len(prompt) + m - 1 : -1])
        torch.testing.assert_close(segment, torch.cat(expected), atol=1e-5, rtol=1e-5)


def test_decoding_reads_the_soft_tokens_as_training_does(backbone):
    model = trainable(backbone)
    examples = TASK.examples("eval", 3, seed=1)
    prompts = model.collator.prompts(examples)
    read = model.lm.read_prompts(prompts["input_ids"], prompts["attention_mask"])
    soft = list(model.lm.conditionings(read, 3))[-1].soft
    decode = DecodeConfig(max_new_tokens=5)
    cached = generate(backbone, prompts["input_ids"], prompts["attention_mask"], decode, soft_prefix=soft)
    recomputed = generate(backbone, prompts["input_ids"], prompts["attention_mask"], decode, soft_prefix=soft, use_cache=False)
    assert torch.equal(cached.tokens, recomputed.tokens)
    plain = generate(backbone, prompts["input_ids"], prompts["attention_mask"], decode)
    assert not torch.equal(cached.tokens, plain.tokens)  # the soft tokens reach the output
    # teacher forcing on the decoded tokens predicts those very tokens (greedy = argmax of the training logits)
    mask = torch.ones_like(cached.tokens)
    logits = model.lm.answer_logits(read, cached.tokens, mask, n_segments=3)[-1]
    assert torch.equal(logits.argmax(-1), cached.tokens.reshape(-1))
    text = model.answer(examples, decode, torch.Generator().manual_seed(0))  # hands its prompt pass's cache to generate
    assert text.texts == cached.texts(backbone.tokenizer) and text.segments_used == [3, 3, 3]
    with pytest.raises(ValueError, match="prompt_cache stands for the prompt pass before a soft prefix"):
        generate(backbone, prompts["input_ids"], prompts["attention_mask"], decode, prompt_cache=read.cache)


@pytest.mark.parametrize("kv_tokens", [0, 2])
def test_only_the_controller_side_trains_and_the_loss_drops(backbone, kv_tokens):
    model = trainable(backbone, prefix_kv_tokens=kv_tokens)
    frozen = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    batch = model.collator(TASK.examples("train", 8, seed=0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(30):
        loss, metrics = model.training_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            grads = {name: p.grad for name, p in model.named_parameters()}
            for part in ("lm.bridge.", "lm.controller.", "lm.prefix.proj", "lm.prefix.gain", *(("lm.slots.down", "lm.slots.up", "lm.slots.gain") if kv_tokens else ())):
                assert any(name.startswith(part) and g is not None and g.abs().sum() > 0 for name, g in grads.items()), part
        optimizer.step()
        losses.append(metrics["lm_loss"])
    assert sum(losses[-5:]) / 5 < 0.7 * losses[0], losses
    assert all(torch.equal(backbone.model.state_dict()[k], v) for k, v in frozen.items())
    assert not any(name.startswith("backbone") for name in model.state_dict())


def test_without_deep_supervision_only_the_last_segment_runs_through_the_llm(backbone, monkeypatch):
    deep, last = trainable(backbone), trainable(backbone, deep_supervision=False)
    examples = TASK.examples("train", 4, seed=0)
    logits, targets, _ = deep.gold_answer_logits(examples, 3)
    rows = []
    top_states = type(backbone).top_states
    monkeypatch.setattr(type(backbone), "top_states", lambda self, inputs, *rest: rows.append(inputs.shape[0]) or top_states(self, inputs, *rest))
    loss, metrics = last.training_loss(last.collator(examples))
    assert rows == [len(examples)]  # one LLM pass over B rows, not 3 x B
    expected = token_mean_loss(logits[-1], targets, deep.lm.config.loss_type)
    torch.testing.assert_close(loss, expected)
    assert metrics["loss"] == metrics["lm_loss"]
    loss.backward()
    expected.backward()
    for (name, p), q in zip(last.named_parameters(), deep.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_key_value_slots_continue_the_prompt_in_every_layer_as_the_models_own_cache(backbone):
    """Teacher-forced logits with slots = per unpadded row, the model's own forward over soft tokens
    and answer after a cache that holds the prompt and then the slots (positions counted as tokens)."""
    model = trainable(backbone, prefix_kv_tokens=2)
    examples = TASK.examples("train", 3, seed=0)
    prompts = model.collator.prompts(examples)
    read = model.lm.read_prompts(prompts["input_ids"], prompts["attention_mask"])
    answer_ids, answer_mask = answers(model, examples)
    logits = model.lm.answer_logits(read, answer_ids, answer_mask, n_segments=2)
    segments = list(model.lm.conditionings(read, 2))
    m, k = model.lm.config.prefix_tokens, 2
    for segment, conditioning in zip(logits, segments, strict=True):
        assert conditioning.slots.shape == (3, backbone.num_layers, 2, *backbone.kv_heads[:1], k, backbone.kv_heads[1])
        expected = []
        for row in range(len(examples)):
            prompt = prompts["input_ids"][row][prompts["attention_mask"][row].bool()]
            answer = answer_ids[row][answer_mask[row].bool()]
            cache = backbone.model(prompt[None], use_cache=True).past_key_values
            backbone.append_kv(cache, conditioning.slots[row : row + 1])
            embeds = torch.cat((conditioning.soft[row], backbone.embed(answer))).unsqueeze(0)
            positions = torch.arange(len(prompt) + k, len(prompt) + k + embeds.shape[1])[None]
            out = backbone.model(inputs_embeds=embeds, position_ids=positions, **{cache_keyword(backbone.model): cache}).logits[0]
            expected.append(out[m - 1 : -1])
        torch.testing.assert_close(segment, torch.cat(expected), atol=1e-5, rtol=1e-5)
    model.lm.slots = None  # the same soft tokens without the slots: the slots reach the logits
    assert not torch.allclose(model.lm.answer_logits(model.lm.read_prompts(prompts["input_ids"], prompts["attention_mask"]), answer_ids, answer_mask, n_segments=2)[-1], logits[-1], atol=1e-3)


def test_decoding_reads_the_key_value_slots_as_training_does(backbone):
    model = trainable(backbone, prefix_kv_tokens=2)
    examples = TASK.examples("eval", 3, seed=1)
    decode = DecodeConfig(max_new_tokens=5)
    text = model.answer(examples, decode, torch.Generator().manual_seed(0))
    prompts = model.collator.prompts(examples)
    read = model.lm.read_prompts(prompts["input_ids"], prompts["attention_mask"])
    last = list(model.lm.conditionings(read, 3))[-1]
    slots = backbone.append_kv(read.cache, last.slots)
    cached = generate(backbone, prompts["input_ids"], prompts["attention_mask"], decode, soft_prefix=last.soft, prompt_cache=read.cache, cache_slots=slots)
    assert text.texts == cached.texts(backbone.tokenizer)
    # greedy decoding = the argmax of the teacher-forced training logits on the decoded tokens
    logits = model.lm.answer_logits(model.lm.read_prompts(prompts["input_ids"], prompts["attention_mask"]), cached.tokens, torch.ones_like(cached.tokens), n_segments=3)[-1]
    assert torch.equal(logits.argmax(-1), cached.tokens.reshape(-1))
    with pytest.raises(ValueError, match="cache_slots are key/value slots at the end of a prompt_cache"):
        generate(backbone, prompts["input_ids"], prompts["attention_mask"], decode, soft_prefix=last.soft, cache_slots=2)


def test_key_value_slots_cost_their_bottleneck_only(backbone):
    plain, slotted = trainable(backbone), trainable(backbone, prefix_kv_tokens=2, prefix_kv_rank=4)
    heads, head_dim = backbone.kv_heads
    extra = 4 * (32 + backbone.num_layers * 2 * heads * 2 * head_dim) + backbone.num_layers * 2
    assert sum(p.numel() for p in slotted.parameters()) - sum(p.numel() for p in plain.parameters()) == extra
    with pytest.raises(ValueError, match="prefix_kv_tokens are key/value slots of the prefix injector"):
        HybridConfig(injector="grb", prefix_kv_tokens=2)


def test_prefix_refuses_what_it_cannot_condition():
    for option in ({"logit_bias_head": True}, {"use_act": True, "logit_bias_head": False}, {"controller": "oracle", "logit_bias_head": False}):
        with pytest.raises(ValueError, match="prefix injector conditions through soft tokens only"):
            HybridConfig(injector="prefix", **option)


def test_teacher_forced_logits_read_the_prompt_under_the_older_cache_keyword(monkeypatch):
    """transformers 5.17 (the GPU image's) takes the KV cache as `past_key_values` and swallows an
    unknown `cache=` in **kwargs: the soft tokens and answer then ran without their prompt (CE ~10 on
    SmolLM2 at step 0). top_states must pass the cache under the name the model's forward takes."""
    backbone = tiny_backbone(seed=0, num_layers=3, initializer_range=0.2)
    base = backbone.model.base_model
    current = base.forward
    native = "cache" if "cache" in inspect.signature(current).parameters else "past_key_values"  # the installed version's name

    def older_forward(input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, inputs_embeds=None, use_cache=None, **kwargs):
        return current(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, inputs_embeds=inputs_embeds, use_cache=use_cache, **{native: past_key_values})

    monkeypatch.setattr(base, "forward", older_forward)
    test_teacher_forced_logits_are_the_whole_sequences(backbone, 1.0)
    test_teacher_forced_logits_are_the_whole_sequences(backbone, 0.5)
