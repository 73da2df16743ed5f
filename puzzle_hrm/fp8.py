"""FP8 matmuls for the blocks' projections: an opt-in training precision that changes the maths.

torchao's float8 training (dynamic scaling, e4m3 operands, `torch._scaled_mm`) replaces the four
projections of every block (qkv, o, gate_up, down), where nearly all of a step's FLOPs are. The
embeddings, the LM head (11-12 outputs) and the Q head (2) stay in the forward dtype: too small
to gain and most sensitive to rounding. The weights stay the same float32 Parameters (same names,
same optimizer state), so checkpoints load into either precision.
Recipes: "rowwise" (a scale per row of each operand, torchao's accuracy-first recipe) and
"tensorwise" (one scale per tensor, the fastest).
"""

from __future__ import annotations

from types import SimpleNamespace

from torch import nn

from puzzle_hrm.layers import CastedLinear

PROJECTIONS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
RECIPES = ("rowwise", "tensorwise")


def convert_to_fp8(model: nn.Module, recipe: str = "rowwise") -> int:
    """Swap every block projection of `model` for a torchao Float8Linear in place; returns how many."""
    if recipe not in RECIPES:
        raise ValueError(f"fp8 recipe must be one of {' | '.join(RECIPES)}, got {recipe!r}")
    try:
        from torchao.float8 import Float8LinearConfig
        from torchao.float8.float8_linear import Float8Linear
    except ImportError as err:
        raise ImportError("precision=fp8 needs torchao (`pip install torchao`, the [fp8] extra)") from err
    config = Float8LinearConfig.from_recipe_name(recipe)
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if name in PROJECTIONS and isinstance(child, CastedLinear)]
    for parent, name, child in swaps:
        out_features, in_features = child.weight.shape
        if in_features % 16 or out_features % 16:
            raise ValueError(f"fp8: {name} is {in_features}x{out_features}; float8 matmuls need multiples of 16")
        linear = SimpleNamespace(in_features=in_features, out_features=out_features, weight=child.weight, bias=child.bias)
        setattr(parent, name, Float8Linear.from_float(linear, config=config))
    return len(swaps)
