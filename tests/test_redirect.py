"""Area "device": every form of CUDA device spec lands on the target (CPU here)."""
import copy
import io
import pickle
import sys
import typing
import warnings

import numpy as np
import pytest
import torch

import torchdevice
from conftest import clean_env, cuda_tagged_checkpoint, run_python
from torchdevice.core import device as core_device
from torchdevice.ops.device import redirect

CPU = torch._C.device("cpu")


@pytest.fixture
def patched():
    """torchdevice active (strict) with 16 CUDA devices, so that every index these tests name
    (up to 12) exists: an index beyond device_count() fails, as on a GPU (test_device_forms.py)."""
    torchdevice.unpatch()
    status = torchdevice.patch(strict=True, device="cpu", device_count=16)
    yield status
    torchdevice.unpatch()


# -- torch.device ---------------------------------------------------------------------------
@pytest.mark.parametrize("args,kwargs", [
    (("cuda",), {}), (("cuda:1",), {}), (("cuda", 0), {}), ((), {"type": "cuda", "index": 0}),
    ((torch._C.device("cuda", 3),), {}),
])
def test_device_objects_keep_cuda_identity(patched, args, kwargs):
    made = torch.device(*args, **kwargs)
    assert type(made) is torch._C.device and made.type == "cuda", "libraries check device.type of what they built"
    assert made == torch._C.device(*args, **kwargs)
    assert torch.zeros(1, device=made).device == CPU and torch.ones(1).to(made).device == CPU


def test_bare_index_names_a_cuda_device(patched):
    assert torch.device(0) == torch._C.device("cuda", 0) and torch.device(11) == torch._C.device("cuda", 11)
    assert torch.zeros(1, device=torch.device(1)).device == CPU


def test_device_keeps_non_cuda(patched):
    assert torch.device("cpu") == CPU
    assert torch.device("meta").type == "meta"
    assert torch.device("mps").type == "mps", "an explicit non-CUDA device is left alone"


def test_device_is_still_a_type(patched):
    real = torch._C.device("cpu")
    assert isinstance(real, torch.device) and not isinstance("cpu", torch.device)
    assert issubclass(torch._C.device, torch.device) and issubclass(torch.device, torch.device)
    assert typing.Optional[torch.device] == typing.Optional[torch.device]
    union = torch.device | str
    assert isinstance(real, union) and isinstance("x", union) and not isinstance(3, union)
    assert {torch.device("cuda"): 1}[torch._C.device("cuda")] == 1
    assert pickle.loads(pickle.dumps(torch.device("cuda:1"))) == torch._C.device("cuda", 1)
    assert copy.deepcopy(torch.device("cuda")) == torch._C.device("cuda")
    assert torch.device.__name__ == "device" and torch.device.__doc__ == torch._C.device.__doc__


def test_device_annotation_in_function_signature(patched):
    def f(d: typing.Optional[torch.device] = None) -> torch.device:
        return d

    hints = typing.get_type_hints(f)
    assert hints["return"] is torch.device


@pytest.mark.parametrize("spec", ["cuda:x", "gpu", "cuda:-1"])
def test_invalid_specs_raise_torch_errors(patched, spec):
    with pytest.raises(RuntimeError) as info:
        torch.device(spec)
    assert spec.split(":")[0] in str(info.value) or "index" in str(info.value).lower()
    with pytest.raises(RuntimeError):
        torch.zeros(1, device=spec)


def test_negative_index_other_than_minus_one_is_torchs_error(patched):
    with pytest.raises(RuntimeError, match="negative"):
        torch.zeros(1, device=-2)
    with pytest.raises(RuntimeError, match="negative"):
        torch.ones(1).to(-3)


def test_get_device_result_places_on_the_target(patched):
    """x.get_device() is -1 for a tensor on the CPU target (a GPU answers 0), so code that
    passes it on as a device index must keep working; -1 names the current CUDA device."""
    x = torch.ones(2, device="cuda")
    index = x.get_device()
    assert index == -1, "tensors report the device they live on"
    model = torch.nn.Linear(2, 2)
    placed = [torch.zeros(2, device=index), torch.tensor([1.0], device=index), x.to(index), x.to(device=index),
              x.cuda(index), x.new_zeros(2, device=index), model.cuda(index).weight, model.to(index).weight,
              model.to(device=index, dtype=torch.float64).weight]
    assert all(t.device == CPU for t in placed)
    assert placed[-1].dtype == torch.float64, "Module.to keeps its other arguments"
    assert torch.cuda.get_device_name(index) == torch.cuda.get_device_name()
    assert torch.cuda.get_device_properties(index).name == torch.cuda.get_device_properties(0).name
    assert torch.cuda.memory_allocated(index) == torch.cuda.memory_allocated()
    before = torch.cuda.current_device()
    torch.cuda.set_device(index)
    with torch.cuda.device(index):
        assert torch.cuda.current_device() == before
    assert torch.cuda.current_device() == before


# -- factories ---------------------------------------------------------------------------------
FACTORIES = [
    lambda d: torch.zeros(2, device=d), lambda d: torch.ones(2, device=d), lambda d: torch.empty(2, device=d),
    lambda d: torch.full((2,), 3.0, device=d), lambda d: torch.rand(2, device=d), lambda d: torch.randn(2, device=d),
    lambda d: torch.randint(0, 5, (2,), device=d), lambda d: torch.arange(3, device=d),
    lambda d: torch.linspace(0, 1, 3, device=d), lambda d: torch.eye(2, device=d),
    lambda d: torch.tensor([1.0], device=d), lambda d: torch.as_tensor([1.0], device=d),
    lambda d: torch.asarray([1.0], device=d), lambda d: torch.zeros_like(torch.ones(2), device=d),
    lambda d: torch.randn_like(torch.ones(2), device=d), lambda d: torch.hann_window(4, device=d),
    lambda d: torch.randperm(3, device=d), lambda d: torch.empty_strided((2,), (1,), device=d),
    lambda d: torch.sparse_coo_tensor([[0]], [1.0], (2,), device=d, check_invariants=True),
    lambda d: torch.fft.fftfreq(4, device=d), lambda d: torch.tril_indices(3, 3, device=d),
    lambda d: torch.scalar_tensor(1.0, device=d),
]


@pytest.mark.parametrize("spec", ["cuda", "cuda:1", 0, torch._C.device("cuda", 0)])
@pytest.mark.parametrize("factory", FACTORIES)
def test_factories(patched, factory, spec):
    assert factory(spec).device == CPU


def test_factory_set_is_derived_from_the_running_torch(patched):
    derived = {(owner, name) for owner, name, _ in redirect.device_functions()}
    for expected in [("torch", "zeros"), ("torch", "randint"), ("torch", "tensor"), ("torch", "asarray"),
                     ("torch", "sparse_csr_tensor"), ("torch", "kaiser_window"), ("torch.fft", "rfftfreq"),
                     ("torch.Tensor", "new_zeros"), ("torch.Tensor", "new_full")]:
        assert expected in derived
    schema_names = {s.name.partition("::")[2] for s in torch._C._jit_get_all_schemas()
                    if any(a.name == "device" and a.kwarg_only for a in s.arguments)}
    public = {n for n in schema_names if not n.startswith("_") and hasattr(torch, n)
              and hasattr(torch._C._VariableFunctions, n)}
    assert public <= {name for owner, name in derived if owner == "torch"}


def test_pin_memory_factory_flag_is_dropped(patched):
    t = torch.empty(3, pin_memory=True, device="cuda")
    assert t.device == CPU and not t.is_pinned()


def test_factory_without_device_unchanged(patched):
    assert torch.zeros(2).device == CPU
    assert torch.zeros(2, device="cpu").device == CPU
    assert torch.zeros(2, dtype=torch.float16).dtype == torch.float16


def test_generator(patched):
    g = torch.Generator(device="cuda")
    assert g.device == CPU and isinstance(g, torch.Generator)
    g.manual_seed(3)
    a = torch.randn(3, generator=g, device="cuda")
    g.manual_seed(3)
    assert torch.equal(a, torch.randn(3, generator=g, device="cuda"))
    if _generators_pickle():
        assert pickle.loads(pickle.dumps(g)).device == CPU
    assert torch.Generator().device == CPU


def _generators_pickle():
    """Whether this torch pickles its own generators (older releases raise TypeError)."""
    try:
        pickle.dumps(torch._C.Generator())
        return True
    except TypeError:
        return False


# -- tensors ------------------------------------------------------------------------------------
def test_tensor_to_all_forms(patched):
    t = torch.arange(4.0)
    other = torch.zeros(1, dtype=torch.float16)
    assert t.to("cuda").device == CPU and t.to("cuda") is t, "same device: no copy"
    assert t.to("cuda", copy=True) is not t
    assert t.to(torch.device("cuda:1")).device == CPU
    assert t.to(device="cuda").device == CPU
    assert t.to("cuda", torch.float16).dtype == torch.float16
    assert t.to(device="cuda", dtype=torch.int32).dtype == torch.int32
    assert t.to("cuda", non_blocking=True).device == CPU
    assert t.to(torch.float64).dtype == torch.float64, "dtype-only form converts dtype"
    assert t.to(dtype=torch.bfloat16).dtype == torch.bfloat16
    assert t.to(other).dtype == torch.float16
    img = torch.zeros(1, 3, 4, 4)
    assert img.to("cuda", memory_format=torch.channels_last).is_contiguous(memory_format=torch.channels_last)
    assert t.to(0).device == CPU


def test_tensor_cuda(patched):
    t = torch.arange(3.0)
    assert t.cuda() is t
    assert t.cuda(0).device == CPU and t.cuda("cuda:1").device == CPU and t.cuda(device=torch.device("cuda")) is t
    assert t.cuda(non_blocking=True) is t
    img = torch.zeros(1, 3, 4, 4)
    assert img.cuda(memory_format=torch.channels_last).is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="Invalid device, must be cuda device"):
        t.cuda("cpu")


def test_tensor_new_methods(patched):
    t = torch.ones(2, dtype=torch.float16)
    for made in (t.new_zeros(3, device="cuda"), t.new_ones(3, device="cuda:0"), t.new_empty(3, device=0),
                 t.new_full((3,), 2.0, device="cuda"), t.new_tensor([1.0], device="cuda"),
                 t.new_empty_strided((3,), (1,), device="cuda")):
        assert made.device == CPU and made.dtype == torch.float16


def test_pinned_memory(patched):
    t = torch.zeros(2)
    assert t.pin_memory() is t
    assert t.is_pinned() is False


def test_dataloader_pin_memory_is_quiet_and_keeps_data(patched):
    from torch.utils.data import DataLoader, TensorDataset

    data = TensorDataset(torch.arange(6.0).view(3, 2), torch.arange(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns "no accelerator is found" for pin_memory=True on CPU
        loader = DataLoader(data, batch_size=2, pin_memory=True)
        batches = list(loader)
    assert loader.pin_memory is False
    assert torch.equal(batches[0][0], torch.tensor([[0.0, 1.0], [2.0, 3.0]])) and batches[1][1].tolist() == [2]


def test_dataloader_pin_memory_warns_without_torchdevice(unpatched):
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(torch.zeros(2)), pin_memory=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        list(loader)
    if not any("pin_memory" in str(w.message) for w in caught):
        pytest.skip(f"torch {torch.__version__}'s DataLoader does not warn about pin_memory without a GPU")


@pytest.fixture
def default_type_restored():
    yield
    torch.set_default_dtype(torch.float32)
    torch.set_default_device(None)


@pytest.mark.parametrize("legacy,dtype", [("torch.cuda.FloatTensor", torch.float32),
                                          ("torch.cuda.DoubleTensor", torch.float64),
                                          ("torch.cuda.HalfTensor", torch.float16)])
def test_set_default_tensor_type_cuda(patched, default_type_restored, legacy, dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's own deprecation warning, as on a GPU
        torch.set_default_tensor_type(legacy)
        made = torch.zeros(2), torch.randn(3), torch.tensor([1.5])
        assert all(t.dtype == dtype and t.device == CPU for t in made)
        assert torch.arange(3).dtype == torch.int64, "integer factories keep their dtype"
        torch.set_default_tensor_type(torch.cuda.FloatTensor)  # the class form
        assert torch.ones(1).dtype == torch.float32
        torch.set_default_tensor_type("torch.DoubleTensor")  # CPU types: torch's own behaviour
        assert torch.ones(1).dtype == torch.float64


@pytest.mark.skipif(torch.backends.cuda.is_built(), reason="a CUDA build of torch accepts the type")
def test_set_default_tensor_type_cuda_fails_without_torchdevice(unpatched):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(TypeError, match="not compiled with CUDA"):
            torch.set_default_tensor_type("torch.cuda.FloatTensor")


def test_legacy_types(patched):
    made = torch.cuda.FloatTensor(2, 3)
    assert made.shape == (2, 3) and made.dtype == torch.float32 and made.device == CPU
    assert isinstance(made, torch.cuda.FloatTensor) and not isinstance(made, torch.cuda.LongTensor)
    assert torch.cuda.LongTensor([1, 2]).tolist() == [1, 2]
    t = torch.zeros(2)
    assert t.type(torch.cuda.LongTensor).dtype == torch.int64
    assert t.type("torch.cuda.HalfTensor").dtype == torch.float16
    assert t.type(torch.float64).dtype == torch.float64
    assert t.type() == "torch.FloatTensor"
    assert torch.cuda.DoubleTensor is not None and torch.cuda.FloatTensor.dtype == torch.float32


def test_storage_cuda(patched):
    storage = torch.arange(3.0).untyped_storage()
    assert storage.cuda().device == CPU
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        typed = torch.arange(3.0).storage()
        assert typed.cuda().device == CPU


def test_set_default_device_and_context(patched):
    torch.set_default_device("cuda")
    try:
        assert torch.zeros(1).device == CPU
    finally:
        torch.set_default_device(None)
    with torch.device("cuda"):
        assert torch.ones(1).device == CPU


# -- modules and optimizers -------------------------------------------------------------------
def test_module_moves_and_dtype_conversion(patched):
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    assert model.cuda() is model
    assert all(p.device == CPU for p in model.parameters())
    assert all(b.device == CPU for b in model.buffers())
    model.to("cuda:1")
    model.to(torch.device("cuda"), torch.float16)
    assert next(model.parameters()).dtype == torch.float16
    model.to(torch.float32)
    assert next(model.parameters()).dtype == torch.float32
    model.to(dtype=torch.float64)
    assert next(model.parameters()).dtype == torch.float64
    model.half()
    assert next(model.parameters()).dtype == torch.float16
    meta = torch.nn.Linear(2, 2, device="meta")
    assert meta.to_empty(device="cuda").weight.device == CPU
    assert torch.nn.Linear(2, 2).cuda(0).weight.device == CPU


def test_optimizer_state_on_target(patched):
    model = torch.nn.Linear(3, 1).cuda()
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3, device="cuda")).sum().backward()
    opt.step()
    state = opt.state_dict()["state"][0]
    assert state["exp_avg"].device == CPU


# -- checkpoints ------------------------------------------------------------------------------
def test_checkpoint_really_carries_cuda_tags(unpatched):
    data = cuda_tagged_checkpoint({"w": torch.arange(3.0)})
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(io.BytesIO(data))


@pytest.mark.parametrize("zipfile", [True, False])
@pytest.mark.parametrize("map_location", [None, "cuda", "cuda:1", torch._C.device("cuda", 0), "cpu",
                                          {"cuda:1": "cuda:0"}, {"cuda:1": "cpu"}, "callable", "callable-none"])
def test_load_cuda_checkpoint(patched, map_location, zipfile):
    state = {"w": torch.arange(4.0), "n": [torch.ones(2, dtype=torch.int64)]}
    data = cuda_tagged_checkpoint(state, zipfile)
    if map_location == "callable":
        map_location = lambda storage, location: storage.cuda(0)  # noqa: E731
    elif map_location == "callable-none":
        map_location = lambda storage, location: None  # noqa: E731
    loaded = torch.load(io.BytesIO(data), map_location=map_location)
    assert torch.equal(loaded["w"], state["w"]) and loaded["w"].device == CPU
    assert torch.equal(loaded["n"][0], state["n"][0])


def test_load_positional_map_location_and_serialization_load(patched):
    data = cuda_tagged_checkpoint({"w": torch.ones(2)})
    assert torch.load(io.BytesIO(data), "cuda")["w"].device == CPU
    assert torch.serialization.load(io.BytesIO(data))["w"].device == CPU


def test_load_warnings_name_the_callers_line(patched):
    """torch.load's own warnings (torch 2.4-2.5 warn about weights_only) point at the program's line,
    as without torchdevice, and go through the program's filters."""
    def warning_load(f, map_location=None, *args, **kwargs):  # warns as torch.load does
        warnings.warn("weights_only default", FutureWarning, stacklevel=2)
        return map_location

    load = redirect._load(warning_load)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = sys._getframe().f_lineno + 1
        used = load(io.BytesIO(b""), "cuda")
    assert used == CPU, "the map_location was still mapped"
    assert [(w.category, w.filename, w.lineno) for w in caught] == [(FutureWarning, __file__, line)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("ignore", FutureWarning)
        load(io.BytesIO(b""))
    assert caught == [], "the program's filters apply"


def test_load_warnings_from_code_run_with_dash_c():
    """The re-shown warning works where the caller's module has no source (python -c)."""
    done = run_python("""
import warnings, torch, torchdevice
from torchdevice.ops.device import redirect
torchdevice.patch(strict=True, device="cpu")

def warning_load(f, map_location=None):
    warnings.warn("weights_only default", FutureWarning, stacklevel=2)
    return map_location

print(redirect._load(warning_load)(None, "cuda"))
""", env=clean_env(TORCHDEVICE_DISABLE="1"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "cpu"
    assert done.stderr.strip() == "<string>:10: FutureWarning: weights_only default"


def test_model_state_dict_round_trip(patched, tmp_path):
    model = torch.nn.Linear(4, 2).cuda()
    data = cuda_tagged_checkpoint(model.state_dict())
    clone = torch.nn.Linear(4, 2).cuda()
    clone.load_state_dict(torch.load(io.BytesIO(data)))
    assert torch.equal(clone.weight, model.weight)


# -- cache ------------------------------------------------------------------------------------
def test_mapping_cache_is_bounded(patched):
    for i in range(3000):
        core_device.map_device(f"cpu:{i}")
    assert len(core_device.DEVICE_CACHE) <= core_device._CACHE_LIMIT
    assert core_device.map_device("cpu:2999") == torch._C.device("cpu", 2999)
    assert core_device.map_device("cuda:15") == CPU


def test_explicit_cpu_stays_cpu_with_numpy(patched):
    arr = np.arange(3.0)
    assert torch.tensor(arr, device="cpu").device == CPU
    assert torch.as_tensor(arr, device="cuda").dtype == torch.float64, "CPU keeps float64"


@pytest.mark.parametrize("context", [None, "spawn"])
def test_data_loader_pin_memory_is_quiet_and_works(patched, context):
    from torch.utils.data import DataLoader, TensorDataset

    dataset = TensorDataset(torch.arange(8.0).unsqueeze(1), torch.arange(8))
    loader = DataLoader(dataset, batch_size=4, num_workers=2 if context else 0, pin_memory=True,
                        multiprocessing_context=context, pin_memory_device="cuda")
    assert loader.pin_memory is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batches = [x.cuda(non_blocking=True) for x, _ in loader]
    assert torch.equal(torch.cat(batches), dataset.tensors[0])
    positional = DataLoader(dataset, 4, False, None, None, 0, None, True)
    assert positional.pin_memory is False
