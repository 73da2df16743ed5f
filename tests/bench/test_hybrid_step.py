"""`python -m hrm_bench.perf.hybrid_step` on the tiny backbone: one row per variant and precision,
the suite's own first step, the process's matmul precision left as it was."""

from __future__ import annotations

import pytest
import torch

from hrm_bench.perf import hybrid_step
from hrm_bench.suites.hybrid import build_trainable
from hybrid.backbone import backbone_by_name
from hybrid.tasks import Collator
from hybrid.train import HybridTrainConfig, TrainData, build_optimizer, train_step

MODEL = ["d_h=16", "num_heads=2", "H_layers=1", "L_layers=1"]


def test_page_has_every_variant_and_precision_and_restores_the_precision(tmp_path):
    before = torch.get_float32_matmul_precision()
    out = tmp_path / "step.md"
    hybrid_step.main(["--backbone", "tiny", "--variants", "lora", "hrm_grb_mid", "--precisions", "highest", "medium", "--batch-size", "4", "--steps", "1", "--model", *MODEL, "--output", str(out)])
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| lora") or line.startswith("| hrm_grb_mid")]
    assert [(r[0].strip("| "), r[1]) for r in rows] == [("lora", "highest"), ("lora", "medium"), ("hrm_grb_mid", "highest"), ("hrm_grb_mid", "medium")]
    assert all(float(r[2]) > 0 for r in rows)
    assert torch.get_float32_matmul_precision() == before


def test_first_loss_is_the_suites_first_step():
    backbone = backbone_by_name("tiny", device="cpu")
    train = HybridTrainConfig(tasks=("addition",), train_n=4, eval_n=1, batch_size=4, seed=3, progress=False)
    data = TrainData.build(train, Collator(backbone.tokenizer, backbone.max_positions))
    model = hybrid_step.model_fields(MODEL)
    measured = hybrid_step.measure("lora", "highest", backbone, data, model, train, steps=1)
    trainable = build_trainable(model, 3, "lora", backbone, data)
    batch, correct_fn = data.batch(0, 4, cached=False)
    expected = train_step(trainable, build_optimizer(trainable, train), batch, correct_fn, train.grad_clip)["lm_loss"]
    assert measured.first_loss == expected and measured.params == sum(p.numel() for p in trainable.parameters())


def test_model_fields_name_a_bad_key():
    assert hybrid_step.model_fields(["d_h=64", "injector='cab'"]) == {"d_h": 64, "injector": "cab"}
    with pytest.raises(ValueError, match="'width=64'.*d_h"):
        hybrid_step.model_fields(["width=64"])
