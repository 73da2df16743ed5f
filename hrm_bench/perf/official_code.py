"""The official implementation (a checkout of sapientinc/HRM), timed by the same harness as ours.

`python -m hrm_bench.perf --official-dir PATH` adds a path "official": the checkout's own
`HierarchicalReasoningModel_ACTV1` inside its `ACTLossHead`, compiled as its `pretrain.py` does
(`torch.compile(model, dynamic=False)`, loss inside the graph), its SignSGD for the puzzle
embedding, and its evaluation loop (segments until `all_finish`, one host sync per segment).
Two substitutions, the same on both sides so the comparison stays fair: the dense optimizer is
torch's fused AdamW (the official Adam-atan2 is a CUDA extension not installable here; ours
defaults to AdamW as well), and where neither flash-attn 3 nor 2 imports, `flash_attn_func` is
PyTorch SDPA (the kernel our own path uses then). No official code is kept in this repository.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from puzzle_hrm.config import HRMConfig

OFFICIAL_FIELDS = ("batch_size", "seq_len", "puzzle_emb_ndim", "num_puzzle_identifiers", "vocab_size", "H_cycles", "L_cycles",
                   "H_layers", "L_layers", "hidden_size", "expansion", "num_heads", "pos_encodings", "rms_norm_eps", "rope_theta",
                   "halt_max_steps", "halt_exploration_prob", "forward_dtype")


def sdpa_flash_attn_func(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """flash_attn_func's contract, (B, L, H, head_dim) in and out, through PyTorch SDPA."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal)
    return out.transpose(1, 2)


def import_official(official_dir: str | Path) -> types.SimpleNamespace:
    """The official model, loss head and SignSGD classes from a checkout (its `models/` package)."""
    root = Path(official_dir).resolve()
    if not (root / "models" / "hrm" / "hrm_act_v1.py").is_file():
        raise FileNotFoundError(f"{root}: not a checkout of sapientinc/HRM (models/hrm/hrm_act_v1.py is missing)")
    try:
        import flash_attn_interface  # noqa: F401  (flash-attn 3, the official first choice)
    except ImportError:
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            sys.modules["flash_attn"] = types.SimpleNamespace(flash_attn_func=sdpa_flash_attn_func)
    sys.path.insert(0, str(root))
    from models.hrm.hrm_act_v1 import HierarchicalReasoningModel_ACTV1
    from models.losses import ACTLossHead
    from models.sparse_embedding import CastedSparseEmbeddingSignSGD_Distributed

    return types.SimpleNamespace(model=HierarchicalReasoningModel_ACTV1, loss_head=ACTLossHead, signsgd=CastedSparseEmbeddingSignSGD_Distributed)


class OfficialBench:
    """The official training step and evaluation loop on fixed batches (same interface as perf.Bench)."""

    def __init__(self, official_dir: str | Path, cfg: HRMConfig, device: torch.device, batches: list[dict[str, torch.Tensor]]) -> None:
        official = import_official(official_dir)
        self.device, self.batches, self.batch_size = device, batches, cfg.batch_size
        torch.manual_seed(0)
        with torch.device(device):
            self.model = official.loss_head(official.model({f: getattr(cfg, f) for f in OFFICIAL_FIELDS}), loss_type="stablemax_cross_entropy")
        self.forward = torch.compile(self.model, dynamic=False)
        self.optimizers = [
            official.signsgd(self.model.model.puzzle_emb.buffers(), lr=1e-2, weight_decay=0.1, world_size=1),
            torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95), fused=device.type == "cuda"),
        ]
        self.carry = None
        self.steps = 0

    def train_step(self) -> None:
        batch = self.batches[self.steps % len(self.batches)]
        self.steps += 1
        with torch.device(self.device):
            if self.carry is None:
                self.carry = self.model.initial_carry(batch)
            self.carry, loss, _, _, _ = self.forward(carry=self.carry, batch=batch, return_keys=[])
        (loss / self.batch_size).backward()
        for optimizer in self.optimizers:
            optimizer.step()
            optimizer.zero_grad()

    @torch.inference_mode()
    def eval_step(self, i: int = 1) -> None:
        batch = self.batches[i % len(self.batches)]
        with torch.device(self.device):
            carry = self.model.initial_carry(batch)
            while True:  # the official evaluate(): until every row has halted (halt_max_steps in eval mode)
                carry, _, _, _, all_finish = self.forward(carry=carry, batch=batch, return_keys=["logits"])
                if all_finish:
                    break
