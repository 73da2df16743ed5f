import pytest
import torch

from puzzle_hrm.config import HRMConfig


def tiny_config(**overrides) -> HRMConfig:
    base = dict(
        batch_size=6, seq_len=16, vocab_size=6, puzzle_emb_ndim=32, num_puzzle_identifiers=5, hidden_size=32,
        num_heads=4, expansion=2, H_layers=1, L_layers=1, H_cycles=2, L_cycles=2, halt_max_steps=4, forward_dtype="float32",
    )
    base.update(overrides)
    return HRMConfig(**base)


def random_batch(cfg: HRMConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (cfg.batch_size, cfg.seq_len)
    return {
        "inputs": torch.randint(0, cfg.vocab_size, shape, generator=g, dtype=torch.int32),
        "labels": torch.randint(1, cfg.vocab_size, shape, generator=g, dtype=torch.int32),
        "puzzle_identifiers": torch.randint(0, cfg.num_puzzle_identifiers, (cfg.batch_size,), generator=g, dtype=torch.int32),
    }


@pytest.fixture
def cfg() -> HRMConfig:
    return tiny_config()
