"""The ways training libraries probe for CUDA, each with a defined answer.

Lightning, transformers and accelerate do not stop at ``is_available()``: they
build ``torch.device("cuda", i)`` and read its type, count devices, read device
properties, free memory and bf16 support, and check version attributes. This
file pins the answer for each probe (docs/compatibility.md, "Libraries"):

* questions asked through functions get the masquerade in user code and the
  truth inside torch (core/device.py ``caller_sees_truth``);
* plain attributes that describe the build (``torch.version.cuda``,
  ``torch.backends.cudnn.version()``, the ``torch._C._cuda_*`` bindings) stay the
  truth for everyone: torch's own code reads them to choose CUDA code paths
  (compilation, extension builds), and an attribute cannot tell callers apart.
"""
import pytest
import torch


def test_device_built_by_a_library_has_cuda_type(patched):
    device = torch.device("cuda", 0)
    assert device.type == "cuda" and device.index == 0 and str(device) == "cuda:0"
    assert torch.randn(2, device=device).device.type == "cpu"


def test_is_available_and_count_for_library_code(patched):
    assert torch.cuda.is_available() is True
    assert torch.cuda.device_count() == 1


def test_build_attributes_stay_truthful(unpatched):
    before = (torch.version.cuda, torch.backends.cudnn.version(), torch.backends.cudnn.is_available(),
              hasattr(torch._C, "_cuda_getDeviceCount"), torch.backends.cuda.is_built())
    import torchdevice

    torchdevice.patch(strict=True, device="cpu")
    after = (torch.version.cuda, torch.backends.cudnn.version(), torch.backends.cudnn.is_available(),
             hasattr(torch._C, "_cuda_getDeviceCount"), torch.backends.cuda.is_built())
    assert after == before
    if not before[4]:
        assert torch.version.cuda is None, "a CPU build: nothing may make torch believe it was compiled for CUDA"


def test_lazy_init_is_harmless(patched):
    assert torch.cuda._lazy_init() is None
    assert torch.cuda.is_initialized() is True


def test_nvml_device_count_matches_device_count(patched):
    assert torch.cuda._device_count_nvml() == torch.cuda.device_count() == 1
    assert torch.cuda._raw_device_count_nvml() == 1


def test_is_compiled_for_user_code(patched):
    assert torch.cuda._is_compiled() is True


def test_device_properties_for_planning(patched):
    props = torch.cuda.get_device_properties(0)
    assert isinstance(props.name, str) and props.name
    assert isinstance(props.major, int) and isinstance(props.minor, int)
    assert props.total_memory > 0
    assert props.is_integrated, "the target shares host memory: accelerate must not count RAM twice"
    assert torch.cuda.get_device_capability(torch.device("cuda", 0)) == (props.major, props.minor)


def test_mem_get_info_for_planning(patched):
    free, total = torch.cuda.mem_get_info(0)
    assert 0 < free <= total


def test_bf16_support_reflects_the_target(patched):
    assert torch.cuda.is_bf16_supported() is True
