"""Hardware profiles: which device a run uses, how it runs there, and the peak used for MFU.

A profile is picked once per run (`detect_profile`) so that dtype, compile, attention kernel and
batch size follow the hardware in one place, and so that every result row names the hardware it
was measured on (`device_facts`). Nothing personal is recorded: no hostname, user or paths.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

PROFILE_NAMES = ("cpu", "cuda", "h100", "h200")

# Dense (no 2:4 sparsity) BF16 tensor-core peak in TFLOP/s, from NVIDIA's H100 and H200 datasheets
# (SXM form factor; the datasheets print 1,979 "with sparsity", i.e. twice the dense figure).
# H100 PCIe / NVL boards have lower peaks: set HardwareProfile.measured_peak_tflops for those.
_PEAK_BF16_TFLOPS = {"h100": 989.4, "h200": 989.4}


@dataclass
class HardwareProfile:
    name: str  # "cpu" | "cuda" (generic GPU) | "h100" | "h200"
    forward_dtype: str  # HRMConfig.forward_dtype: "float32" on CPU, "bfloat16" on GPU
    compile: bool  # torch.compile the model
    attention: str  # "sdpa" | "flash"
    batch_size: int  # suggested per-device batch
    peak_tflops: float | None  # spec dense bf16 peak per device; None (CPU, unknown GPU) leaves MFU empty
    device: str  # torch device type: "cpu" | "cuda"
    device_name: str  # GPU name, or the CPU model
    n_gpus: int
    torch: str
    cuda: str | None
    measured_peak_tflops: float | None = None  # a measured matmul peak; overrides peak_tflops for MFU

    @property
    def mfu_peak_tflops(self) -> float | None:
        """The per-device peak MFU is computed against: measured if given, else the spec sheet."""
        return self.measured_peak_tflops if self.measured_peak_tflops is not None else self.peak_tflops


def device_facts(device: str = "auto") -> dict:
    """What `device` ("cpu" | "cuda" | "auto": the GPU if there is one) is, in result-row words.

    No hostname, user or paths: rows are committed and shared.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    on_gpu = device == "cuda"
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if on_gpu else _cpu_name(),
        "n_gpus": torch.cuda.device_count() if on_gpu else 0,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }


def detect_profile(requested: str = "auto") -> HardwareProfile:
    """The profile for `requested` ("auto" or one of PROFILE_NAMES); ValueError if it cannot run here."""
    if requested != "auto" and requested not in PROFILE_NAMES:
        raise ValueError(f"unknown hardware profile {requested!r}; expected 'auto' or one of {PROFILE_NAMES}")
    detected = _gpu_family(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else "cpu"
    name = detected if requested == "auto" else requested
    _check_runnable(name, detected)
    on_gpu = name != "cpu"
    profile = HardwareProfile(
        name=name,
        forward_dtype="bfloat16" if on_gpu else "float32",
        compile=on_gpu,
        attention="flash" if on_gpu and _flash_attn_importable() else "sdpa",
        # 768: the official global_batch_size (config/cfg_pretrain.yaml), run here on one 80+ GB GPU.
        batch_size={"cpu": 32, "cuda": 256}.get(name, 768),
        peak_tflops=_PEAK_BF16_TFLOPS.get(name),
        **device_facts("cuda" if on_gpu else "cpu"),
    )
    logger.info("hardware profile: %s", profile)
    return profile


def _check_runnable(name: str, detected: str) -> None:
    if name != "cpu" and detected == "cpu":
        raise ValueError(f"hardware profile {name!r} needs a CUDA GPU, but torch.cuda.is_available() is False")
    if name in _PEAK_BF16_TFLOPS and name != detected:
        raise ValueError(
            f"hardware profile {name!r} does not match this GPU ({torch.cuda.get_device_name(0)!r}); "
            "use 'auto' or 'cuda'"
        )


def _gpu_family(device_name: str) -> str:
    upper = device_name.upper()
    return next((name for name in _PEAK_BF16_TFLOPS if name.upper() in upper), "cuda")


def _flash_attn_importable() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux); platform.processor() elsewhere or if unreadable."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
