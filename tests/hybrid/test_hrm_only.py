import pytest
import torch

from hybrid.backbone import char_tokenizer
from hybrid.generate import DecodeConfig
from hybrid.hrm_only import AnswerBatch, HRMOnlyConfig, HRMOnlyTrainable
from hybrid.tasks import AdditionTask, Collator
from puzzle_hrm.data.format import IGNORE_LABEL_ID
from tests.hybrid.test_lora import one_thread  # noqa: F401 (autouse: one intra-op thread for tiny models)
from tests.hybrid.tiny import tiny_config

TASK = AdditionTask(digits=1)
OPTIONS = HRMOnlyConfig(d_model=32, encoder_layers=1, decoder_layers=1, num_heads=4, prefix_tokens=2, max_positions=64)


@pytest.fixture(scope="module")
def tokenizer():
    return char_tokenizer()


def build(tokenizer, seed: int = 0, **config) -> HRMOnlyTrainable:
    torch.manual_seed(seed)
    return HRMOnlyTrainable(tiny_config(**config), tokenizer, Collator(tokenizer, 64), OPTIONS)


def test_answer_batch_splits_prompt_and_targets(tokenizer):
    examples = [e for e in TASK.examples("train", 6, seed=0)][:2]
    batch = Collator(tokenizer, 64)(examples)
    split = AnswerBatch.from_collated(batch)
    for row, example in enumerate(examples):
        n = int(split.prompt_lengths[row])
        assert torch.equal(split.prompt_ids[row, :n], batch["input_ids"][row, :n])
        targets = split.targets[row][split.targets[row] != IGNORE_LABEL_ID].tolist()
        assert targets == tokenizer(example.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def test_one_token_table_is_shared_and_counted(tokenizer):
    trainable = build(tokenizer)
    names = [name for name, _ in trainable.named_parameters()]
    assert sum("embed" in name for name in names) == 1  # the decoder's own table is gone: inputs and outputs tie to it
    assert trainable.num_trainable_params() == sum(p.numel() for p in trainable.parameters())


def test_each_segment_is_supervised_and_detached_from_the_previous(tokenizer):
    trainable = build(tokenizer)
    model = trainable.model
    batch = AnswerBatch.from_collated(trainable.collator(TASK.examples("train", 4, seed=0)))
    outputs = list(model.latents(batch.prompt_ids, batch.prompt_lengths, 3))
    assert [o.z_H.shape for o in outputs] == [(4, 32)] * 3
    last = model.decoder(inputs_embeds=model.prefix_embeddings(outputs[-1].z_H)).last_hidden_state
    assert last.shape == (4, OPTIONS.prefix_tokens, OPTIONS.d_model)
    (grad,) = torch.autograd.grad(last.sum(), outputs[0].z_H, allow_unused=True)
    assert grad is None  # the last segment's loss never reaches the first segment's state
    loss, parts = model.loss(batch)
    assert parts["lm_loss"].shape == (3,) and torch.isclose(loss, parts["lm_loss"].sum())


def test_without_deep_supervision_the_loss_is_the_last_segments(tokenizer):
    deep, last = build(tokenizer).model, build(tokenizer, deep_supervision=False).model
    batch = AnswerBatch.from_collated(build(tokenizer).collator(TASK.examples("train", 4, seed=0)))
    total, parts = deep.loss(batch)
    loss, last_parts = last.loss(batch)
    assert parts["lm_loss"].shape == (3,) and last_parts["lm_loss"].shape == (1,)
    torch.testing.assert_close(loss, parts["lm_loss"][-1])
    assert not torch.isclose(total, loss)


def train(trainable: HRMOnlyTrainable, steps: int) -> list[float]:
    batches = [trainable.collator(TASK.examples("train", 60, seed=0)[i : i + 20]) for i in (0, 20, 40)]
    optimizer = torch.optim.AdamW(trainable.parameters(), lr=3e-3, betas=(0.9, 0.95))
    losses = []
    for step in range(steps):
        loss, scalars = trainable.training_loss(batches[step % 3], correct_fn=None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(scalars["lm_loss"])
    return losses


def test_learns_toy_addition_a_little(tokenizer):
    losses = train(build(tokenizer), 40)
    # ln(102) ≈ 4.6 per token at first; answer format (a digit or two, then EOS) and digit
    # statistics bring the last segment's CE well under half of it
    assert sum(losses[-6:]) / 6 < 0.45 * losses[0], losses


def test_seeded_build_train_and_answers_are_deterministic(tokenizer):
    examples = TASK.examples("eval", 5, seed=0)
    decode = DecodeConfig(max_new_tokens=4, temperature=1.0)
    runs = []
    for _ in range(2):
        trainable = build(tokenizer, seed=3)
        losses = train(trainable, 3)
        runs.append((losses, trainable.answer(examples, decode, torch.Generator().manual_seed(1))))
    assert runs[0] == runs[1]


def test_answers_do_not_depend_on_the_batch(tokenizer):
    trainable = build(tokenizer)
    examples = TASK.examples("eval", 3, seed=0) + AdditionTask(digits=2).examples("eval", 3, seed=0)  # prompts of different lengths
    decode = DecodeConfig(max_new_tokens=5)
    batch = AnswerBatch.from_collated(trainable.collator(examples))
    assert len(set(batch.prompt_lengths.tolist())) > 1
    together, _ = trainable.model.generate(batch.prompt_ids, batch.prompt_lengths, decode, tokenizer.eos_token_id, tokenizer.pad_token_id)
    for row in range(len(examples)):
        n = batch.prompt_lengths[row : row + 1]
        alone, _ = trainable.model.generate(batch.prompt_ids[row : row + 1, : int(n)], n, decode, tokenizer.eos_token_id, tokenizer.pad_token_id)
        torch.testing.assert_close(alone.tokens, together.tokens[row : row + 1, : alone.tokens.shape[1]], rtol=0, atol=0)
        z_alone = list(trainable.model.latents(batch.prompt_ids[row : row + 1, : int(n)], n, 3))[-1].z_H
        z_together = list(trainable.model.latents(batch.prompt_ids, batch.prompt_lengths, 3))[-1].z_H[row : row + 1]
        torch.testing.assert_close(z_alone, z_together, rtol=1e-4, atol=1e-5)  # batched matmul rounding only


def test_act_trains_the_q_head_from_the_verifier(tokenizer):
    trainable = build(tokenizer, use_act=True)
    batch = trainable.collator(TASK.examples("train", 4, seed=0))
    seen = []

    def correct_fn(predictions):
        seen.extend(predictions)
        return [torch.tensor([1.0, 0.0, 1.0, 0.0])] * len(predictions)

    loss, scalars = trainable.training_loss(batch, correct_fn)
    assert len(seen) == 3 and all(p.shape == batch["labels"].shape for p in seen)
    assert all(bool((p[batch["labels"] == IGNORE_LABEL_ID] == 0).all()) for p in seen)
    loss.backward()
    assert trainable.model.controller.q_head.weight.grad.abs().sum() > 0 and "q_halt_loss" in scalars
    assert len(trainable.answer(TASK.examples("eval", 2, seed=0), DecodeConfig(max_new_tokens=3), torch.Generator()).texts) == 2


def test_bad_sizes_are_refused(tokenizer):
    with pytest.raises(ValueError, match="divisible"):
        HRMOnlyConfig(d_model=30, num_heads=4)
    with pytest.raises(ValueError, match=">= 1"):
        HRMOnlyConfig(prefix_tokens=0)
    trainable = build(tokenizer)
    with pytest.raises(ValueError, match="max_positions"):
        trainable.answer(TASK.examples("eval", 1, 0), DecodeConfig(max_new_tokens=63), torch.Generator())
