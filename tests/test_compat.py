"""What must hold on every supported torch release and build (docs/compatibility.md).

The tox matrix runs this whole suite against each torch minor release, as the
CPU-only build and as the CUDA build without a GPU. The tests here pin down
the places where torch releases and builds differ: which functions take a
device (found at run time from torch's schemas), torch.load's defaults,
``torch.cuda`` answering "no NVIDIA driver" instead of "not compiled with
CUDA", and torch's own CUDA bookkeeping, which must keep telling torch the
truth so that it never calls into the CUDA runtime.
"""
import io
import os
import sys
import pickle
import re
import warnings
import zipfile

import pytest
import torch

import torch_features
from conftest import clean_env, run_python
from torchdevice.core import device as core_device
from torchdevice.ops.device import redirect

CPU = torch.device("cpu")
CUDA_BUILD = torch.backends.cuda.is_built()


def test_env_tests_the_torch_it_names():
    """tox sets TORCH_ENV to the env name: torch213cpu must be the CPU-only 2.13
    build, torch22 the CUDA build of 2.2, and so on."""
    env = os.environ.get("TORCH_ENV")
    if env is None:
        pytest.skip("not run by a tox env of the matrix (TORCH_ENV unset)")
    match = re.fullmatch(r"torch(\d)(\d+)(cpu)?", env)
    assert match, f"TORCH_ENV={env!r} does not name a torch release"
    major, minor, cpu = match.groups()
    assert torch.__version__.startswith(f"{major}.{minor}."), (env, torch.__version__)
    # torchNN is PyPI's build: the CUDA build on Linux only (on macOS and Windows PyPI serves the CPU build).
    cuda_build = cpu is None and sys.platform.startswith("linux")
    assert torch.backends.cuda.is_built() is cuda_build, (env, torch.__version__, sys.platform)


# -- the device area on this release ------------------------------------------------
def test_device_and_cuda_areas_apply_in_full(patched):
    areas = patched["areas"]
    assert areas["device"]["state"] == "applied" and areas["cuda"]["state"] == "applied"
    # Every record of the two areas names something this torch has: a target
    # silently missing here would mean a CUDA path left unpatched.
    # torch._C._cuda_getDeviceCount exists on CUDA builds only; torchdevice never
    # creates it (torch reads its presence as "built with CUDA").
    cuda_only = set() if torch.backends.cuda.is_built() else {"torch._C._cuda_getDeviceCount"}
    assert areas["device"]["skipped"] == []
    # Other records skipped are APIs of newer releases that this torch really lacks.
    skipped = {s["target"]: s["reason"] for s in areas["cuda"]["skipped"]}
    assert cuda_only <= set(skipped)
    for target, reason in skipped.items():
        assert "does not exist in this torch" in reason, (target, reason)
        assert not torch_features.has(target), target
    for target in ("torch.device", "torch.Generator", "torch.Tensor.to", "torch.Tensor.cuda", "torch.load",
                   "torch.UntypedStorage.cuda", "torch.set_default_device", "torch.cuda.FloatTensor"):
        assert target in areas["device"]["applied"], target
    for target in ("torch.cuda.is_available", "torch.cuda.is_initialized", "torch.cuda._lazy_init"):
        assert target in areas["cuda"]["applied"], target


# name -> call making a tensor on the device given. All of these take a keyword
# ``device`` in every supported release; the device area must find each one.
FACTORIES = {
    ("torch", "zeros"): lambda d: torch.zeros(2, device=d),
    ("torch", "ones"): lambda d: torch.ones(2, device=d),
    ("torch", "empty"): lambda d: torch.empty(2, device=d),
    ("torch", "full"): lambda d: torch.full((2,), 7.0, device=d),
    ("torch", "rand"): lambda d: torch.rand(2, device=d),
    ("torch", "randn"): lambda d: torch.randn(2, device=d),
    ("torch", "randint"): lambda d: torch.randint(5, (2,), device=d),
    ("torch", "randperm"): lambda d: torch.randperm(4, device=d),
    ("torch", "arange"): lambda d: torch.arange(3, device=d),
    ("torch", "linspace"): lambda d: torch.linspace(0, 1, 3, device=d),
    ("torch", "logspace"): lambda d: torch.logspace(0, 1, 3, device=d),
    ("torch", "eye"): lambda d: torch.eye(2, device=d),
    ("torch", "tensor"): lambda d: torch.tensor([1.0], device=d),
    ("torch", "as_tensor"): lambda d: torch.as_tensor([1.0], device=d),
    ("torch", "asarray"): lambda d: torch.asarray([1.0], device=d),
    ("torch", "scalar_tensor"): lambda d: torch.scalar_tensor(1.0, device=d),
    ("torch", "zeros_like"): lambda d: torch.zeros_like(torch.ones(2), device=d),
    ("torch", "ones_like"): lambda d: torch.ones_like(torch.ones(2), device=d),
    ("torch", "empty_like"): lambda d: torch.empty_like(torch.ones(2), device=d),
    ("torch", "full_like"): lambda d: torch.full_like(torch.ones(2), 3.0, device=d),
    ("torch", "rand_like"): lambda d: torch.rand_like(torch.ones(2), device=d),
    ("torch", "randn_like"): lambda d: torch.randn_like(torch.ones(2), device=d),
    ("torch", "randint_like"): lambda d: torch.randint_like(torch.ones(2), 5, device=d),
    ("torch", "empty_strided"): lambda d: torch.empty_strided((2, 2), (2, 1), device=d),
    ("torch", "empty_permuted"): lambda d: torch.empty_permuted((2, 3), (1, 0), device=d),
    ("torch", "tril_indices"): lambda d: torch.tril_indices(3, 3, device=d),
    ("torch", "triu_indices"): lambda d: torch.triu_indices(3, 3, device=d),
    ("torch", "hann_window"): lambda d: torch.hann_window(4, device=d),
    ("torch", "hamming_window"): lambda d: torch.hamming_window(4, device=d),
    ("torch", "kaiser_window"): lambda d: torch.kaiser_window(4, device=d),
    ("torch", "sparse_coo_tensor"): lambda d: torch.sparse_coo_tensor([[0]], [1.0], (2,), device=d),
    ("torch", "sparse_csr_tensor"): lambda d: torch.sparse_csr_tensor([0, 1], [0], [1.0], (1, 1), device=d),
    ("torch.fft", "fftfreq"): lambda d: torch.fft.fftfreq(4, device=d),
    ("torch.fft", "rfftfreq"): lambda d: torch.fft.rfftfreq(4, device=d),
    ("torch.nested", "nested_tensor"): lambda d: torch.nested.nested_tensor([torch.ones(2)], device=d),
    ("torch.Tensor", "new_zeros"): lambda d: torch.ones(1).new_zeros(2, device=d),
    ("torch.Tensor", "new_ones"): lambda d: torch.ones(1).new_ones(2, device=d),
    ("torch.Tensor", "new_empty"): lambda d: torch.ones(1).new_empty(2, device=d),
    ("torch.Tensor", "new_full"): lambda d: torch.ones(1).new_full((2,), 3.0, device=d),
    ("torch.Tensor", "new_tensor"): lambda d: torch.ones(1).new_tensor([1.0], device=d),
}


def test_factory_discovery_finds_every_known_factory():
    found = {(owner, name) for owner, name, _ in redirect.device_functions()}
    assert sorted(set(FACTORIES) - found) == []


@pytest.mark.parametrize("factory", sorted(FACTORIES), ids=".".join)
def test_factory_lands_on_target(patched, factory):
    make = FACTORIES[factory]
    for spec in ("cuda", "cuda:0", torch.device("cuda", 0), 0):
        assert make(spec).device == CPU, spec
    assert make("cpu").device == CPU and make(None).device == CPU


def test_pin_memory_keyword_is_dropped(patched):
    made = torch.empty(3, device="cuda", pin_memory=True)
    assert made.device == CPU and not made.is_pinned()
    assert torch.ones(2, pin_memory=True).is_pinned() is False


def test_tensor_to_forms(patched):
    x = torch.arange(4.0)
    assert x.to("cuda").device == CPU
    moved = x.to("cuda:0", torch.float64, non_blocking=True, copy=True)
    assert (moved.device, moved.dtype) == (CPU, torch.float64) and moved.data_ptr() != x.data_ptr()
    assert x.to(device=torch.device("cuda"), dtype=torch.int32).dtype == torch.int32
    assert x.to(torch.zeros(1, dtype=torch.int64)).dtype == torch.int64
    assert x.to(torch.float16).dtype == torch.float16
    assert x.to(memory_format=torch.contiguous_format) is x
    assert torch.equal(x.cuda(), x) and x.cuda(0).device == CPU and x.cuda(non_blocking=True).device == CPU
    with pytest.raises(RuntimeError, match="Invalid device, must be cuda device"):
        x.cuda("cpu")


def test_module_and_optimizer_follow_tensors(patched):
    model = torch.nn.Linear(3, 2).cuda()
    assert {p.device for p in model.parameters()} == {CPU}
    model.to("cuda:0", dtype=torch.float64)
    assert model.weight.dtype == torch.float64
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    before = model.weight.detach().clone()
    model(torch.ones(4, 3, dtype=torch.float64, device="cuda")).sum().backward()
    opt.step()
    assert not torch.equal(before, model.weight) and opt.state[model.weight]["exp_avg"].device == CPU
    empty = torch.nn.Linear(2, 2, device="meta").to_empty(device="cuda")
    assert empty.weight.device == CPU


def test_device_type_stand_in(patched):
    made = torch.device("cuda", 1)
    assert made.type == "cuda" and made.index == 1 and type(made) is torch._C.device
    assert torch.zeros(1, device=torch.device("cuda", 0)).device == CPU
    assert isinstance(CPU, torch.device) and issubclass(torch._C.device, torch.device)
    assert pickle.loads(pickle.dumps(torch.device("cuda"))) == torch._C.device("cuda")
    assert torch.device("meta").type == "meta"
    with torch.device("cuda"):
        assert torch.zeros(1).device == CPU
    assert torch.Generator("cuda").device == CPU


def test_default_device(patched):
    torch.set_default_device("cuda")
    try:
        assert torch.zeros(1).device == CPU
        if not hasattr(torch, "get_default_device"):
            pytest.skip("torch.get_default_device does not exist in this torch (added in 2.3)")
        assert torch.get_default_device() == CPU
    finally:
        torch.set_default_device(None)


def test_storages(patched):
    storage = torch.arange(3.0).untyped_storage()
    assert storage.cuda().device == CPU
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns once per process that TypedStorage is deprecated
        typed = torch.arange(3.0).storage()
    assert typed.cuda().device == CPU


@pytest.mark.parametrize("name", ["FloatTensor", "DoubleTensor", "HalfTensor", "LongTensor", "ByteTensor",
                                  "BoolTensor", "BFloat16Tensor"])
def test_legacy_tensor_types(patched, name):
    legacy = getattr(torch.cuda, name)
    made = legacy([1, 0])
    assert made.device == CPU and made.dtype == getattr(torch, name).dtype
    assert isinstance(made, legacy)
    assert torch.zeros(2).type(f"torch.cuda.{name}").dtype == made.dtype


def _cuda_checkpoint(**save_kwargs):
    """A checkpoint as a GPU machine writes it: storages tagged "cuda:1"."""
    buf = io.BytesIO()
    torch.save({"w": torch.arange(3.0)}, buf, **save_kwargs)
    cpu_tag, cuda_tag = b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:1"   # pickled location strings
    raw = buf.getvalue()
    if not zipfile.is_zipfile(io.BytesIO(raw)):
        assert raw.count(cpu_tag) == 1
        return raw.replace(cpu_tag, cuda_tag)
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                assert data.count(cpu_tag) == 1
                data = data.replace(cpu_tag, cuda_tag)
            dst.writestr(info.filename, data)
    return out.getvalue()


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_load_cuda_checkpoint(unpatched, zip_format):
    raw = _cuda_checkpoint(_use_new_zipfile_serialization=zip_format)
    with pytest.raises(RuntimeError, match="Attempting to deserialize object on a CUDA device"):
        torch.load(io.BytesIO(raw))  # what the user would get without torchdevice
    import torchdevice

    torchdevice.patch(strict=True, device="cpu")
    expected = torch.arange(3.0)
    # weights_only: its default changed to True in torch 2.6; both values must work.
    for kwargs in ({}, {"weights_only": True}, {"weights_only": False}, {"map_location": "cuda"},
                   {"map_location": {"cuda:1": "cuda:0"}}, {"map_location": torch.device("cuda", 0)},
                   {"map_location": lambda storage, location: None}):
        loaded = torch.load(io.BytesIO(raw), **kwargs)["w"]
        assert loaded.device == CPU and torch.equal(loaded, expected), kwargs


# -- torch.cuda: user code sees a GPU, torch itself sees the truth ----------------------
def _as_torch_internal(code):
    """Run ``code`` as if it were a function inside torch (caller module 'torch._probe')."""
    namespace = {"__name__": "torch._torchdevice_probe", "torch": torch}
    exec(f"def probe():\n    return {code}\n", namespace)
    return namespace["probe"]()


def test_cuda_answers_user_code_and_torch_differently(patched):
    assert torch.cuda.is_available() is True and torch.cuda.device_count() == 1
    assert torch.cuda.is_initialized() is True and torch.cuda.init() is None and torch.cuda._lazy_init() is None
    assert _as_torch_internal("torch.cuda.is_available()") is False
    assert _as_torch_internal("torch.cuda.device_count()") == 0
    assert _as_torch_internal("torch.cuda.is_initialized()") is False


def test_torch_keeps_its_own_cuda_errors(unpatched):
    """A torch function that goes for the CUDA runtime (through _lazy_init) fails
    as it would without torchdevice: "Found no NVIDIA driver" (CUDA build) or
    "Torch not compiled with CUDA enabled" (CPU build), never deeper inside."""
    with pytest.raises((RuntimeError, AssertionError)) as real:
        torch.cuda._lazy_init()
    expected = "Found no NVIDIA driver" if CUDA_BUILD else "Torch not compiled with CUDA enabled"
    assert expected in str(real.value)
    import torchdevice

    torchdevice.patch(strict=True, device="cpu")
    with pytest.raises(type(real.value)) as patched_error:
        _as_torch_internal("torch.cuda._lazy_init()")
    assert str(patched_error.value) == str(real.value)


def test_torch_defers_cuda_work_while_redirecting(patched):
    """torch queues CUDA callbacks until CUDA really initializes (never, here)."""
    ran = []
    queued = len(torch.cuda._queued_calls)
    try:
        torch.cuda._lazy_call(lambda: ran.append(True))
        assert ran == [] and len(torch.cuda._queued_calls) == queued + 1
    finally:
        del torch.cuda._queued_calls[queued:]


def test_no_python_caller_sees_truth():
    assert core_device.caller_sees_truth(depth=10_000) is True


def test_cuda_script_never_touches_the_cuda_runtime(tmp_path):
    """A CUDA training script runs on the CPU with the autoload hook, and torch's
    real CUDA state stays uninitialized (on the CUDA build, any call into the
    runtime without a driver would raise or initialize it)."""
    code = """
    import io, json, torch
    assert torch.cuda.is_available()
    device = torch.device("cuda")
    torch.manual_seed(0)
    torch.cuda.manual_seed(0)
    torch.cuda.manual_seed_all(0)
    torch.cuda.empty_cache()
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.utils.data.TensorDataset(torch.randn(16, 4), torch.randn(16, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=4, pin_memory=True)
    losses = []
    for x, y in loader:
        x, y = x.cuda(non_blocking=True), y.to(device)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(loss.item())
    torch.cuda.synchronize()
    buf = io.BytesIO(); torch.save(model.state_dict(), buf); buf.seek(0)
    model.load_state_dict(torch.load(buf, map_location="cuda:0"))
    from torchdevice.core.patch import REGISTRY
    print(json.dumps({
        "device": str(next(model.parameters()).device),
        "batches": len(losses),
        "really_initialized": REGISTRY.original("torch.cuda", "is_initialized")(),
    }))
    """
    result = run_python(code, env=clean_env(TORCHDEVICE_STRICT="1"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '{"device": "cpu", "batches": 4, "really_initialized": false}'
