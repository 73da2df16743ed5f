import pytest
import torch

from puzzle_hrm.model import HRM
from puzzle_hrm.optim import build_optimizers, cosine_schedule_with_warmup
from puzzle_hrm.sparse_embedding import (
    CastedSparseEmbedding,
    SparseEmbeddingSignSGD,
    signsgd_sparse_update,
    signsgd_update_unique,
    signsgd_update_without_sync,
)

from .conftest import tiny_config


def test_signsgd_update_rule_sums_duplicates_and_decays_only_touched_rows():
    weights = torch.arange(12, dtype=torch.float32).view(4, 3) / 10
    before = weights.clone()
    ids = torch.tensor([2, 0, 2], dtype=torch.int32)
    grad = torch.tensor([[1.0, -2.0, 0.5], [-1.0, 0.0, 3.0], [-3.0, 1.0, -0.5]])
    lr, wd = 0.1, 0.5
    signsgd_sparse_update(grad, ids, weights, lr, wd)
    expected = before.clone()
    expected[2] = before[2] * (1 - lr * wd) - lr * torch.sign(grad[0] + grad[2])  # [-2, -1, 0] → sign
    expected[0] = before[0] * (1 - lr * wd) - lr * torch.sign(grad[1])
    torch.testing.assert_close(weights, expected)
    assert torch.equal(weights[1], before[1]) and torch.equal(weights[3], before[3])


def test_sparse_embedding_trains_only_batch_rows_through_the_optimizer():
    emb = CastedSparseEmbedding(10, 4, batch_size=3, init_std=0, cast_to=torch.float32).train()
    opt = SparseEmbeddingSignSGD(emb, lr=0.5, weight_decay=0.0)
    ids = torch.tensor([7, 1, 7], dtype=torch.int32)
    (emb(ids) * torch.tensor([1.0, -1.0, 1.0]).view(3, 1)).sum().backward()
    opt.step()
    assert emb.weights[7].tolist() == [-0.5] * 4 and emb.weights[1].tolist() == [0.5] * 4
    assert emb.weights[[0, 2, 3, 4, 5, 6, 8, 9]].abs().sum() == 0
    with pytest.raises(ValueError, match="batch_size"):
        emb(torch.tensor([1, 2], dtype=torch.int32))


def test_schedule_warmup_cosine_and_floor():
    kw = dict(base_lr=1.0, warmup_steps=10, total_steps=110, lr_min_ratio=0.1)
    assert cosine_schedule_with_warmup(0, **kw) == 0.0
    assert cosine_schedule_with_warmup(5, **kw) == pytest.approx(0.5)
    assert cosine_schedule_with_warmup(10, **kw) == pytest.approx(1.0)
    assert cosine_schedule_with_warmup(60, **kw) == pytest.approx(0.1 + 0.9 * 0.5)
    assert cosine_schedule_with_warmup(110, **kw) == pytest.approx(0.1)
    # official default lr_min_ratio = 1.0: constant after warm-up
    assert cosine_schedule_with_warmup(80, base_lr=1e-4, warmup_steps=10, total_steps=110, lr_min_ratio=1.0) == pytest.approx(1e-4)


@pytest.mark.parametrize("name", ["adamw", "adam_atan2"])
def test_optimizers_puzzle_embedding_first_with_its_own_lr(name):
    model = HRM(tiny_config())
    opts, lrs = build_optimizers(model, optimizer=name, lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95), puzzle_emb_lr=1e-2, puzzle_emb_weight_decay=0.2)
    assert isinstance(opts[0], SparseEmbeddingSignSGD) and lrs == [1e-2, 1e-4]
    assert opts[0].param_groups[0]["weight_decay"] == 0.2
    assert opts[1].param_groups[0]["betas"] == (0.9, 0.95)


def test_unknown_optimizer_is_rejected():
    with pytest.raises(ValueError, match="optimizer"):
        build_optimizers(HRM(tiny_config()), optimizer="sgd", lr=1, weight_decay=0, betas=(0.9, 0.9), puzzle_emb_lr=1, puzzle_emb_weight_decay=0)


def test_moved_embedding_keeps_a_leaf_gradient_buffer():
    emb = CastedSparseEmbedding(4, 2, batch_size=2, init_std=0, cast_to=torch.float64).double()  # a real copy, like .cuda()
    assert emb.local_weights.is_leaf and emb.local_weights.requires_grad
    opt = SparseEmbeddingSignSGD(emb.train(), lr=1.0, weight_decay=0.0)
    emb(torch.tensor([3, 3], dtype=torch.int32)).sum().backward()
    opt.step()
    assert emb.weights[3].tolist() == [-1.0, -1.0]



@pytest.mark.parametrize("n_ids", [1, 5, 64])
def test_signsgd_without_host_sync_equals_the_unique_formulation_bit_for_bit(n_ids):
    generator = torch.Generator().manual_seed(n_ids)
    ids = torch.randint(0, n_ids, (96,), generator=generator, dtype=torch.int32)
    grad = torch.randn(96, 16, generator=generator)
    weights = torch.randn(70, 16, generator=generator)
    expected = weights.clone()
    signsgd_update_unique(grad, ids, expected, 0.03, 0.7)
    signsgd_update_without_sync(grad, ids, weights, 0.03, 0.7)
    assert torch.equal(weights, expected)
