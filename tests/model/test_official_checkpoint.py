"""Official checkpoints: key names as saved by sapientinc/HRM pretrain.py load into our model, and
our forward pass equals an independent functional implementation of the official maths."""

import math

import huggingface_hub
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from puzzle_hrm.checkpoint import (
    checkpoint_file,
    from_official_state_dict,
    load_official,
    read_official_arch,
    to_official_state_dict,
)
from puzzle_hrm.data.format import DatasetMetadata, write_split
from puzzle_hrm.evaluate import load_for_evaluation
from puzzle_hrm.evaluate import main as evaluate_main
from puzzle_hrm.model import HRM

from .conftest import random_batch, tiny_config

ARCH = dict(name="hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1", H_cycles=2, L_cycles=2, H_layers=1, L_layers=1, hidden_size=32,
            num_heads=4, expansion=2, puzzle_emb_ndim=32, pos_encodings="rope", halt_max_steps=4, halt_exploration_prob=0.1,
            forward_dtype="float32", seq_len=16, vocab_size=6, num_puzzle_identifiers=5, batch_size=6)


def official_state_dict(seed: int = 0, compiled: bool = True) -> dict[str, torch.Tensor]:
    """Random weights under the official key names and shapes (written out here, not taken from our model)."""
    g = torch.Generator().manual_seed(seed)
    d, inter, vocab, ids = 32, 256, 6, 5
    sd = {
        "model.inner.embed_tokens.embedding_weight": torch.randn(vocab, d, generator=g) / math.sqrt(d),
        "model.inner.lm_head.weight": torch.randn(vocab, d, generator=g) / math.sqrt(d),
        "model.inner.q_head.weight": torch.randn(2, d, generator=g) / math.sqrt(d),
        "model.inner.q_head.bias": torch.randn(2, generator=g),
        "model.inner.puzzle_emb.weights": torch.randn(ids, d, generator=g) * 0.1,
        "model.inner.H_init": torch.randn(d, generator=g),
        "model.inner.L_init": torch.randn(d, generator=g),
    }
    for level in ("H_level", "L_level"):
        p = f"model.inner.{level}.layers.0."
        sd[p + "self_attn.qkv_proj.weight"] = torch.randn(3 * d, d, generator=g) / math.sqrt(d)
        sd[p + "self_attn.o_proj.weight"] = torch.randn(d, d, generator=g) / math.sqrt(d)
        sd[p + "mlp.gate_up_proj.weight"] = torch.randn(2 * inter, d, generator=g) / math.sqrt(d)
        sd[p + "mlp.down_proj.weight"] = torch.randn(d, inter, generator=g) / math.sqrt(inter)
    return {("_orig_mod." + k if compiled else k): v for k, v in sd.items()}


def reference_segment(sd, inputs, ids, z_H, z_L, cfg):
    """One official inner forward written functionally from the state dict."""
    w = {k.removeprefix("_orig_mod.").removeprefix("model.inner."): v for k, v in sd.items()}
    d, heads = cfg["hidden_size"], cfg["num_heads"]
    hd = d // heads
    inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
    freqs = torch.outer(torch.arange(cfg["seq_len"] + 1).float(), inv)
    cos, sin = torch.cat((freqs, freqs), -1).cos(), torch.cat((freqs, freqs), -1).sin()

    def norm(x):
        return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-5)

    def rot(x):  # x (B, L, H, hd)
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return x * cos[:, None] + torch.cat((-x2, x1), -1) * sin[:, None]

    def block(x, p):
        B, L, _ = x.shape
        q, k, v = (x @ w[p + "self_attn.qkv_proj.weight"].T).view(B, L, 3, heads, hd).unbind(2)
        q, k = rot(q), rot(k)
        att = torch.softmax(torch.einsum("blhd,bmhd->bhlm", q, k) / math.sqrt(hd), -1)
        o = torch.einsum("bhlm,bmhd->blhd", att, v).reshape(B, L, d) @ w[p + "self_attn.o_proj.weight"].T
        x = norm(x + o)
        gate, up = (x @ w[p + "mlp.gate_up_proj.weight"].T).chunk(2, -1)
        return norm(x + (F.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T)

    emb = torch.cat((w["puzzle_emb.weights"][ids][:, None], w["embed_tokens.embedding_weight"][inputs]), 1) * math.sqrt(d)
    H = lambda z, inj: block(z + inj, "H_level.layers.0.")  # noqa: E731
    L = lambda z, inj: block(z + inj, "L_level.layers.0.")  # noqa: E731
    for _ in range(cfg["H_cycles"]):
        for _ in range(cfg["L_cycles"]):
            z_L = L(z_L, z_H + emb)
        z_H = H(z_H, z_L)
    logits = (z_H @ w["lm_head.weight"].T)[:, 1:]
    q = z_H[:, 0] @ w["q_head.weight"].T + w["q_head.bias"]
    return z_H, z_L, logits, q


def test_official_checkpoint_loads_and_matches_the_reference_forward():
    sd = official_state_dict()
    model = load_official(sd, ARCH).eval()
    cfg = tiny_config()
    batch = random_batch(cfg)
    carry = model.initial_carry(batch)
    z_H = sd["_orig_mod.model.inner.H_init"].expand(cfg.batch_size, cfg.seq_len + 1, -1)
    z_L = sd["_orig_mod.model.inner.L_init"].expand(cfg.batch_size, cfg.seq_len + 1, -1)
    with torch.no_grad():
        for _ in range(3):  # several segments: the carry must match too
            carry, out = model(carry=carry, batch=batch)
            z_H, z_L, logits, q = reference_segment(sd, batch["inputs"].long(), batch["puzzle_identifiers"].long(), z_H, z_L, ARCH)
            torch.testing.assert_close(out["logits"], logits, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(out["q_halt_logits"], q[:, 0], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(out["q_continue_logits"], q[:, 1], rtol=1e-4, atol=1e-4)


def test_export_round_trips_to_the_official_key_names():
    model = load_official(official_state_dict(compiled=False), ARCH)
    exported = to_official_state_dict(model)
    assert set(exported) == set(official_state_dict(compiled=False))
    again = load_official(exported, ARCH)
    for k, v in again.state_dict().items():
        assert torch.equal(v, model.state_dict()[k])


def test_mismatched_checkpoint_lists_every_difference():
    sd = from_official_state_dict(official_state_dict())
    sd.pop("inner.q_head.bias")
    sd["inner.extra"] = torch.zeros(1)
    sd["inner.lm_head.weight"] = torch.zeros(7, 32)
    with pytest.raises(ValueError) as err:
        load_official(sd, ARCH)
    message = str(err.value)
    assert "inner.q_head.bias" in message and "inner.extra" in message and "inner.lm_head.weight" in message


def test_official_all_config_yaml_is_read(tmp_path):
    (tmp_path / "all_config.yaml").write_text(
        "arch:\n  name: hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1\n  loss:\n    name: losses@ACTLossHead\n"
        "  hidden_size: 512\n  puzzle_emb_ndim: ${.hidden_size}\n  H_cycles: 2\ndata_path: data/x\n"
    )
    arch = read_official_arch(tmp_path / "all_config.yaml")
    assert arch["puzzle_emb_ndim"] == 512 and arch["H_cycles"] == 2
    with pytest.raises(FileNotFoundError, match="all_config.yaml"):
        read_official_arch(tmp_path / "missing" / "all_config.yaml")


def test_our_model_exports_what_the_official_layout_expects():
    assert set(to_official_state_dict(HRM(tiny_config()))) == set(official_state_dict(compiled=False))


# ---- hf:// checkpoints (the hub is not reachable here: snapshot_download is replaced by a local folder) ----
HUB_REPO = "sapientinc/HRM-checkpoint-sudoku-extreme"


@pytest.fixture
def hub(tmp_path, monkeypatch) -> tuple:
    """A folder laid out like the official hub repos (checkpoint + all_config.yaml + README.md) and the
    repo ids that the stand-in snapshot_download was asked for."""
    folder = tmp_path / "hub"
    folder.mkdir()
    torch.save(official_state_dict(), folder / "checkpoint")
    arch = {k: v for k, v in ARCH.items() if k not in ("seq_len", "vocab_size", "num_puzzle_identifiers", "batch_size")}
    OmegaConf.save({"arch": {**arch, "loss": {"name": "losses@ACTLossHead"}}, "data_path": "data/x"}, folder / "all_config.yaml")
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n")
    calls = []

    def snapshot_download(repo_id: str, **kwargs) -> str:
        calls.append(repo_id)
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return folder, calls


@pytest.fixture
def tiny_data(tmp_path):
    """An official-layout test split whose shapes fit ARCH (seq_len 16, vocab 6, 5 identifiers)."""
    rng = np.random.default_rng(0)
    n = 10
    arrays = {"inputs": rng.integers(0, 6, (n, 16), dtype=np.int32), "labels": rng.integers(1, 6, (n, 16), dtype=np.int32),
              "puzzle_identifiers": rng.integers(0, 5, n, dtype=np.int32), "puzzle_indices": np.arange(n + 1, dtype=np.int32),
              "group_indices": np.arange(n + 1, dtype=np.int32)}
    meta = DatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=6, seq_len=16,
                           num_puzzle_identifiers=5, total_groups=n, mean_puzzle_examples=1.0, sets=["all"])
    write_split(tmp_path / "data", "test", meta, {"all": arrays})
    return tmp_path / "data"


def test_hf_checkpoint_downloads_and_loads_the_official_weights(hub, tiny_data, capsys):
    folder, calls = hub
    model = load_for_evaluation(f"hf://{HUB_REPO}", str(tiny_data), batch_size=4, forward_dtype="float32")
    assert calls == [HUB_REPO]
    for key, value in from_official_state_dict(official_state_dict()).items():
        assert torch.equal(model.state_dict()[key], value), key
    evaluate_main([f"checkpoint=hf://{HUB_REPO}", f"data={tiny_data}", "batch_size=4", "device=cpu"])
    assert '"count": 10' in capsys.readouterr().out


def test_checkpoint_file_choice(hub, tmp_path):
    folder, _ = hub
    assert checkpoint_file(f"hf://{HUB_REPO}") == folder / "checkpoint"
    run = tmp_path / "run"
    run.mkdir()
    for name in ("step_9", "step_10", "all_config.yaml"):
        (run / name).touch()
    assert checkpoint_file(str(run)) == run / "step_10"  # by number, not by text
    assert checkpoint_file(str(run / "step_9")) == run / "step_9"
    (folder / "checkpoint").rename(folder / "weights.bin")
    with pytest.raises(FileNotFoundError, match=r"hf://.*looked for 'checkpoint'.*found \['README.md', 'all_config.yaml', 'weights.bin'\]"):
        checkpoint_file(f"hf://{HUB_REPO}")
    with pytest.raises(ValueError, match="hf://<org>/<repo>"):
        checkpoint_file("hf://sapientinc")
