"""FP8 projections (an opt-in precision): the swap, the shared weights, and a step that still learns."""

import pytest
import torch

from puzzle_hrm.fp8 import PROJECTIONS, convert_to_fp8
from puzzle_hrm.model import HRM
from puzzle_hrm.train import TrainConfig, apply_precision, init_state, train_step

from .conftest import random_batch, tiny_config

float8 = pytest.importorskip("torchao.float8", reason="torchao (the [fp8] extra) is not installed")


def test_every_block_projection_and_nothing_else_becomes_float8():
    model = HRM(tiny_config())
    before = {name: p for name, p in model.named_parameters()}
    n_blocks = model.config.H_layers + model.config.L_layers
    assert convert_to_fp8(model) == len(PROJECTIONS) * n_blocks
    fp8_names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, float8.float8_linear.Float8Linear)}
    assert fp8_names == set(PROJECTIONS)
    after = dict(model.named_parameters())
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)  # same Parameters, same names


def test_fp8_forward_stays_close_to_the_float32_model():
    torch.manual_seed(0)
    reference = HRM(tiny_config())
    model = HRM(tiny_config())
    model.load_state_dict(reference.state_dict())
    apply_precision(model, "fp8")
    batch = random_batch(tiny_config())
    _, ref_out = reference.eval()(carry=reference.initial_carry(batch), batch=batch)
    _, out = model.eval()(carry=model.initial_carry(batch), batch=batch)
    other = HRM(tiny_config()).eval()  # another init: what "broken" looks like
    _, other_out = other(carry=other.initial_carry(batch), batch=batch)
    error = (out["logits"] - ref_out["logits"]).norm()
    assert 0 < error < 0.2 * (other_out["logits"] - ref_out["logits"]).norm()  # rounded, not broken


def test_fp8_training_step_reduces_the_loss_on_a_fixed_batch():
    cfg = TrainConfig(global_batch_size=8, lr=3e-3, lr_warmup_steps=0, precision="fp8")
    state = init_state(cfg, tiny_config(batch_size=8), torch.device("cpu"), total_steps=1000)
    batch = random_batch(tiny_config(batch_size=8))
    losses = [train_step(state, state.model, batch, cfg, world_size=1)["lm_loss"].item() for _ in range(30)]
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision"):
        apply_precision(HRM(tiny_config()), "fp4")
