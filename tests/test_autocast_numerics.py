"""CUDA's autocast numerics on the target, checked op by op against torch's own CUDA autocast.

The oracle: torch's CUDA autocast kernels, run in a separate interpreter on
FakeTensors that sit on device "cuda" (CPU-only builds register those kernels
too; nothing is computed). The ops and their arguments: every entry of torch's
own autocast test lists (``torch/testing/_internal/autocast_test_lists.py``,
the lists torch's CUDA autocast tests use), for float16 and bfloat16. The same
calls run on the target under ``torch.autocast("cuda")`` with torchdevice
active, and must give the oracle's dtype (or its error).
"""
import json
import sys
import warnings
from pathlib import Path

import pytest
import torch

import torchdevice
from conftest import clean_env, run_python
from torchdevice.ops import autocast_numerics as numerics

LISTS = Path(torch.__file__).parent / "testing" / "_internal" / "autocast_test_lists.py"
LIST_NAMES = ("torch_expect_builtin_promote", "methods_expect_builtin_promote", "torch_fp16", "torch_fp32",
              "torch_need_autocast_promote", "nn_fp16", "nn_fp32", "linalg_fp16", "methods_fp16", "methods_fp32",
              "banned")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}

# Loads torch's test lists without torch's test framework (it needs expecttest):
# the module only reads TEST_WITH_ROCM and TestCase from it.
LOADER = r'''
import sys, types
import torch
stub = types.ModuleType("torch.testing._internal.common_utils")
stub.TEST_WITH_ROCM = False
stub.TestCase = object
sys.modules["torch.testing._internal.common_utils"] = stub
namespace = {}
exec(compile(open(sys.argv[1]).read(), sys.argv[1], "exec"), namespace)
LIST_NAMES = %r


def entries(dev):
    lists = namespace["AutocastTestLists"](dev)
    for list_name in LIST_NAMES:
        for index, entry in enumerate(getattr(lists, list_name, [])):
            yield list_name, index, entry


def call(list_name, entry):
    op, args = entry[0], entry[1]
    kwargs = entry[2] if len(entry) > 2 and isinstance(entry[2], dict) else {}
    if list_name == "banned":
        return getattr(entry[2], op)(*args)
    if list_name.startswith("methods"):
        return getattr(args[0], op)(*args[1:], **kwargs)
    if list_name.startswith("nn"):
        return getattr(torch._C._nn, op)(*args, **kwargs)
    if list_name.startswith("linalg"):
        return getattr(torch._C._linalg, op)(*args, **kwargs)
    return getattr(torch, op)(*args, **kwargs)


def outcome(fn, raise_=False):
    try:
        out = fn()
    except Exception as exc:
        if raise_:
            raise
        return "error: " + type(exc).__name__
    while isinstance(out, (tuple, list)):
        out = out[0]
    return str(out.dtype) if isinstance(out, torch.Tensor) else type(out).__name__
''' % (LIST_NAMES,)

ORACLE = LOADER + r'''
import json
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
if hasattr(torch.cuda, "_lazy_init"):
    torch.cuda._lazy_init = lambda: None  # this child only: fake "cuda" tensors need no driver
mode = FakeTensorMode(allow_non_fake_inputs=False)


def fake(value):
    if isinstance(value, torch.Tensor):
        return FakeTensor(mode, value.to("meta"), torch.device("cuda", 0))
    if isinstance(value, (tuple, list)):
        return type(value)(fake(v) for v in value)
    return value


def set_cuda(dtype):
    if hasattr(torch, "get_autocast_dtype"):
        torch.set_autocast_enabled("cuda", dtype is not None)
        if dtype is not None:
            torch.set_autocast_dtype("cuda", dtype)
    else:
        torch.set_autocast_enabled(dtype is not None)
        if dtype is not None:
            torch.set_autocast_gpu_dtype(dtype)


result = {}
for dtype_name in ("float16", "bfloat16"):
    for list_name, index, entry in entries("cpu"):
        faked = (entry[0], fake(entry[1])) + tuple(entry[2:])
        with mode:
            set_cuda(getattr(torch, dtype_name))
            try:
                try:
                    value = outcome(lambda: call(list_name, faked), raise_=True)
                except (NotImplementedError, torch._subclasses.fake_tensor.DataDependentOutputException) as exc:
                    value = "unknown: FakeTensor cannot run it: " + type(exc).__name__
                except RuntimeError as exc:
                    # FakeTensor fell back to a real CUDA call (no meta kernel, a cuDNN check):
                    # this build has no CUDA device to run it on.
                    cannot = any(text in str(exc) for text in ("not linked with support for cuda", "NVIDIA driver",
                                                                "CUDA driver", "CUDA error"))
                    value = ("unknown: FakeTensor ran a real CUDA kernel" if cannot
                             else "error: " + type(exc).__name__)
                except Exception as exc:
                    value = "error: " + type(exc).__name__
                result[f"{dtype_name}/{list_name}/{index}"] = value
            finally:
                set_cuda(None)
print(json.dumps(result))
'''


@pytest.fixture(scope="module")
def oracle():
    done = run_python(ORACLE, env=clean_env(TORCHDEVICE_DISABLE="1"), args=[str(LISTS)], timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _load():
    saved = sys.argv
    sys.argv = ["loader", str(LISTS)]
    try:
        namespace = {}
        exec(compile(LOADER, "autocast_lists_loader", "exec"), namespace)
    finally:
        sys.argv = saved
    return namespace


@pytest.fixture(scope="module")
def target_outcomes():
    """Every list entry run on the target under autocast("cuda") with torchdevice (keep: the requested dtype)."""
    loader = _load()
    torchdevice.unpatch()
    torchdevice.patch(strict=True, device="cpu", precision="keep")
    try:
        result = {}
        for dtype_name, dtype in DTYPES.items():
            for list_name, index, entry in loader["entries"]("cuda"):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    with torch.autocast("cuda", dtype=dtype):
                        result[f"{dtype_name}/{list_name}/{index}"] = loader["outcome"](
                            lambda: loader["call"](list_name, entry))
        table = numerics.table("cpu")
    finally:
        torchdevice.unpatch()
    return result, table, loader


def _op_names(loader):
    names = {}
    for list_name, index, entry in loader["entries"]("cpu"):
        names[f"{list_name}/{index}"] = entry[0]
    return names


def _known_gap(table, op):
    """Where this torch cannot fall through from a Python kernel (2.2), ops CUDA leaves to their parts keep the
    target's policy: the table says which ones."""
    if numerics.CAN_FALL_THROUGH:
        return False
    prefix = "aten::" + op.strip("_") if op.startswith("__") else "aten::" + op
    return any(name == prefix or name.startswith(prefix + ".") for name, entry in table["ops"].items()
               if any(pair[0] == "none" and pair[1] != "none" for pair in entry.values()))


def test_every_list_entry_gets_cudas_dtype(oracle, target_outcomes):
    result, table, loader = target_outcomes
    assert set(result) == set(oracle), "the matrix covers every entry of torch's lists, for both dtypes"
    names = _op_names(loader)
    wrong = {}
    untold = [key for key, expected in oracle.items() if expected.startswith("unknown")]
    assert len(untold) <= len(oracle) * 0.15, f"the oracle tells the dtype of almost every entry: {untold}"
    for key, expected in oracle.items():
        dtype_name, rest = key.split("/", 1)
        if key in untold:
            continue
        if result[key] != expected and not _known_gap(table, names[rest]):
            wrong[key + " " + names[rest]] = (result[key], expected)
    assert not wrong, f"target vs CUDA autocast: {wrong}"
    assert len(oracle) >= 2 * 90, "torch's lists hold ~100 entries"


def test_oracle_is_not_the_cpu_autocast(oracle):
    """The issue's examples: CPU autocast itself gives float16 where CUDA gives float32, so the matrix can fail."""
    loader = _load()
    native = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for list_name, index, entry in loader["entries"]("cpu"):
            if entry[0] in ("exp", "softmax", "sum", "layer_norm", "cumsum") and list_name == "torch_fp32":
                with torch.autocast("cpu", dtype=torch.float16):
                    native[entry[0]] = (loader["outcome"](lambda: loader["call"](list_name, entry)),
                                        oracle[f"float16/{list_name}/{index}"])
    assert len(native) == 5 and all(cpu != cuda == "torch.float32" for cpu, cuda in native.values()), native


def test_exp_of_float16_twenty_is_finite_as_on_a_gpu(unpatched):
    torchdevice.patch(strict=True, device="cpu", precision="keep")
    h = torch.full((3,), 20.0, dtype=torch.float16, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        out = torch.exp(h)
    assert out.dtype == torch.float32 and torch.allclose(out, torch.full((3,), 4.85165195e8), rtol=1e-3)
    with torch.autocast("cpu", dtype=torch.float16):  # explicit CPU regions keep the CPU's numerics
        assert torch.isinf(torch.exp(h)).all()


def test_table_covers_every_registered_op():
    """Meta: every op with a CUDA or CPU autocast kernel is in the table, classified."""
    table = numerics.table("cpu")
    registered = set(numerics.registered_ops("cuda")) | set(numerics.registered_ops("cpu"))
    with_handle = {name for name in registered if numerics.overload(name) is not None}
    assert set(table["ops"]) == with_handle
    unknown = sorted(name for name, entry in table["ops"].items() for pair in entry.values() if "unknown" in pair)
    # Only named-tensor overloads (a dimension name the probe cannot give) and CUDA-only RNN
    # internals stay unclassified; they keep the target's kernel.
    assert all("name" in name.lower() or "cudnn" in name for name in unknown), unknown
    for name in ("aten::exp", "aten::softmax.int", "aten::layer_norm", "aten::sum", "aten::cumsum"):
        assert table["ops"][name]["float16"][0] in ("fp32", "fp32_opt_dtype"), name
    assert table["ops"]["aten::mm"]["bfloat16"] == ["lower", "lower"]
    assert "unsafe to autocast" in table["banned"]["aten::binary_cross_entropy"]


def test_kernels_are_registered_only_while_patched_and_only_where_policies_differ(unpatched):
    def autocast_kernel(name):
        return [line for line in torch._C._dispatch_dump(name).splitlines() if line.startswith("AutocastCPU:")]

    table = numerics.table("cpu")
    names = numerics.differing(table)
    assert "aten::exp" in names and "aten::mm" not in names and "aten::linear" not in names
    before = {name: autocast_kernel(name) for name in names + ["aten::mm", "aten::linear"]}
    torchdevice.patch(strict=True, device="cpu", precision="keep")
    assert {name: autocast_kernel(name) for name in before} == before, "nothing is registered before a region"
    with torch.autocast("cuda"):
        pass
    changed = [name for name in names if autocast_kernel(name) != before[name]]
    assert changed == names, "every op whose policies differ gets a kernel"
    assert autocast_kernel("aten::mm") == before["aten::mm"], "ops whose policies agree keep torch's C++ kernel"
    torchdevice.unpatch()
    assert {name: autocast_kernel(name) for name in before} == before, "unpatch() removes every kernel"


def test_explicit_cpu_regions_keep_the_cpus_policy(unpatched):
    x = torch.randn(8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        native = {name: fn().dtype for name, fn in _cpu_cases(x).items()}
    torchdevice.patch(strict=True, device="cpu", precision="keep")
    with torch.autocast("cuda"):
        pass  # kernels registered
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = {name: fn().dtype for name, fn in _cpu_cases(x).items()}
    assert ours == native


def _cpu_cases(x):
    return {"exp": lambda: torch.exp(x.bfloat16()), "fft": lambda: torch.fft.fft(x), "mm": lambda: x @ x,
            "cat": lambda: torch.cat([x.bfloat16(), x]), "softmax": lambda: torch.softmax(x.bfloat16(), -1),
            "cross_entropy": lambda: torch.nn.functional.cross_entropy(x.bfloat16(), torch.arange(8))}


def test_gradients_flow_through_cuda_policies(unpatched):
    torchdevice.patch(strict=True, device="cpu", precision="keep")
    w = torch.randn(8, 8, device="cuda", requires_grad=True)
    x = torch.randn(4, 8, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = torch.nn.functional.layer_norm(x @ w, (8,))
        loss = torch.nn.functional.cross_entropy(torch.softmax(y, -1), torch.arange(4)) + torch.exp(y).sum() * 0
    assert y.dtype == torch.float32 and loss.dtype == torch.float32
    loss.backward()
    assert w.grad is not None and w.grad.dtype == torch.float32 and torch.isfinite(w.grad).all()


def test_probe_reads_policies_without_running_ops():
    assert numerics.classify(torch.ops.aten.mm.default, "cuda", torch.float16) == ("lower", None)
    assert numerics.classify(torch.ops.aten.exp.default, "cuda", torch.bfloat16) == ("fp32", None)
    assert numerics.classify(torch.ops.aten.sum.default, "cuda", torch.float16) == ("fp32_opt_dtype", None)
    assert numerics.classify(torch.ops.aten.addcmul.default, "cuda", torch.float16) == ("promote", None)
    assert numerics.classify(torch.ops.aten.exp.default, "cpu", torch.bfloat16) == ("none", None)


def test_table_is_cached_per_torch_build(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []
    monkeypatch.setattr(numerics, "derive_in_child", lambda target: calls.append(target) or numerics.derive(target))
    first = numerics.table("cpu")
    second = numerics.table("cpu")
    assert calls == ["cpu"] and first == second
    assert list((tmp_path / "torchdevice").glob("autocast-numerics-*-cpu-*.json"))


def test_corrupt_cache_is_derived_again(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(numerics, "derive_in_child", numerics.derive)
    numerics.table("cpu")
    path, = (tmp_path / "torchdevice").glob("autocast-numerics-*-cpu-*.json")
    path.write_text(json.dumps({"ops": {"aten::exp": {"float16": ["bogus", "none"]}}, "banned": {}}))
    assert numerics.table("cpu")["ops"]["aten::exp"]["float16"][0] == "fp32"


def test_child_derivation_matches_in_process():
    assert numerics.derive_in_child("cpu") == numerics.derive("cpu")

