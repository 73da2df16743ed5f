"""The sparse embedding's SignSGD under 2-process gloo equals one process on the whole batch."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from puzzle_hrm.sparse_embedding import CastedSparseEmbedding, SparseEmbeddingSignSGD

NUM, DIM, GLOBAL_BATCH, STEPS = 9, 4, 8, 3


def global_data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    ids = torch.randint(0, NUM, (GLOBAL_BATCH,), generator=g, dtype=torch.int32)
    # small integers: every per-row sum is exact in any summation order, so the sign cannot flip
    upstream = torch.randint(-3, 4, (GLOBAL_BATCH, DIM), generator=g).float()
    return ids, upstream


def train(rank: int, world_size: int) -> torch.Tensor:
    local = GLOBAL_BATCH // world_size
    torch.manual_seed(0)
    emb = CastedSparseEmbedding(NUM, DIM, batch_size=local, init_std=0.1, cast_to=torch.float32).train()
    opt = SparseEmbeddingSignSGD(emb, lr=0.05, weight_decay=0.3, world_size=world_size)
    for step in range(STEPS):
        ids, upstream = global_data(step)
        sl = slice(rank * local, (rank + 1) * local)
        (emb(ids[sl]) * upstream[sl]).sum().backward()
        opt.step()
        opt.zero_grad()
    return emb.weights


def worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.save(train(rank, world_size), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.barrier()  # no rank tears gloo down while the other still talks to it
        dist.destroy_process_group()


def test_two_process_gloo_matches_single_process(tmp_path):
    mp.spawn(worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    single = train(0, 1)
    assert torch.equal(rank0, rank1)  # every rank applied the identical update
    torch.testing.assert_close(rank0, single, rtol=0, atol=1e-7)
    torch.manual_seed(0)
    untouched = CastedSparseEmbedding(NUM, DIM, 1, init_std=0.1, cast_to=torch.float32).weights
    assert not torch.equal(single, untouched)  # the test really trained something
