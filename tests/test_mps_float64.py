"""The MPS target, against the fake backend in tests/fake_mps.py: device mapping and the float64 policy."""
import io
import warnings

import numpy as np
import pytest
import torch

from fake_mps import mps_session
from conftest import cuda_tagged_checkpoint
from torchdevice import TorchDeviceWarning
from torchdevice.core import logger


@pytest.fixture(autouse=True)
def fresh_warnings():
    logger._warned.clear()
    yield
    logger._warned.clear()


def test_target_is_mps():
    with mps_session():
        assert torch.device("cuda:1").type == "cuda", "device objects keep their CUDA identity"
        import torchdevice

        assert torchdevice.status()["target"] == "mps:0"
        t = torch.zeros(2, device="cuda")
        assert t.device.type == "meta" and t.dtype == torch.float32  # the fake stores "mps" on meta
        assert torch.ones(2).to("cuda").device.type == "meta"


def test_float64_downcast_warns_once():
    with mps_session() as fake, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = torch.zeros(2, dtype=torch.float64, device="cuda")
        b = torch.randn(2, dtype=torch.float64).to("cuda")
        c = torch.randn(2, dtype=torch.float64).cuda()
        d = torch.tensor(np.ones(3), device="cuda")
        e = torch.randn(2, dtype=torch.complex128).to("cuda:0")
        f = torch.randn(2, dtype=torch.float64).to("cuda", torch.float64)
        assert [x.dtype for x in (a, b, c, d, f)] == [torch.float32] * 5 and e.dtype == torch.complex64
        assert all(x.device.type == "meta" for x in (a, b, c, d, e, f))
        asked = {str(device) for _, device, _ in fake.tensor_calls}
        assert asked <= {"mps:0"}
    ours = [w for w in caught if issubclass(w.category, TorchDeviceWarning)]
    assert len(ours) == 2, [str(w.message) for w in ours]  # float64 once, complex128 once
    assert "TORCHDEVICE_MPS_FLOAT64=cpu" in str(ours[0].message)


def test_float32_untouched_and_explicit_mps_not_policed():
    with mps_session(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert torch.ones(2, device="cuda").dtype == torch.float32
        assert torch.arange(3, device="cuda").dtype == torch.int64
        assert torch.randn(2).to(torch.float64).dtype == torch.float64, "dtype-only .to stays as asked"
        assert torch.randn(2, dtype=torch.float64).to("mps").dtype == torch.float64, "explicit mps left to torch"
    assert not [w for w in caught if issubclass(w.category, TorchDeviceWarning)]


def test_float64_policy_cpu():
    with mps_session(mps_float64="cpu"):
        kept = torch.randn(2, dtype=torch.float64).to("cuda")
        assert kept.device.type == "cpu" and kept.dtype == torch.float64
        assert torch.zeros(2, dtype=torch.float64, device="cuda").device.type == "cpu"
        assert torch.zeros(2, device="cuda").device.type == "meta", "float32 still goes to the target"


def test_float64_policy_error():
    with mps_session(mps_float64="error"):
        with pytest.raises(TypeError, match=r"torch\.ones: torch\.float64 is not supported on mps.*TORCHDEVICE_MPS_FLOAT64"):
            torch.ones(2, dtype=torch.float64, device="cuda")
        with pytest.raises(TypeError, match="Tensor.to: torch.float64"):
            torch.randn(2, dtype=torch.float64).to("cuda")


def test_load_cuda_checkpoint_onto_mps():
    data = cuda_tagged_checkpoint({"w": torch.arange(3.0, dtype=torch.float64), "i": torch.arange(2)})
    with mps_session(), warnings.catch_warnings():
        warnings.simplefilter("ignore", TorchDeviceWarning)
        loaded = torch.load(io.BytesIO(data))
        assert loaded["w"].device.type == "meta" and loaded["w"].dtype == torch.float32
        assert loaded["i"].device.type == "meta" and loaded["i"].dtype == torch.int64


def test_fake_leaves_no_trace():
    with mps_session():
        pass
    assert torch.backends.mps.is_available() is False
    assert torch.device is torch._C.device


def test_float64_policy_applies_to_device_objects_from_cuda_specs():
    with mps_session(), warnings.catch_warnings():
        warnings.simplefilter("ignore", TorchDeviceWarning)
        device = torch.device("cuda", 1)
        assert device.type == "cuda"
        assert torch.zeros(2, device=device).device.type == "meta"  # the fake stores "mps" on meta
        assert torch.zeros(2, dtype=torch.float64, device=device).dtype == torch.float32
        assert torch.randn(2, dtype=torch.float64).to(device).dtype == torch.float32
        assert torch.randn(2, dtype=torch.float64).to(torch.device("mps")).dtype == torch.float64


def default_device():
    """torch.get_default_device(), or on torch 2.2 (which lacks it) the device set_default_device set."""
    get = getattr(torch, "get_default_device", None)
    if get is not None:
        try:
            return get()
        except AttributeError:  # torch 2.3 to 2.5 after set_default_device(None): its own bug
            return torch._C.device("cpu")
    context = torch._GLOBAL_DEVICE_CONTEXT
    return torch._C.device("cpu") if context is None else torch._C.device(context.device)


def test_set_default_tensor_type_cuda_on_mps():
    with mps_session(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's own deprecation warning
        try:
            torch.set_default_tensor_type("torch.cuda.FloatTensor")
            assert default_device() == torch._C.device("mps", 0)
            assert torch.get_default_dtype() == torch.float32
            torch.set_default_tensor_type("torch.cuda.DoubleTensor")  # no float64 on MPS: downcast
            assert torch.get_default_dtype() == torch.float32
            torch.set_default_tensor_type("torch.FloatTensor")
            assert default_device() == torch._C.device("cpu")
        finally:
            torch.set_default_device(None)
            torch.set_default_dtype(torch.float32)


def test_set_default_tensor_type_double_with_cpu_policy():
    with mps_session(mps_float64="cpu"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            torch.set_default_tensor_type("torch.cuda.DoubleTensor")
            assert torch.get_default_dtype() == torch.float64
            assert default_device() == torch._C.device("cpu")
        finally:
            torch.set_default_device(None)
            torch.set_default_dtype(torch.float32)
