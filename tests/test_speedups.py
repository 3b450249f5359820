"""The optional C accelerator (torchdevice._speedups, ops/device/redirect.py).

Calls that pass no device go from the forwarder straight to torch; every other
call runs the Python wrapper. Results must be the same with and without it
(TORCHDEVICE_PURE_PYTHON=1 / ``patch(pure_python=True)``).
"""
import gc
import inspect
import json
import pathlib
import pickle
import subprocess
import sys
import textwrap
import types
import warnings
import weakref

import pytest
import torch

import torchdevice
from conftest import clean_env, report_on, run_python

speedups = pytest.importorskip("torchdevice._speedups", reason="the C accelerator was not built here")


@pytest.fixture(params=["accelerated", "pure"])
def mode(request):
    """torchdevice active on the CPU target, with and without the accelerator."""
    torchdevice.unpatch()
    torchdevice.patch(strict=True, device="cpu", device_count=8, pure_python=request.param == "pure")
    yield request.param
    torchdevice.unpatch()


@pytest.fixture
def accelerated():
    torchdevice.unpatch()
    torchdevice.patch(strict=True, device="cpu", device_count=8, pure_python=False)
    yield
    torchdevice.unpatch()


def python_calls(fn):
    """Code objects of Python functions called while ``fn`` runs (sys.setprofile)."""
    seen = []

    def profile(frame, event, arg):
        if event == "call":
            seen.append(frame.f_code)
    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return seen


def test_installed_objects_are_forwarders_only_when_accelerated(mode):
    forwarder = mode == "accelerated"
    assert isinstance(torch.zeros, speedups.Forwarder) is forwarder
    assert isinstance(torch.Tensor.to, speedups.MethodForwarder) is forwarder
    assert isinstance(torch.Tensor.new_zeros, speedups.MethodForwarder) is forwarder
    if not forwarder:
        assert type(torch.zeros) is types.FunctionType and type(torch.Tensor.to) is types.FunctionType


def test_calls_without_device_run_no_python(accelerated):
    t = torch.ones(3)
    wrapper_codes = {torch.zeros._torchdevice_python.__code__, torch.Tensor.to._torchdevice_python.__code__,
                     torch.ones._torchdevice_python.__code__}
    for call in (lambda: torch.zeros(16), lambda: torch.ones(16, dtype=torch.float64),
                 lambda: t.to(torch.float64), lambda: t.to(), lambda: t.to(torch.float16, copy=True),
                 lambda: torch.zeros(2, 3, out=None, dtype=torch.int64), lambda: t.new_zeros(2)):
        assert not wrapper_codes & set(python_calls(call)), "the Python wrapper ran"



def test_a_device_spec_the_cache_has_not_seen_goes_through_the_wrapper(accelerated):
    # The first call with a spec runs the Python wrapper, whose map_device stores the answer;
    # later calls with that spec reuse it from C (the wrapper's own cache hit), and land alike.
    from torchdevice.core import device as _device

    t = torch.ones(3)
    for spec, call, wrapper in (("cuda:1", lambda: torch.zeros(2, device="cuda:1"), torch.zeros),
                                ("cuda:2", lambda: t.to("cuda:2"), torch.Tensor.to),
                                ("cuda:3", lambda: t.to(device="cuda:3", non_blocking=True), torch.Tensor.to),
                                ("cuda:4", lambda: t.new_zeros(1, device="cuda:4"), torch.Tensor.new_zeros)):
        _device.DEVICE_CACHE.pop(spec, None)
        code = wrapper._torchdevice_python.__code__
        assert code in python_calls(call), spec
        assert _device.DEVICE_CACHE[spec] == torch.device("cpu")
        assert code not in python_calls(call), spec
        assert call().device == torch.device("cpu")
    # pin_memory=True on a target without pinned memory: always the wrapper, which drops it.
    assert torch.empty._torchdevice_rule == speedups.FACTORY_PIN
    assert torch.empty._torchdevice_python.__code__ in python_calls(lambda: torch.empty(2, pin_memory=True))
    assert not torch.empty(2, pin_memory=True, device="cuda").is_pinned()


def _describe(value):
    if isinstance(value, torch.Tensor):
        return ("tensor", str(value.device), str(value.dtype), value.tolist(), value.is_pinned())
    return ("value", repr(value))


def _factory_forms():
    return [
        lambda: torch.zeros(2, 3),
        lambda: torch.zeros((2, 3), dtype=torch.float64),
        lambda: torch.zeros(2, device="cuda"),
        lambda: torch.zeros(2, device="cuda:0", dtype=torch.float16),
        lambda: torch.zeros(2, device=torch.device("cuda")),
        lambda: torch.zeros(2, device=None),
        lambda: torch.zeros(2, device="cpu"),
        lambda: torch.ones(2, **{"dev" + "ice": "cuda"}),  # a keyword name built at run time
        lambda: torch.empty(2, pin_memory=True).fill_(1),
        lambda: torch.empty(2, pin_memory=True, device="cuda").fill_(1),
        lambda: torch.full((2,), 7.0, device="cuda"),
        lambda: torch.arange(4, device="cuda"),
        lambda: torch.tensor([1, 2], device="cuda"),
        lambda: torch.randn(2, generator=torch.Generator().manual_seed(0)),
        lambda: torch.ones(2).new_zeros(3),
        lambda: torch.ones(2).new_ones(3, device="cuda"),
        lambda: torch.ones(2).new_tensor([5.0], device="cuda"),
        lambda: torch.fft.fftfreq(4, device="cuda"),
    ]


def _to_forms():
    t = torch.arange(3, dtype=torch.float32)
    other = torch.zeros(1, dtype=torch.float64)
    return [
        lambda: t.to(torch.float64),
        lambda: t.to(),
        lambda: t.to(dtype=torch.int32),
        lambda: t.to(torch.float16, copy=True),
        lambda: t.to(torch.float16, non_blocking=True),
        lambda: t.to("cuda"),
        lambda: t.to("cuda", torch.float64),
        lambda: t.to(torch.device("cuda", 0), non_blocking=True),
        lambda: t.to(device="cuda", dtype=torch.float16),
        lambda: t.to(device=None),
        lambda: t.to(other),
        lambda: t.to(0),
        lambda: t.to("cpu"),
        lambda: torch.Tensor.to(t, torch.float64),
        lambda: torch.Tensor.to(t, "cuda"),
    ]


def _run_forms(forms):
    out = []
    for form in forms:
        try:
            out.append(_describe(form()))
        except Exception as exc:  # the same error either way
            out.append(("error", type(exc).__name__, str(exc)))
    return out


def test_every_call_form_gives_the_same_result_with_and_without_the_accelerator(unpatched):
    results = {}
    for pure in (False, True):
        torchdevice.unpatch()
        torchdevice.patch(strict=True, device="cpu", device_count=8, pure_python=pure)
        assert isinstance(torch.zeros, speedups.Forwarder) is not pure
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results[pure] = _run_forms(_factory_forms()) + _run_forms(_to_forms())
    assert results[False] == results[True]
    devices = {row[1] for row in results[False] if row[0] == "tensor"}
    assert devices == {"cpu"}, "every CUDA request landed on the target"


def test_pure_python_variable_is_read_at_activation():
    code = """
    import json, types, torch, torchdevice
    torchdevice.patch(strict=True, device="cpu", device_count=8)
    print(json.dumps({"zeros": type(torch.zeros).__name__, "to": type(torch.Tensor.to).__name__,
                      "lands": str(torch.zeros(1, device="cuda").device)}))
    """
    pure = run_python(code, env=clean_env(TORCHDEVICE_DISABLE="1", TORCHDEVICE_PURE_PYTHON="1"))
    fast = run_python(code, env=clean_env(TORCHDEVICE_DISABLE="1"))
    assert pure.returncode == 0 and fast.returncode == 0, pure.stderr + fast.stderr
    assert json.loads(pure.stdout) == {"zeros": "function", "to": "function", "lands": "cpu"}
    assert json.loads(fast.stdout) == {"zeros": "Forwarder", "to": "MethodForwarder", "lands": "cpu"}


@pytest.fixture
def reporting(tmp_path):
    """The report on, with the accelerator; yields a function returning the rows of this file."""
    with report_on(tmp_path / "r.json", pure_python=False) as report:
        yield lambda: sorted((r["api"], r["line"], r["asked"], r["count"]) for r in report.snapshot()["calls"]
                             if r["file"] == __file__)


@pytest.mark.skipif(not speedups.COUNTS_SITES, reason="counting report sites in C needs Python >= 3.11")
def test_report_counts_a_known_site_in_c(reporting):
    assert isinstance(torch.zeros, speedups.Forwarder) and isinstance(torch.Tensor.to, speedups.MethodForwarder)
    assert torch.zeros._torchdevice_recorder.name == "torch.zeros"  # built by the recording variant
    t = torch.ones(2)
    wrappers = {torch.zeros._torchdevice_python.__code__, torch.Tensor.to._torchdevice_python.__code__}
    ran = []
    for _ in range(4):
        # The first pass runs the recording wrappers (they count and fill the report's fast
        # table); from the second on, the forwarders count these sites without them.
        ran.append(bool(wrappers & set(python_calls(lambda: (torch.zeros(2, device="cuda"), t.to("cuda"))))))
    assert ran == [True, False, False, False]
    line = inspect.currentframe().f_lineno - 2
    assert reporting() == [("Tensor.to", line, "cuda", 4), ("torch.zeros", line, "cuda", 4)]


def test_report_counts_match_with_and_without_the_accelerator(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent("""
        import torch
        x = torch.ones(3)
        dev = torch.device("cuda")
        def helper(n):
            return torch.empty(n, device=dev)
        for i in range(6):
            torch.zeros(2, device="cuda"); torch.zeros(2, device="cuda:0")
            x.to("cuda"), x.to(device=dev), x.to(f"cuda:{i % 2}"), x.to(torch.float16), x.to("cpu")
            x.new_zeros(2, device="cuda"), helper(i), torch.ones(1, device=i % 2)
        print("ok")
    """))
    rows = {}
    for pure in ("0", "1"):
        out = tmp_path / f"report{pure}.json"
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path,
                              env=clean_env(TORCHDEVICE_REPORT=str(out), TORCHDEVICE_PURE_PYTHON=pure, TORCHDEVICE_DEVICE_COUNT="2"))
        assert done.returncode == 0 and done.stdout == "ok\n", done.stderr
        rows[pure] = sorted((r["api"], r["line"], r["asked"], r["count"], r.get("via")) for r in
                            json.loads(out.read_text())["calls"])
    assert rows["0"] == rows["1"]
    assert ("Tensor.to", 9, "cuda:1", 3, None) in rows["0"] and ("torch.empty", 6, "cuda", 6, None) in rows["0"]


def test_forwarders_look_like_the_functions_they_replace(accelerated):
    from torchdevice.core.patch import REGISTRY

    zeros, to = torch.zeros, torch.Tensor.to
    assert zeros.__name__ == "zeros" and zeros.__module__ == "torch"
    assert zeros.__wrapped__ is REGISTRY.original("torch", "zeros")
    assert to.__name__ == "to" and to.__wrapped__ is REGISTRY.original("torch.Tensor", "to")
    assert zeros.__doc__ == torch._C._VariableFunctions.zeros.__doc__
    for fn in (zeros, to, torch.Tensor.new_zeros, torch.fft.fftfreq, torch.nested.nested_tensor):
        assert pickle.loads(pickle.dumps(fn)) is fn
    # inspect.signature answers as for the Python wrapper: the original's signature.
    nested = torch.nested.nested_tensor
    assert isinstance(nested, speedups.Forwarder)
    assert inspect.signature(nested) == inspect.signature(nested.__wrapped__)
    assert "device" in inspect.signature(nested).parameters
    # Methods bind like functions; module functions do not bind (as torch's builtins).
    t = torch.ones(2)
    assert t.to.__self__ is t and t.to(torch.float64).dtype == torch.float64
    assert torch.Tensor.to is torch.Tensor.__dict__["to"]

    class Holder:
        make = torch.zeros
    assert Holder().make(2).shape == (2,)


def test_unpatch_restores_the_identical_originals(unpatched):
    before = (torch.zeros, torch.ones, torch.Tensor.to, vars(torch.Tensor).get("to"), torch.Tensor.new_zeros)
    torchdevice.patch(strict=True, device="cpu", device_count=8)
    assert isinstance(torch.zeros, speedups.Forwarder)
    torchdevice.unpatch()
    after = (torch.zeros, torch.ones, torch.Tensor.to, vars(torch.Tensor).get("to"), torch.Tensor.new_zeros)
    assert all(a is b for a, b in zip(before, after))


def test_forwarders_are_garbage_collected(unpatched):
    def wrapper(*args, **kwargs):
        return "wrapper"

    fw = speedups.Forwarder(torch.zeros, wrapper, speedups.FACTORY, torch.dtype)
    wrapper.cycle = fw  # a reference cycle through the forwarder
    fw.self_ref = fw
    ref = weakref.ref(fw)
    assert fw(2).shape == (2,) and fw(2, device="cpu") == "wrapper"
    del fw, wrapper
    gc.collect()
    assert ref() is None


def test_rules(unpatched):
    calls = []

    def wrapper(*args, **kwargs):
        calls.append((args, kwargs))
        return "wrapper"

    def original(*args, **kwargs):
        return ("original", args, kwargs)

    cache = {"cuda": "MAPPED", 0: "MAPPED0"}
    pin = speedups.Forwarder(original, wrapper, speedups.FACTORY_PIN, torch.dtype, None, cache)
    assert pin(1, dtype=None) == ("original", (1,), {"dtype": None})
    assert pin(1, pin_memory=False) == pin(1, device="cuda", pin_memory=True) == "wrapper"
    plain = speedups.Forwarder(original, wrapper, speedups.FACTORY, torch.dtype, None, cache)
    assert plain(1, pin_memory=True) == ("original", (1,), {"pin_memory": True})
    assert plain(1, device=None) == ("original", (1,), {"device": None})
    assert plain(1, dtype=2, device="cuda") == ("original", (1,), {"dtype": 2, "device": "MAPPED"})
    assert plain(1, **{"dev" + "ice": "cuda"}) == ("original", (1,), {"device": "MAPPED"})
    assert plain(1, device="cuda:5") == plain(1, device=[]) == "wrapper"  # a miss; unhashable
    assert plain(*range(13), device="cuda") == "wrapper"  # more than SMALL_CALL arguments
    to = speedups.MethodForwarder(original, wrapper, speedups.TENSOR_TO, torch.dtype, None, cache)
    assert to("t") == ("original", ("t",), {})
    assert to("t", torch.half, False) == ("original", ("t", torch.half, False), {})
    assert to("t", dtype=torch.half) == ("original", ("t",), {"dtype": torch.half})
    assert to("t", "cuda", non_blocking=True) == ("original", ("t", "MAPPED"), {"non_blocking": True})
    assert to("t", 0, torch.half) == ("original", ("t", "MAPPED0", torch.half), {})
    assert to("t", device="cuda", copy=True) == ("original", ("t",), {"device": "MAPPED", "copy": True})
    assert to("t", device=None) == ("original", ("t",), {"device": None})
    calls.clear()
    assert [to("t", "cuda:5"), to("t", "cuda", device="cuda"), to("t", {}), to()] == ["wrapper"] * 4
    assert calls[1] == (("t", "cuda"), {"device": "cuda"})
    no_cache = speedups.Forwarder(original, wrapper, speedups.FACTORY, torch.dtype)
    assert no_cache(1, device="cuda") == "wrapper" and no_cache(1) == ("original", (1,), {})
    with pytest.raises(ValueError, match="unknown rule"):
        speedups.Forwarder(len, wrapper, 7, torch.dtype)
    with pytest.raises(TypeError, match="cache must be a dict"):
        speedups.Forwarder(len, wrapper, speedups.FACTORY, torch.dtype, None, [])


DYNAMO = """
import json, sys, torch
if sys.argv[1] == "dynamo-first":
    import torch._dynamo
import torchdevice
torchdevice.patch(strict=True, device="cpu", device_count=8)
import torch._dynamo
from torch._dynamo.utils import counters
from torchdevice import _speedups

def factory_cuda(x): return x + torch.zeros(2, device="cuda")
def factory_plain(x): return x + torch.zeros(2) + torch.ones(2, dtype=torch.float64)
def to_dtype(x): return x.to(torch.float16) * 2
def to_cuda(x): return x.to("cuda") + x.new_zeros(2, device="cuda")
def unbound(x): return torch.Tensor.to(x, "cuda") + torch.fft.fftfreq(2, device="cuda")
out = {"forwarder": isinstance(torch.zeros, _speedups.Forwarder)}
# torch.Tensor.to called unbound: traced through the forwarder only where dynamo asks
# is_callable_allowed (torch >= 2.3); the pure-Python wrappers do not trace that form on any
# torch (dynamo stops at the original inside the wrapper), nor does torch 2.2 with forwarders.
import torch._dynamo.trace_rules as rules
unbound_traced = out["forwarder"] and hasattr(rules, "is_callable_allowed")
out["unbound_traced"] = unbound_traced
for fn in (factory_cuda, factory_plain, to_dtype, to_cuda) + ((unbound,) if unbound_traced else ()):
    torch._dynamo.reset(); counters.clear()
    x = torch.arange(2, dtype=torch.float32)
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)(x)
    eager = fn(x)
    out[fn.__name__] = [compiled.tolist(), str(compiled.dtype), str(compiled.device), eager.tolist(),
                        str(eager.dtype), sum(counters["graph_break"].values())]
print(json.dumps(out))
"""


_DYNAMO_FIXES_ALLOWED_AT_IMPORT = pytest.mark.skipif(
    (pathlib.Path(torch.__file__).parent / "_dynamo" / "allowed_functions.py").exists(),
    reason="this torch's dynamo fixes which objects are torch's when torch._dynamo is imported: "
           "torchdevice.patch() must come first there (tests/test_compile.py)")


@pytest.mark.parametrize("pure,order", [("0", "patch-first"),
                                        pytest.param("0", "dynamo-first", marks=_DYNAMO_FIXES_ALLOWED_AT_IMPORT),
                                        ("1", "patch-first")])
def test_dynamo_fullgraph_through_forwarders(pure, order):
    result = run_python(DYNAMO, env=clean_env(TORCHDEVICE_DISABLE="1", TORCHDEVICE_PURE_PYTHON=pure), args=(order,))
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert out.pop("forwarder") is (pure == "0")
    unbound_traced = out.pop("unbound_traced")
    expected = {
        "factory_cuda": [[0.0, 1.0], "torch.float32", "cpu", [0.0, 1.0], "torch.float32", 0],
        "factory_plain": [[1.0, 2.0], "torch.float64", "cpu", [1.0, 2.0], "torch.float64", 0],
        "to_dtype": [[0.0, 2.0], "torch.float16", "cpu", [0.0, 2.0], "torch.float16", 0],
        "to_cuda": [[0.0, 1.0], "torch.float32", "cpu", [0.0, 1.0], "torch.float32", 0],
        "unbound": [[0.0, 0.5], "torch.float32", "cpu", [0.0, 0.5], "torch.float32", 0],
    }
    if not unbound_traced:
        import importlib

        assert pure == "1" or not hasattr(importlib.import_module("torch._dynamo.trace_rules"), "is_callable_allowed")
        del expected["unbound"]
    assert out == expected


def test_torchscript_compiles_forwarders_as_their_aten_ops(accelerated):
    import torch.jit._builtins as builtins

    def make(x):
        return x + torch.zeros(2, device="cuda") + torch.ones(2).to(torch.float64)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(make)
    assert builtins._get_builtin_table().get(id(torch.zeros)) == "aten::zeros"
    assert torch.equal(scripted(torch.ones(2)), torch.full((2,), 2.0, dtype=torch.float64))
    assert 'device("cuda' not in scripted.code


@pytest.mark.venv
@pytest.mark.parametrize("kind", ["wheel_python", "editable_python"])
def test_pip_installs_build_the_accelerator(kind, request):
    # This machine compiles the extension (the import at the top of this file succeeded), so
    # both a wheel install and an editable install must carry a working one.
    python = request.getfixturevalue(kind)
    code = """
    import json, torch, torchdevice
    from torchdevice import _speedups
    torchdevice.patch(strict=True, device="cpu", device_count=8)
    print(json.dumps({"zeros": type(torch.zeros).__name__, "lands": str(torch.zeros(1, device="cuda").device),
                      "file": _speedups.__file__}))
    """
    result = run_python(code, python=str(python), env=clean_env(TORCHDEVICE_DISABLE="1"))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["zeros"] == "Forwarder" and out["lands"] == "cpu"
    assert ("site-packages" in out["file"]) is (kind == "wheel_python")
