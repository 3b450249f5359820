"""Area "cuda" basics: user code sees a CUDA machine, torch itself sees the truth."""
import torch

import torchdevice
from torchdevice.core import device as core_device


def call_from(module_name, expression):
    namespace = {"__name__": module_name, "torch": torch}
    exec(f"def probe():\n    return {expression}", namespace)
    return namespace["probe"]()


def test_user_code_sees_cuda(patched):
    assert torch.cuda.is_available() is True
    assert torch.cuda.device_count() == 1


def test_torch_internals_see_the_truth(patched):
    assert call_from("torch.fake_internal", "torch.cuda.is_available()") is False
    assert call_from("torch", "torch.cuda.device_count()") == 0
    # a real torch helper that asks torch.cuda.is_available() internally
    assert torch._utils._get_available_device_type() != "cuda"
    # a module that merely starts with "torch" is user code
    assert call_from("torchvision_like", "torch.cuda.is_available()") is True


def test_truthful_modules_setting(unpatched):
    torchdevice.patch(strict=True, device="cpu", truthful_modules=frozenset({"mylib"}))
    assert call_from("mylib.trainer", "torch.cuda.is_available()") is False
    assert call_from("otherlib", "torch.cuda.is_available()") is True


def test_masquerade_off(unpatched):
    torchdevice.patch(strict=True, device="cpu", masquerade=False)
    assert torch.cuda.is_available() is False
    assert torch.zeros(1, device="cuda").device.type == "cpu", "redirection still works"


def test_device_count_setting(unpatched):
    torchdevice.patch(strict=True, device="cpu", device_count=4)
    assert torch.cuda.device_count() == 4


def test_current_device_follows_selection(unpatched):
    torchdevice.patch(strict=True, device="cpu", device_count=4)
    assert torch.cuda.current_device() == 0
    torch.cuda.set_device(1)
    assert torch.cuda.current_device() == 1
    torch.cuda.set_device("cuda:2")
    assert torch.cuda.current_device() == 2
    with torch.cuda.device(3):
        assert torch.cuda.current_device() == 3
        with torch.cuda.device(None):
            assert torch.cuda.current_device() == 3
    assert torch.cuda.current_device() == 2
    with torch.cuda.device_of(torch.zeros(1, device="cuda")):
        assert torch.cuda.current_device() == 2, "tensors on the target select nothing"
    torch.cuda.set_device(-1)
    assert torch.cuda.current_device() == 2, "negative index is a no-op, as in torch"
    torch.cuda.set_device(torch.device("cuda", 0))
    assert torch.cuda.current_device() == 0


def test_synchronize_and_init_are_harmless(patched):
    assert torch.cuda.synchronize() is None
    assert torch.cuda.synchronize("cuda:0") is None
    torch.cuda.init()
    assert torch.cuda.is_initialized() is True


def test_unpatch_resets_selected_index(unpatched):
    torchdevice.patch(strict=True, device="cpu", device_count=3)
    torch.cuda.set_device(2)
    torchdevice.unpatch()
    assert core_device.get_current_index() == 0
