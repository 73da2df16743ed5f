"""Transformer building blocks of the official HRM, in the order they are composed.

Parameter names (`qkv_proj`, `o_proj`, `gate_up_proj`, `down_proj`, `embedding_weight`) and
initialisation follow the official `models/layers.py` so official state dicts load by name.
Weights are stored in float32 and cast to the activation dtype at use ("Casted*"), as there.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

try:  # flash-attn is optional; SDPA is the fallback and the CPU path
    from flash_attn import flash_attn_func  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the machine
    flash_attn_func = None

CosSin = tuple[torch.Tensor, torch.Tensor]


def trunc_normal_init_(tensor: torch.Tensor, std: float = 1.0, lower: float = -2.0, upper: float = 2.0) -> torch.Tensor:
    """Truncated normal on [lower, upper] (in std units) rescaled so the *truncated* std is `std`.

    PyTorch's trunc_normal_ keeps the untruncated std; the official code (like JAX's LeCun
    initialiser) corrects for the truncation, which matters for reproducing its init scale.
    """
    with torch.no_grad():
        if std == 0:
            return tensor.zero_()
        sqrt2 = math.sqrt(2.0)
        a, b = math.erf(lower / sqrt2), math.erf(upper / sqrt2)
        z = (b - a) / 2
        c = (2 * math.pi) ** -0.5
        pdf_lower, pdf_upper = c * math.exp(-0.5 * lower**2), c * math.exp(-0.5 * upper**2)
        truncated_var = 1 - (upper * pdf_upper - lower * pdf_lower) / z - ((pdf_upper - pdf_lower) / z) ** 2
        comp_std = std / math.sqrt(truncated_var)
        tensor.uniform_(a, b).erfinv_().mul_(sqrt2 * comp_std).clip_(lower * comp_std, upper * comp_std)
    return tensor


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Parameter-free RMSNorm computed in float32 (HRM's post-norm has no learned scale)."""
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)
    return x.to(dtype)


class CastedLinear(nn.Module):
    """Linear layer with LeCun truncated-normal init, weights cast to the input dtype at use."""

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(trunc_normal_init_(torch.empty(out_features, in_features), std=in_features**-0.5))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight.to(x.dtype), bias)


class CastedEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, init_std: float, cast_to: torch.dtype) -> None:
        super().__init__()
        self.cast_to = cast_to
        self.embedding_weight = nn.Parameter(trunc_normal_init_(torch.empty(num_embeddings, embedding_dim), std=init_std))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.embedding_weight.to(self.cast_to))


class RotaryEmbedding(nn.Module):
    """Precomputed RoPE tables, (L, head_dim) each, half-split layout (rotate_half)."""

    def __init__(self, dim: int, max_position_embeddings: int, base: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        freqs = torch.outer(torch.arange(max_position_embeddings, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cached", emb.cos(), persistent=False)
        self.register_buffer("sin_cached", emb.sin(), persistent=False)

    def forward(self) -> CosSin:
        return self.cos_cached, self.sin_cached


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k: (B, L, H, head_dim); cos, sin: (L, head_dim). Rotation in the tables' dtype (float32)."""
    dtype = q.dtype
    q, k = q.to(cos.dtype), k.to(cos.dtype)
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # (L, 1, head_dim) broadcasts over heads
    q_embed = q * cos + rotate_half(q) * sin
    k_embed = k * cos + rotate_half(k) * sin
    return q_embed.to(dtype), k_embed.to(dtype)


# SDPA with one kernel forced (to measure or pin the attention kernel); "sdpa" lets PyTorch choose.
SDPA_KERNELS = {
    "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
    "sdpa_flash": SDPBackend.FLASH_ATTENTION,
    "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
    "sdpa_math": SDPBackend.MATH,
}
ATTN_BACKENDS = ("auto", "flash", "sdpa", *SDPA_KERNELS)


def resolve_attn_backend(backend: str, device: torch.device) -> str:
    """'auto' → flash-attn on CUDA when importable (the official kernel), else PyTorch SDPA."""
    if backend not in ATTN_BACKENDS:
        raise ValueError(f"attn_backend must be one of {' | '.join(ATTN_BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return "flash" if flash_attn_func is not None and device.type == "cuda" else "sdpa"
    if backend == "flash" and flash_attn_func is None:
        raise ImportError("attn_backend='flash' but flash_attn is not importable; install the [flash] extra")
    return backend


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
    """Bidirectional attention; q, k, v and the result are (B, L, H, head_dim)."""
    backend = resolve_attn_backend(backend, q.device)
    if backend == "flash":
        out = flash_attn_func(q, k, v, causal=False)
        return out[0] if isinstance(out, tuple) else out
    # SDPA wants (B, H, L, head_dim)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if backend in SDPA_KERNELS:
        with sdpa_kernel(SDPA_KERNELS[backend]):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=False)
    else:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=False)
    return out.transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection, as in the official code."""

    def __init__(self, hidden_size: int, num_heads: int, backend: str = "auto") -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.backend = backend
        self.qkv_proj = CastedLinear(hidden_size, 3 * hidden_size, bias=False)
        self.o_proj = CastedLinear(hidden_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos_sin: CosSin | None) -> torch.Tensor:
        B, L, D = x.shape
        qkv = self.qkv_proj(x).view(B, L, 3 * self.num_heads, self.head_dim)  # (B, L, 3H, hd)
        q, k, v = qkv.split(self.num_heads, dim=2)  # each (B, L, H, hd)
        if cos_sin is not None:
            q, k = apply_rotary_pos_emb(q, k, *cos_sin)
        out = attention(q, k, v, self.backend)
        return self.o_proj(out.reshape(B, L, D))


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_up_proj = CastedLinear(hidden_size, 2 * intermediate_size, bias=False)
        self.down_proj = CastedLinear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class HRMBlock(nn.Module):
    """Post-norm transformer block: x = norm(x + attn(x)); x = norm(x + mlp(x))."""

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, eps: float, attn_backend: str = "auto") -> None:
        super().__init__()
        self.self_attn = Attention(hidden_size, num_heads, attn_backend)
        self.mlp = SwiGLU(hidden_size, intermediate_size)
        self.norm_eps = eps

    def forward(self, x: torch.Tensor, cos_sin: CosSin | None) -> torch.Tensor:
        x = rms_norm(x + self.self_attn(x, cos_sin), self.norm_eps)
        return rms_norm(x + self.mlp(x), self.norm_eps)


class TokenMLPBlock(nn.Module):
    """TRM's attention-free block (`mlp_t`): a SwiGLU across the token axis mixes positions, then the
    usual SwiGLU across channels; post-norm after each, the first one normalised over tokens as there."""

    def __init__(self, hidden_size: int, seq_len: int, token_intermediate_size: int, intermediate_size: int, eps: float) -> None:
        super().__init__()
        self.mlp_t = SwiGLU(seq_len, token_intermediate_size)
        self.mlp = SwiGLU(hidden_size, intermediate_size)
        self.norm_eps = eps

    def forward(self, x: torch.Tensor, cos_sin: CosSin | None) -> torch.Tensor:
        x = x.transpose(1, 2)  # (B, L, D) -> (B, D, L): the MLP runs over positions
        x = rms_norm(x + self.mlp_t(x), self.norm_eps).transpose(1, 2)
        return rms_norm(x + self.mlp(x), self.norm_eps)


class ReasoningModule(nn.Module):
    """One HRM level (H or L): add the injected input to the state, then run its blocks."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, hidden_states: torch.Tensor, input_injection: torch.Tensor, cos_sin: CosSin | None) -> torch.Tensor:
        hidden_states = hidden_states + input_injection
        for layer in self.layers:
            hidden_states = layer(hidden_states, cos_sin)
        return hidden_states
