import dataclasses
import socket

import pytest
import torch

from hrm_bench import profiles
from hrm_bench.profiles import HardwareProfile, detect_profile, device_facts


@pytest.fixture
def fake_gpu(monkeypatch):
    """Pretend to have n GPUs named `name`; returns a setter."""

    def install(name: str, n: int = 1, flash: bool = False) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: name)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(profiles, "_flash_attn_importable", lambda: flash)

    return install


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_auto_on_cpu(no_gpu):
    p = detect_profile()
    assert (p.name, p.device, p.forward_dtype, p.compile, p.attention) == ("cpu", "cpu", "float32", False, "sdpa")
    assert p.peak_tflops is None and p.mfu_peak_tflops is None
    assert p.n_gpus == 0 and p.torch == torch.__version__ and p.device_name


@pytest.mark.parametrize("requested", ["h100", "h200", "cuda"])
def test_gpu_profile_without_gpu_is_refused(no_gpu, requested):
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        detect_profile(requested)


def test_unknown_profile_is_refused():
    with pytest.raises(ValueError, match="unknown hardware profile 'tpu'"):
        detect_profile("tpu")


@pytest.mark.parametrize(
    "device_name, expected, peak",
    [
        ("NVIDIA H100 80GB HBM3", "h100", 989.4),
        ("NVIDIA H200", "h200", 989.4),
        ("NVIDIA A100-SXM4-80GB", "cuda", None),
    ],
)
def test_auto_picks_gpu_family_by_name(fake_gpu, device_name, expected, peak):
    fake_gpu(device_name, n=8)
    p = detect_profile()
    assert (p.name, p.device, p.forward_dtype, p.compile) == (expected, "cuda", "bfloat16", True)
    assert p.peak_tflops == peak
    assert (p.device_name, p.n_gpus, p.cuda) == (device_name, 8, torch.version.cuda)


def test_flash_attention_only_when_importable(fake_gpu):
    fake_gpu("NVIDIA H100 80GB HBM3", flash=False)
    assert detect_profile().attention == "sdpa"
    fake_gpu("NVIDIA H100 80GB HBM3", flash=True)
    assert detect_profile().attention == "flash"


def test_explicit_profile_must_match_gpu(fake_gpu):
    fake_gpu("NVIDIA H100 80GB HBM3")
    with pytest.raises(ValueError, match="does not match this GPU"):
        detect_profile("h200")
    assert detect_profile("cuda").peak_tflops is None


def test_cpu_on_gpu_host_describes_the_cpu(fake_gpu):
    fake_gpu("NVIDIA H100 80GB HBM3", n=4, flash=True)
    p = detect_profile("cpu")
    assert (p.device, p.attention, p.n_gpus, p.forward_dtype) == ("cpu", "sdpa", 0, "float32")
    assert "H100" not in p.device_name


def test_measured_peak_overrides_spec(fake_gpu):
    fake_gpu("NVIDIA H100 80GB HBM3")
    p = dataclasses.replace(detect_profile(), measured_peak_tflops=700.0)
    assert (p.peak_tflops, p.mfu_peak_tflops) == (989.4, 700.0)


def test_device_facts_holds_no_hostname(no_gpu):
    facts = device_facts()
    assert set(facts) == {"device", "device_name", "n_gpus", "torch", "cuda"}
    assert facts["device"] == "cpu"
    assert socket.gethostname() not in map(str, facts.values())


def test_profile_fields_include_device_facts():
    assert set(device_facts()) <= {f.name for f in dataclasses.fields(HardwareProfile)}
