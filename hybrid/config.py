"""HybridConfig: the HRM controller on a frozen LLM, with the published prototype's defaults.

Names follow the HRM-LM prototype (`d_h`, `segments` = M, `inner_T`, `injector`,
`cab_mem_tokens`, `logit_bias_head`, `use_act`, `act_penalty`, `eval_segments`); the HRM block
sizes follow `puzzle_hrm.HRMConfig` (`H_layers`, `L_layers`, `num_heads`, `expansion`,
`rms_norm_eps`). Where the two agree (4 + 4 layers, 8 heads, SwiGLU expansion 4) both are meant.
The LLM's width and vocabulary come from the backbone, not from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, TypeVar

from puzzle_hrm.config import swiglu_intermediate_size

INJECTORS = ("grb", "cab", "prefix")
CONTROLLERS = ("hrm", "mlp", "transformer", "oracle")
LOSSES = ("softmax", "stablemax")
T = TypeVar("T")


@dataclass
class HybridConfig:
    # HRM controller (prototype: d_h 512, h_layers = l_layers = 4, n_heads 8; HRM paper the same)
    d_h: int = 512  # width of the latent states z_H, z_L
    H_layers: int = 4
    L_layers: int = 4
    num_heads: int = 8  # heads of the HRM blocks and of the CAB cross-attention
    expansion: float = 4.0  # SwiGLU width multiplier, rounded as puzzle_hrm (official HRM)
    rms_norm_eps: float = 1e-5  # official HRM
    attn_backend: str = "sdpa"  # puzzle_hrm attention backend; flash-attn would need half precision

    # Controller and its input (ablations and variants; the defaults are the prototype's)
    controller: str = "hrm"  # "hrm" | "mlp" / "transformer": H_layers + L_layers plain blocks run once | "oracle": the gold answer's embeddings
    centered_input: bool = False  # pooled input standardised over the training questions (BatchNorm, no gain) instead of RMS-normalised
    input_tokens: int = 0  # 0: one pooled prompt vector (prototype); W: the last W prompt token states, the HRM attends over them
    one_step_grad: bool = True  # HRM's one-step gradient; False: backpropagate through every L-update of a segment
    detach_segments: bool = True  # deep supervision; False: backpropagate through all earlier segments too
    inject_depth: float = 1.0  # where the injector conditions the LLM: after round(depth * layers) of its layers; 1.0: after the last (baseline)

    # Unrolled dynamics (prototype: 3 segments × 3 L-steps)
    segments: int = 3  # M: segments per training step, each followed by a loss (deep supervision)
    inner_T: int = 3  # L-updates per segment, all but the last without gradient; then one H-update
    eval_segments: int | None = None  # segments at evaluation ("think longer"); None: same as segments
    deep_supervision: bool = True  # the loss sums every segment's CE (HRM); False: the last segment's only, the earlier ones still refine z_H

    # Injection into the LLM (prototype: GRB gate -2.0, CAB gate -1.5 with 4 memory tokens)
    injector: str = "grb"  # "grb" gated residual bias | "cab" cross-attention bridge | "prefix" soft answer prefix
    grb_gate_init: float = -2.0  # sigmoid(-2) ≈ 0.12 of the bias at step 0
    cab_gate_init: float = -1.5
    cab_mem_tokens: int = 4  # memory tokens z_H is projected into (m >= 1)
    prefix_tokens: int = 4  # injector "prefix": soft tokens z_H becomes, read by the whole LLM between prompt and answer (hybrid.prefix)
    prefix_kv_tokens: int = 0  # injector "prefix": also z_H as this many key/value slots in every layer's attention, after the prompt (prefix tuning); 0: soft tokens only
    prefix_kv_rank: int = 32  # width of the slots' bottleneck from z_H (a full d_h -> layers x slots x keys/values map would outgrow LoRA's parameter count)
    relative_injection: bool = False  # scale the injected delta by each state's RMS: the gate is then its share of the stream
    logit_bias_head: bool = True  # gated vocab bias: logits += sigmoid(gate) · W(z_H)
    logit_bias_init: float = -2.0

    # Halting and loss
    use_act: bool = False  # q-head on z_H (halt / continue), trained from the task's verifier
    act_penalty: float = 0.0  # cost of one more segment, taken off the bootstrapped "continue" value
    loss: str = "softmax"  # "softmax" | "stablemax" (true stablemax, puzzle_hrm.losses)

    def __post_init__(self) -> None:
        if self.eval_segments is None:
            self.eval_segments = self.segments
        counts = {name: getattr(self, name) for name in ("d_h", "H_layers", "L_layers", "num_heads", "segments", "inner_T", "eval_segments", "cab_mem_tokens", "prefix_tokens")}
        too_small = [f"{name}={value}" for name, value in counts.items() if value < 1]
        if too_small:
            raise ValueError(f"these must be >= 1: {', '.join(too_small)}")
        if self.d_h % self.num_heads:
            raise ValueError(f"d_h {self.d_h} is not divisible by num_heads {self.num_heads}")
        if self.injector not in INJECTORS:
            raise ValueError(f"injector must be one of {INJECTORS}, got {self.injector!r}")
        if self.controller not in CONTROLLERS:
            raise ValueError(f"controller must be one of {CONTROLLERS}, got {self.controller!r}")
        if self.injector == "prefix" and (self.use_act or self.logit_bias_head or self.controller == "oracle"):
            raise ValueError("the prefix injector conditions through soft tokens only: it takes no use_act, logit_bias_head or oracle controller")
        if self.use_act and not self.deep_supervision:
            raise ValueError("use_act trains the q-head on every segment's answer, so it needs deep_supervision=True")
        if self.use_act and self.controller != "hrm":
            raise ValueError(f"use_act needs the HRM controller's q-head, got controller={self.controller!r}")
        if self.prefix_kv_tokens < 0 or self.prefix_kv_rank < 1:
            raise ValueError(f"prefix_kv_tokens must be >= 0 and prefix_kv_rank >= 1, got {self.prefix_kv_tokens} and {self.prefix_kv_rank}")
        if self.prefix_kv_tokens and self.injector != "prefix":
            raise ValueError(f"prefix_kv_tokens are key/value slots of the prefix injector, got injector={self.injector!r}")
        if self.input_tokens < 0:
            raise ValueError(f"input_tokens must be >= 0 (0: pooled), got {self.input_tokens}")
        if not 0.0 < self.inject_depth <= 1.0:
            raise ValueError(f"inject_depth must be in (0, 1], got {self.inject_depth}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.expansion <= 0 or self.rms_norm_eps <= 0:
            raise ValueError(f"expansion and rms_norm_eps must be > 0, got {self.expansion} and {self.rms_norm_eps}")
        if not 0.0 <= self.act_penalty <= 1.0:
            raise ValueError(f"act_penalty is a cost on a probability scale and must be in [0, 1], got {self.act_penalty}")

    def supervised(self, segments: Sequence[T]) -> list[T]:
        """The segments the training loss reads: every one (deep supervision) or the last."""
        segments = list(segments)
        return segments if self.deep_supervision else segments[-1:]

    @property
    def intermediate_size(self) -> int:
        return swiglu_intermediate_size(self.d_h, self.expansion)

    @property
    def loss_type(self) -> str:
        """The puzzle_hrm.losses name of `loss`."""
        return f"{self.loss}_cross_entropy"
