import math

import pytest
import torch

from puzzle_hrm.config import HRMConfig
from puzzle_hrm.layers import HRMBlock, apply_rotary_pos_emb, attention, flash_attn_func, rms_norm, trunc_normal_init_


def reference_attention(q, k, v):
    """Plain softmax(QK^T / sqrt(d)) V on (B, L, H, d) tensors."""
    scores = torch.einsum("blhd,bmhd->bhlm", q, k) / math.sqrt(q.shape[-1])
    return torch.einsum("bhlm,bmhd->blhd", scores.softmax(-1), v)


def test_sdpa_matches_reference_attention():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 7, 3, 8) for _ in range(3))
    torch.testing.assert_close(attention(q, k, v, "sdpa"), reference_attention(q, k, v), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(flash_attn_func is None or not torch.cuda.is_available(), reason="flash-attn and CUDA needed")
def test_flash_matches_sdpa_on_cuda():  # pragma: no cover - GPU only
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 82, 8, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    torch.testing.assert_close(attention(q, k, v, "flash"), attention(q, k, v, "sdpa"), rtol=2e-2, atol=2e-2)


def test_unknown_backend_is_rejected():
    q = torch.zeros(1, 2, 1, 4)
    with pytest.raises(ValueError, match="attn_backend"):
        attention(q, q, q, "xformers")


def test_rms_norm_unit_rms_and_dtype():
    x = torch.randn(4, 10, 32, dtype=torch.bfloat16) * 7
    y = rms_norm(x, 1e-5)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float().square().mean(-1), torch.ones(4, 10), rtol=2e-2, atol=2e-2)


def test_rope_is_a_rotation_that_preserves_norms_and_relative_dot_products():
    dim, L = 8, 12
    inv = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
    f = torch.outer(torch.arange(L).float(), inv)
    cos, sin = torch.cat((f, f), -1).cos(), torch.cat((f, f), -1).sin()
    q = torch.randn(1, 1, 1, dim).expand(1, L, 1, dim)
    k = torch.randn(1, 1, 1, dim).expand(1, L, 1, dim)
    qr, kr = apply_rotary_pos_emb(q, k, cos, sin)
    torch.testing.assert_close(qr.norm(dim=-1), q.norm(dim=-1))
    dots = (qr[0, :, 0] @ kr[0, :, 0].T)  # depends only on position difference
    torch.testing.assert_close(dots.diagonal(0), dots.diagonal(0)[:1].expand(L))
    torch.testing.assert_close(dots.diagonal(3), dots.diagonal(3)[:1].expand(L - 3))


def test_truncated_normal_has_requested_std_and_bounds():
    torch.manual_seed(0)
    t = trunc_normal_init_(torch.empty(200_000), std=0.5)
    assert abs(t.std().item() - 0.5) < 0.005
    assert t.abs().max().item() <= 2 * 0.5 / 0.8796 + 1e-6  # clip at 2 corrected stds
    assert trunc_normal_init_(torch.ones(3), std=0).abs().sum() == 0


def test_official_swiglu_width_rounding():
    assert HRMConfig().intermediate_size == 1536  # round(4 * 512 * 2/3) = 1365 → next multiple of 256
    assert HRMConfig(hidden_size=64, num_heads=4, expansion=2).intermediate_size == 256


def test_block_is_post_norm():
    torch.manual_seed(0)
    block = HRMBlock(16, 2, 256, 1e-5, "sdpa")
    out = block(torch.randn(2, 5, 16) * 10, None)
    torch.testing.assert_close(out.square().mean(-1), torch.ones(2, 5), rtol=1e-4, atol=1e-4)


def test_forced_sdpa_math_kernel_matches_default_sdpa():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 82, 4, 16) for _ in range(3))
    torch.testing.assert_close(attention(q, k, v, "sdpa_math"), attention(q, k, v, "sdpa"))
