"""Sparse puzzle embeddings and their SignSGD optimizer (official `sparse_embedding.py` semantics).

The table can hold ~1M rows (ARC: one per augmented puzzle) while a batch touches a few hundred,
so a dense optimizer state would be wasteful. Each training forward copies the batch's rows into a
small `local_weights` buffer that receives the gradient; SignSGD with decoupled weight decay then
writes only those rows back. Under data parallelism every rank all-gathers the rows' gradients and
ids so all ranks apply the identical update and their tables stay equal without a broadcast.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from puzzle_hrm.layers import trunc_normal_init_


class CastedSparseEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, batch_size: int, init_std: float, cast_to: torch.dtype) -> None:
        super().__init__()
        self.cast_to = cast_to
        # The table is a persistent buffer, not a Parameter: only SignSGD below may change it.
        self.register_buffer("weights", trunc_normal_init_(torch.empty(num_embeddings, embedding_dim), std=init_std))
        self.register_buffer("local_weights", torch.zeros(batch_size, embedding_dim, requires_grad=True), persistent=False)
        self.register_buffer("local_ids", torch.zeros(batch_size, dtype=torch.int32), persistent=False)

    def _apply(self, fn, recurse: bool = True):
        # Moving a requires-grad buffer (.to(device), .double()) yields a non-leaf copy that an
        # optimizer refuses and that never gets .grad; make it a leaf again.
        super()._apply(fn, recurse)
        self.local_weights = self.local_weights.detach().requires_grad_(True)
        return self

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.weights[ids].to(self.cast_to)
        if ids.shape[0] != self.local_ids.shape[0]:
            raise ValueError(f"training batch of {ids.shape[0]} rows but the puzzle embedding was built for batch_size={self.local_ids.shape[0]}")
        with torch.no_grad():
            self.local_weights.copy_(self.weights[ids])
            self.local_ids.copy_(ids)
        return self.local_weights.to(self.cast_to)


def signsgd_sparse_update(grad: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, lr: float, weight_decay: float) -> None:
    """In place: rows r of `weights` touched by `ids` get w_r ← w_r·(1 − lr·wd) − lr·sign(Σ grad of r).

    On a GPU without `unique`, whose data-dependent output size makes the host wait for the GPU
    once per step; on the CPU (no host/device split) the `unique` form, which does fewer operations.
    Both give the same float32 result bit for bit.
    """
    update = signsgd_update_without_sync if weights.device.type == "cuda" else signsgd_update_unique
    update(grad, ids, weights, lr, weight_decay)


def signsgd_update_unique(grad: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, lr: float, weight_decay: float) -> None:
    """The official formulation: sum the gradients per unique id, update those rows."""
    unique_ids, inverse = ids.long().unique(return_inverse=True)
    summed = torch.zeros(unique_ids.shape[0], grad.shape[1], dtype=grad.dtype, device=grad.device)
    summed.index_add_(0, inverse, grad)
    rows = weights[unique_ids]
    rows.mul_(1.0 - lr * weight_decay).add_(torch.sign(summed), alpha=-lr)
    weights[unique_ids] = rows


def signsgd_update_without_sync(grad: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, lr: float, weight_decay: float) -> None:
    """The same update with fixed-size tensors only: the rows' groups are numbered in sorted id
    order (as `unique` numbers them), gradients are summed in their original order (the same
    float32 sums), and the unused group slots repeat the last group, so the write-back holds
    duplicate indices with identical values only."""
    n = ids.shape[0]
    if n == 0:
        return
    sorted_ids, order = ids.long().sort()
    is_first = torch.ones_like(sorted_ids, dtype=torch.bool)
    is_first[1:] = sorted_ids[1:] != sorted_ids[:-1]
    group_sorted = is_first.cumsum(0) - 1  # group of each sorted row, 0 .. n_groups - 1
    group = torch.empty_like(group_sorted).scatter_(0, order, group_sorted)  # group of each original row
    summed = torch.zeros(n, grad.shape[1], dtype=grad.dtype, device=grad.device).index_add_(0, group, grad)
    group_ids = torch.zeros_like(sorted_ids).scatter_(0, group_sorted, sorted_ids)
    slot = torch.minimum(torch.arange(n, device=ids.device), group_sorted[-1])  # slots past the last group repeat it
    group_ids, summed = group_ids[slot], summed[slot]
    rows = weights[group_ids]
    rows.mul_(1.0 - lr * weight_decay).add_(torch.sign(summed), alpha=-lr)
    weights[group_ids] = rows


def all_gather_rows(grad: torch.Tensor, ids: torch.Tensor, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate every rank's (grad, ids) so each rank sees the whole global batch."""
    if world_size == 1:
        return grad, ids
    all_grad = grad.new_empty((world_size * grad.shape[0], grad.shape[1]))
    all_ids = ids.new_empty(world_size * ids.shape[0])
    dist.all_gather_into_tensor(all_grad, grad.contiguous())
    dist.all_gather_into_tensor(all_ids, ids.contiguous())
    return all_grad, all_ids


class SparseEmbeddingSignSGD(torch.optim.Optimizer):
    """SignSGD for a CastedSparseEmbedding; lr is set per step by the schedule like any optimizer."""

    def __init__(self, embedding: CastedSparseEmbedding, lr: float, weight_decay: float, world_size: int = 1) -> None:
        self.embedding = embedding
        self.world_size = world_size
        # The buffers are this optimizer's "params" so zero_grad and lr scheduling work unchanged.
        super().__init__([embedding.local_weights], dict(lr=lr, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None) -> None:  # noqa: D401 - torch.optim API
        grad = self.embedding.local_weights.grad
        if grad is None:
            return
        for group in self.param_groups:
            all_grad, all_ids = all_gather_rows(grad, self.embedding.local_ids, self.world_size)
            signsgd_sparse_update(all_grad, all_ids, self.embedding.weights, group["lr"], group["weight_decay"])
