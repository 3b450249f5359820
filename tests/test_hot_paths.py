"""The hot-path wrappers keep torch's behaviour exactly while taking their fast paths.

bench/ measures their cost; these tests pin what the fast paths must not change:
the shape of the call torch receives, torch's own errors, and the cache entries
the wrappers rely on.
"""
import pytest
import torch

import torchdevice
from torchdevice.core import device as core_device

CPU = torch._C.device("cpu")


@pytest.fixture
def patched():
    """torchdevice active (strict) with 16 CUDA devices, so that every index these tests name
    (up to 12) exists: an index beyond device_count() fails, as on a GPU (test_device_forms.py)."""
    torchdevice.unpatch()
    status = torchdevice.patch(strict=True, device="cpu", device_count=16)
    yield status
    torchdevice.unpatch()


class Recorder(torch.Tensor):
    """A tensor subclass that records how Tensor.to reached torch (as FakeTensor-like code would see it)."""

    calls = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") == "to":
            cls.calls.append((args[1:], dict(kwargs or {})))
        return super().__torch_function__(func, types, args, kwargs)


TO_CASES = [
    (lambda t: t.to("cuda"), (CPU,), {}),
    (lambda t: t.to("cuda", non_blocking=True), (CPU,), {"non_blocking": True}),
    (lambda t: t.to("cuda", torch.float16), (CPU, torch.float16), {}),
    (lambda t: t.to("cuda", torch.float16, True), (CPU, torch.float16, True), {}),
    (lambda t: t.to(device="cuda"), (), {"device": CPU}),
    (lambda t: t.to(device="cuda", non_blocking=True), (), {"device": CPU, "non_blocking": True}),
    (lambda t: t.to(device="cuda", dtype=torch.float16), (), {"device": CPU, "dtype": torch.float16}),
    (lambda t: t.to(torch.float64), (torch.float64,), {}),
    (lambda t: t.to(dtype=torch.float64), (), {"dtype": torch.float64}),
    (lambda t: t.to("cuda", memory_format=torch.preserve_format), (CPU,), {"memory_format": torch.preserve_format}),
    (lambda t: t.to(), (), {}),
    (lambda t: t.to("cuda", torch.float16, non_blocking=True), (CPU, torch.float16), {"non_blocking": True}),
    (lambda t: t.to("cuda", copy=True, non_blocking=True), (CPU,), {"copy": True, "non_blocking": True}),
    (lambda t: t.to(device="cuda", non_blocking=True, copy=True), (), {"device": CPU, "non_blocking": True,
                                                                     "copy": True}),
    (lambda t: t.to(dtype=torch.float64, non_blocking=True), (), {"dtype": torch.float64, "non_blocking": True}),
    (lambda t: t.to(non_blocking=True), (), {"non_blocking": True}),
]


@pytest.mark.parametrize("call,args,kwargs", TO_CASES)
def test_tensor_to_passes_the_call_shape_through(patched, call, args, kwargs):
    t = torch.arange(3.0).as_subclass(Recorder)
    Recorder.calls.clear()
    call(t)
    assert Recorder.calls[0] == (args, kwargs)


def test_tensor_to_invalid_combination_is_torchs_error(patched):
    with pytest.raises(TypeError, match="invalid combination of arguments"):
        torch.arange(3.0).to(torch.float16, device="cuda")


def test_tensor_to_uncached_first_arguments(patched):
    t = torch.arange(3.0)
    other = torch.zeros(1, dtype=torch.int32)
    assert t.to(other).dtype == torch.int32, "a tensor argument is hashed by identity and passed through"
    assert t.to("cuda:7").device == CPU and "cuda:7" in core_device.DEVICE_CACHE
    assert t.to("cuda:12").device == CPU, "an index beyond the seeded ones is mapped, then cached"
    assert "cuda:12" in core_device.DEVICE_CACHE
    with pytest.raises(TypeError):
        t.to([1, 2])  # unhashable: torch's own error


def test_every_dtype_is_cached_as_itself(patched):
    dtypes = [value for value in vars(torch).values() if type(value) is torch.dtype]
    assert len(dtypes) > 10
    for dtype in dtypes:
        assert core_device.DEVICE_CACHE[dtype] is dtype
        assert core_device.map_device(dtype) is dtype


def test_factory_fast_paths(patched):
    assert torch.zeros(2).device == CPU
    assert torch.zeros(2, device=None).device == CPU
    assert torch.zeros(2, device="cuda:3").device == CPU
    assert torch.zeros(2, dtype=torch.int8).dtype == torch.int8
    assert torch.zeros(2, 3, device=torch.device("cuda"), dtype=torch.float16).shape == (2, 3)
    assert torch.zeros(2, device="cpu").device == CPU, "an explicit cpu stays cpu"
    with pytest.raises(RuntimeError):
        torch.zeros(2, device="cuda:x")  # torch's parse error, raised from map_device
    with pytest.raises(TypeError):
        torch.zeros(2, device=[0])  # unhashable: handed to torch, which rejects it


def test_tensor_cuda_fast_path_and_arguments(patched):
    t = torch.arange(3.0)
    assert t.cuda() is t
    assert t.cuda(None, True) is t
    img = torch.zeros(1, 3, 2, 2)
    assert img.cuda(memory_format=torch.channels_last).is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="Invalid device, must be cuda device"):
        t.cuda("cpu")


class CpuCalls(torch.Tensor):
    seen = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.seen.append(getattr(func, "__name__", ""))
        return super().__torch_function__(func, types, args, kwargs)


def test_tensor_cuda_answers_itself_only_where_cpu_would_do_nothing_observable(patched):
    param = torch.nn.Parameter(torch.ones(2))
    assert param.cuda() is param and torch.ones(2).cuda().device == CPU
    # a subclass sees the call it would see on a GPU machine's t.cpu()
    CpuCalls.seen.clear()
    sub = torch.ones(2).as_subclass(CpuCalls)
    assert type(sub.cuda()) is CpuCalls and "cpu" in CpuCalls.seen
    # a torch function mode sees it too

    class Mode(torch.overrides.TorchFunctionMode):
        seen = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            Mode.seen.append(getattr(func, "__name__", ""))
            return func(*args, **(kwargs or {}))

    with Mode():
        torch.ones(2).cuda()
    assert "cpu" in Mode.seen
    # tensors elsewhere are moved (meta cannot be: torch's own error)
    with pytest.raises(NotImplementedError, match="meta"):
        torch.empty(2, device="meta").cuda()
    # autograd: the same tensor, as t.cpu() gives
    leaf = torch.ones(2, requires_grad=True)
    assert leaf.cuda() is leaf and (leaf * 2).cuda().grad_fn is not None


def test_isinstance_on_the_device_stand_in_stays_exact(patched):
    assert isinstance(torch.device("cuda"), torch.device)
    assert isinstance(CPU, torch.device) and isinstance(torch._C.device("meta"), torch.device)
    for other in ("cuda", 0, None, torch.float32, torch.zeros(1)):
        assert not isinstance(other, torch.device)
    assert type(torch.device).__instancecheck__ == torch._C.device.__instancecheck__
    assert issubclass(torch._C.device, torch.device) and not issubclass(str, torch.device)


def test_torch_device_strings_are_made_once(patched):
    made = torch.device("cuda:1")
    assert made == torch._C.device("cuda", 1) and type(made) is torch._C.device
    assert torch.device("cuda:1") is made, "the same immutable object is handed out again"
    assert torch.device("cpu") == CPU and torch.device("cuda", 1) == made
    assert torch.device(type="cuda", index=2) == torch._C.device("cuda", 2)
    with pytest.raises(RuntimeError, match="Invalid device string"):
        torch.device("cuda:x")
    with pytest.raises(TypeError):
        torch.device()
    with pytest.raises(TypeError):
        torch.device(["cuda"])  # unhashable: torch's own error


def test_torch_device_cache_is_bounded(patched):
    from torchdevice.ops.device import redirect

    first = [torch.device(f"cuda:{i}") for i in range(redirect._DEVICE_CACHE_LIMIT + 50)]
    again = [torch.device(f"cuda:{i}") for i in range(redirect._DEVICE_CACHE_LIMIT + 50)]
    assert first == again
    cached = sum(a is b for a, b in zip(first, again))
    assert cached == redirect._DEVICE_CACHE_LIMIT
