import pytest
import torch

from hybrid.backbone import tiny_backbone
from hybrid.baselines import llm_only_answers
from hybrid.generate import DecodeConfig
from hybrid.lora import LoRAOptions, LoRATrainable, lora_config_for_budget
from hybrid.model import HybridLM
from hybrid.tasks import AdditionTask, Collator
from tests.hybrid.tiny import tiny_config

TASK = AdditionTask(digits=2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: a second intra-op thread only adds waiting on a loaded 2-core machine (100x here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def backbone():
    return tiny_backbone(seed=0)


@pytest.fixture(scope="module")
def hrm_params(backbone):
    """A controller small enough for LoRA on the 2-layer tiny Llama to match (38,514 parameters)."""
    return sum(p.numel() for p in HybridLM(tiny_config(d_h=16, num_heads=2, L_layers=1), backbone).parameters())


def lora(backbone, target, **options) -> LoRATrainable:
    torch.manual_seed(0)  # peft's lora_A init draws from the global RNG
    return LoRATrainable(backbone, Collator(backbone.tokenizer, backbone.max_positions), target, LoRAOptions(**options))


@pytest.mark.parametrize("layers", [None, 2])
def test_trainable_count_matches_the_hrm_within_half_a_rank_step(backbone, hrm_params, layers):
    budget = lora_config_for_budget(backbone, hrm_params, layers)
    assert abs(budget.params - hrm_params) <= budget.params_per_rank / 2
    if layers is not None:
        assert budget.layers == tuple(range(2 - layers, 2))  # the top ones
    # the tiny Llama (width 64, 32-wide k/v): one rank costs 1024 parameters per layer
    assert budget.params_per_rank == 1024 * len(budget.layers)
    assert lora(backbone, hrm_params, layers=layers).num_trainable_params() == budget.params


def test_fewest_top_layers_whose_rank_fits(backbone):
    small = lora_config_for_budget(backbone, 10 * 1024)
    assert (small.layers, small.rank) == ((1,), 10)
    # 40 ranks of the top layer would exceed the 32-wide k/v projections: use both layers
    large = lora_config_for_budget(backbone, 40 * 1024)
    assert (large.layers, large.rank) == ((0, 1), 20)


def test_budgets_that_cannot_fit_are_refused(backbone):
    with pytest.raises(ValueError, match="adapt more layers"):
        lora_config_for_budget(backbone, 40 * 1024, layers=1)
    with pytest.raises(ValueError, match="exceeds a full-rank LoRA"):
        lora_config_for_budget(backbone, 10**7)
    with pytest.raises(ValueError, match="layers must be in"):
        lora_config_for_budget(backbone, 1000, layers=3)
    with pytest.raises(ValueError, match="no Linear named"):
        lora_config_for_budget(backbone, 1000, modules=("query_key_value",))


def test_only_adapters_train_and_the_loss_drops(backbone, hrm_params):
    shared_before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    trainable = lora(backbone, hrm_params)
    assert trainable.uses_cached_states is False
    names = [name for name, _ in trainable.named_parameters()]
    assert names and all(".lora_A." in name or ".lora_B." in name for name in names)
    base_before = {k: v.clone() for k, v in trainable.backbone.model.state_dict().items() if "lora_" not in k}
    batch = trainable.collator(TASK.examples("train", 8, seed=0))
    optimizer = torch.optim.AdamW(trainable.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        loss, metrics = trainable.training_loss(batch, correct_fn=None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(metrics["lm_loss"])
    # ln(102) ≈ 4.6 at first; the tiny Llama's frozen head (weights of std 0.02 on normalised
    # states) cannot reach much below 4, so a drop of 0.4 is most of what is possible.
    assert sum(losses[-3:]) / 3 < losses[0] - 0.4, losses
    after = trainable.backbone.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base_before.items())  # the copy's base weights
    assert all(torch.equal(backbone.model.state_dict()[k], v) for k, v in shared_before.items())  # the shared backbone
    assert not any(name.startswith("base_model") or "lora_" in name for name in backbone.model.state_dict())


def test_untrained_adapters_answer_as_the_llm_and_state_round_trips(backbone, hrm_params):
    trainable = lora(backbone, hrm_params)
    examples = TASK.examples("eval", 3, seed=0)
    decode = DecodeConfig(max_new_tokens=4)
    plain = llm_only_answers(backbone, TASK, examples, decode, torch.Generator().manual_seed(0))
    assert trainable.answer(examples, decode, torch.Generator().manual_seed(0)) == plain  # lora_B starts at zero
    state = trainable.state_dict()
    with torch.no_grad():
        for p in trainable.parameters():
            p.add_(0.5)
    assert trainable.answer(examples, decode, torch.Generator().manual_seed(0)) != plain
    trainable.load_state_dict(state)
    assert trainable.answer(examples, decode, torch.Generator().manual_seed(0)) == plain
    with pytest.raises(KeyError, match="adapter keys differ"):
        trainable.load_state_dict({})
