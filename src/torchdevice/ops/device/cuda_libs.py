"""CUDA library front-ends in torch.cuda, applied with area "cuda".

Each name gets the behaviour CUDA code needs on the target:

* ``nvtx.range_push/range_pop/range_start/range_end/mark``: profiler ranges
  through ``torch.autograd.profiler.record_function``, so they show up in
  ``torch.profiler`` traces; depths and handles are returned as NVTX does.
  ``nvtx.range`` uses them unchanged.
* ``cudart()``: a stand-in runtime: ``cudaProfilerStart/Stop`` and
  ``cudaHostRegister/Unregister`` succeed doing nothing, ``cudaMemGetInfo`` is
  the target's (free, total), ``cudaGetErrorString`` and ``cudaError`` work;
  ``check_error`` and ``CudaError`` work without a CUDA runtime.
  ``torch.cuda.profiler.start/stop`` are no-ops (no nsys/nvprof collects).
* ``jiterator``: the factories return callables that raise a clear error
  (they compile CUDA C++ with NVRTC).
* ``torch.cuda.comm`` (= ``torch.nn.parallel.comm``): broadcast, scatter,
  gather and reduce_add run on the single target: every "device" gets its own
  copy, so results equal what the GPUs would hold.
* ``nccl``: ``is_available`` is False; the single-process collectives raise a
  clear error pointing to ``torch.distributed``.
* ``tunable``: settings are kept and reported; there are no TunableOp GEMMs to
  tune on the target, so tuning entry points raise a clear error.
* ``current_blas_handle``/``current_solver_handle``/``GreenContext``: clear errors.
* ``torch.cuda.sparse.<Type>Tensor``: legacy sparse types built on the target.
"""
import functools
import itertools
import sys
import threading
from enum import IntEnum

import torch

from ...core.patch import EMULATED, NOOP, UNSUPPORTED, Patch
from . import cpu as _cpu
from . import mps as _mps
from .errors import raiser, unsupported

# cudaGetErrorString texts for the codes CUDA code commonly checks.
_ERROR_STRINGS = {0: "no error", 1: "invalid argument", 2: "out of memory", 34: "device not ready",
                  600: "device not ready", 999: "unknown error"}


def _error_string(code):
    return _ERROR_STRINGS.get(int(code), f"CUDA error {int(code)}")


class cudaError(IntEnum):
    """The cudaError codes torch code compares against."""

    success = 0
    invalid_value = 1
    memory_allocation = 2


def _cuda_error(holder):
    def make(original):
        base = original if isinstance(original, type) and issubclass(original, RuntimeError) else RuntimeError

        class CudaError(base):
            """A CUDA runtime error code turned into an exception (works without a CUDA runtime)."""

            def __init__(self, code: int) -> None:
                RuntimeError.__init__(self, f"{_error_string(code)} ({code})")
                self.code = code

        CudaError.__module__ = "torch.cuda"
        holder["CudaError"] = CudaError
        return CudaError
    return make


def _check_error(holder):
    def make(original):
        def check_error(res: int) -> None:
            if res != cudaError.success:
                raise holder["CudaError"](res)
        return functools.wraps(original)(check_error)
    return make


class _CudaRuntime:
    """What ``torch.cuda.cudart()`` returns on the target: the calls that make sense without CUDA."""

    cudaError = cudaError

    def __init__(self, target_type):
        self._target = target_type

    @staticmethod
    def cudaGetErrorString(code):
        return _error_string(code)

    @staticmethod
    def cudaProfilerStart():
        return cudaError.success  # no CUDA profiler collects on the target; torch.profiler does

    @staticmethod
    def cudaProfilerStop():
        return cudaError.success

    @staticmethod
    def cudaHostRegister(ptr, size, flags):
        return cudaError.success  # the target reads host memory directly: nothing to pin

    @staticmethod
    def cudaHostUnregister(ptr):
        return cudaError.success

    def cudaMemGetInfo(self, device):
        return _mps.memory_info() if self._target == "mps" else _cpu.memory_info()

    def cudaStreamCreate(self, *args):
        raise unsupported("torch.cuda.cudart().cudaStreamCreate", self._target, "there are no CUDA streams",
                          "Use torch.cuda.Stream(), which torchdevice provides on the target.")

    cudaStreamDestroy = cudaStreamCreate

    def __getattr__(self, name):
        raise AttributeError(f"torch.cuda.cudart().{name} is not provided on the {self._target} target "
                             "(torchdevice): the stand-in runtime has cudaProfilerStart/Stop, "
                             "cudaHostRegister/Unregister, cudaMemGetInfo, cudaGetErrorString and cudaError")

    def __repr__(self):
        return f"<torchdevice CUDA runtime stand-in for the {self._target} target>"


def _cudart(target):
    runtime = _CudaRuntime(target.type)

    def make(original):
        def cudart():
            return runtime
        return functools.wraps(original)(cudart)
    return make


def _green_context(target):
    def make(original):
        def refuse(*args, **kwargs):
            raise unsupported("torch.cuda.GreenContext", target.type,
                              "green contexts partition the SMs of an NVIDIA GPU",
                              "Run the work without a green context; the target schedules it itself.")

        class GreenContext:
            """Green contexts need an NVIDIA GPU; every entry point raises a clear error."""

            __init__ = refuse
            create = staticmethod(refuse)
            max_workqueue_concurrency = staticmethod(refuse)

        GreenContext.__module__ = "torch.cuda.green_contexts"
        return GreenContext
    return make


# -- nvtx -------------------------------------------------------------------------------
def _nvtx_functions():
    """range_push/range_pop/range_start/range_end/mark on torch's profiler ranges."""
    from torch.autograd.profiler import record_function

    local = threading.local()
    open_ranges = {}
    ids = itertools.count(1)

    def stack():
        found = getattr(local, "stack", None)
        if found is None:
            found = local.stack = []
        return found

    def range_push(msg):
        ranges = stack()
        scope = record_function(msg)
        scope.__enter__()
        ranges.append(scope)
        return len(ranges) - 1

    def range_pop():
        ranges = stack()
        if not ranges:
            return -1  # what NVTX returns for a pop without a push
        ranges.pop().__exit__(None, None, None)
        return len(ranges)

    def range_start(msg):
        scope = record_function(msg)
        scope.__enter__()
        handle = next(ids)
        open_ranges[handle] = scope
        return handle

    def range_end(range_id):
        scope = open_ranges.pop(range_id, None)
        if scope is not None:
            scope.__exit__(None, None, None)

    def mark(msg):
        with record_function(msg):
            pass

    return {"range_push": range_push, "range_pop": range_pop, "range_start": range_start,
            "range_end": range_end, "mark": mark}


# -- jiterator -----------------------------------------------------------------------------
def _jiterator(api, target):
    def make(original):
        def create(code_string, *args, **kwargs):
            def jitted(*tensors, **kw):
                raise unsupported(f"torch.cuda.jiterator.{api}", target.type,
                                  "it compiles CUDA C++ with NVRTC at run time",
                                  "Write the element-wise function with torch operations, which run on the "
                                  "target (optionally under torch.compile).")
            jitted.code_string = code_string
            return jitted
        return functools.wraps(original)(create)
    return make


# -- comm ----------------------------------------------------------------------------------
def _comm_functions(target):
    """torch.cuda.comm on one device: each listed GPU gets its own copy on the target."""
    device = target.device

    def copy(tensor):
        return tensor.to(device=device, copy=True)

    def broadcast(tensor, devices=None, *, out=None):
        if not ((devices is None) ^ (out is None)):
            raise RuntimeError(f"Exactly one of 'devices' and 'out' must be specified, "
                               f"but got devices={devices} and out={out}")
        if devices is not None:
            return tuple(copy(tensor) for _ in devices)
        for tensor_out in out:
            tensor_out.copy_(tensor)
        return tuple(out)

    def broadcast_coalesced(tensors, devices, buffer_size=10485760):
        return tuple(tuple(copy(t) for t in tensors) for _ in devices)

    def reduce_add(inputs, destination=None):
        inputs = list(inputs)
        expected = inputs[0].size()
        for i, tensor in enumerate(inputs):
            if tensor.size() != expected:
                raise ValueError(f"input {i} has invalid size: got {tensor.size()}, but expected {expected}")
        result = copy(inputs[0])
        for tensor in inputs[1:]:
            result.add_(tensor.to(device))
        return result

    def reduce_add_coalesced(inputs, destination=None, buffer_size=10485760):
        inputs = [list(per_device) for per_device in inputs]
        return tuple(reduce_add([per_device[i] for per_device in inputs]) for i in range(len(inputs[0])))

    def scatter(tensor, devices=None, chunk_sizes=None, dim=0, streams=None, *, out=None):
        if out is None:
            if devices is None:
                raise RuntimeError("Expected at least one device to scatter to")
            devices = list(devices)
            parts = (torch.split(tensor, list(chunk_sizes), dim) if chunk_sizes is not None
                     else tensor.chunk(len(devices), dim))
            return tuple(copy(part).contiguous() for part in parts)
        parts = torch.split(tensor, [t.size(dim) for t in out], dim)
        for part, tensor_out in zip(parts, out):
            tensor_out.copy_(part)
        return tuple(out)

    def gather(tensors, dim=0, destination=None, *, out=None):
        to_cpu = destination == -1 or (destination is not None and not isinstance(destination, int)
                                       and torch._C.device(destination).type == "cpu")
        where = torch._C.device("cpu") if to_cpu else device
        result = torch.cat([t.to(where) for t in tensors], dim)
        if out is not None:
            out.copy_(result)
            return out
        return result

    functions = {"broadcast": broadcast, "broadcast_coalesced": broadcast_coalesced, "reduce_add": reduce_add,
                 "reduce_add_coalesced": reduce_add_coalesced, "scatter": scatter, "gather": gather}
    return {name: _follow_live(name, function) for name, function in functions.items()}


def _follow_live(name, implementation):
    """Run ``implementation`` only while it is what torch.nn.parallel.comm holds.

    ``torch.cuda.comm`` copies these functions when it is first imported; if
    that happens while patched, it keeps them after ``unpatch()`` (the registry
    never saw that module). The copies then forward to whatever
    torch.nn.parallel.comm holds now: torch's original, or a newer patch.
    """
    module = sys.modules["torch.nn.parallel.comm"]

    def function(*args, **kwargs):
        live = module.__dict__.get(name)
        if live is not function and live is not None:
            return live(*args, **kwargs)
        return implementation(*args, **kwargs)
    function.__name__ = name
    return function


# -- tunable -------------------------------------------------------------------------------
_TUNABLE_DEFAULTS = {"enabled": False, "tuning": True, "record_untuned": False, "duration": 30,
                     "iterations": 100, "filename": "tunableop_results.csv", "rotating_buffer": 0,
                     "write_on_exit": True}
# name -> (setting, is_setter)
_TUNABLE_SETTINGS = {
    "enable": ("enabled", True), "is_enabled": ("enabled", False),
    "tuning_enable": ("tuning", True), "tuning_is_enabled": ("tuning", False),
    "record_untuned_enable": ("record_untuned", True), "record_untuned_is_enabled": ("record_untuned", False),
    "set_max_tuning_duration": ("duration", True), "get_max_tuning_duration": ("duration", False),
    "set_max_tuning_iterations": ("iterations", True), "get_max_tuning_iterations": ("iterations", False),
    "set_filename": ("filename", True), "get_filename": ("filename", False),
    "set_rotating_buffer_size": ("rotating_buffer", True), "get_rotating_buffer_size": ("rotating_buffer", False),
    "write_file_on_exit": ("write_on_exit", True),  # torch 2.4 to 2.5
}


def _tunable_records(target):
    settings = dict(_TUNABLE_DEFAULTS)

    def accessor(setting, is_setter):
        def make(original):
            if is_setter:
                def setter(value=True, *args, **kwargs):
                    settings[setting] = value
                function = setter
            else:
                def getter():
                    return settings[setting]
                function = getter
            return functools.wraps(original)(function)
        return make

    def constant(value):
        return lambda original: functools.wraps(original)(lambda *args, **kwargs: value)

    owner = "torch.cuda.tunable"
    out = [Patch(owner, name, accessor(setting, is_setter), kind=NOOP,
                 note="kept and reported; no TunableOp GEMMs on the target")
           for name, (setting, is_setter) in _TUNABLE_SETTINGS.items()]
    out += [
        Patch(owner, "get_results", constant(()), kind=NOOP, note="(): nothing tuned"),
        Patch(owner, "get_validators", constant(()), kind=NOOP, note="(): nothing tuned"),
        Patch(owner, "read_file", constant(False), kind=NOOP, note="False: results are not used on the target"),
        Patch(owner, "write_file", constant(False), kind=NOOP, note="False: no results to write on the target"),
        Patch(owner, "set_numerical_check_tolerances", constant(None), kind=NOOP),
    ]
    why = "TunableOp tunes cuBLAS/hipBLASLt GEMMs"
    instead = "Skip offline tuning on this machine; the target's matmuls need none."
    out += [Patch(owner, name, lambda original, name=name: raiser(
                f"torch.cuda.tunable.{name}", target.type, why, instead, original), kind=UNSUPPORTED,
                note="clear error")
            for name in ("tune_gemm_in_file", "mgpu_tune_gemm_in_file")]
    return out


# -- legacy sparse types ---------------------------------------------------------------------
class _SparseLegacyType(type):
    """torch.cuda.sparse.FloatTensor and friends: built on the target, checked by layout, dtype and device."""

    def __call__(cls, *args, **kwargs):
        kwargs.pop("device", None)
        made = cls._torchdevice_cpu(*args, **kwargs)
        target = cls._torchdevice_target
        return made if target.type == "cpu" else made.to(target.device)

    def __instancecheck__(cls, obj):
        return (isinstance(obj, torch.Tensor) and obj.layout == torch.sparse_coo
                and obj.dtype == cls._torchdevice_dtype and obj.device.type == cls._torchdevice_target.type)

    def __getattr__(cls, name):
        return getattr(cls._torchdevice_cpu, name)


def _sparse_type(name, target):
    def make(original):
        cpu_type = getattr(torch.sparse, name)
        return _SparseLegacyType(name, (), {
            "__module__": "torch.cuda.sparse", "__qualname__": name,
            "__doc__": f"Legacy CUDA sparse type: builds a torch.sparse.{name} on the torchdevice target.",
            "_torchdevice_cpu": cpu_type, "_torchdevice_dtype": cpu_type.dtype, "_torchdevice_target": target,
        })
    return make


def _sparse_names():
    sparse = getattr(torch.cuda, "sparse", None)
    return sorted(name for name in dir(sparse) if name.endswith("Tensor") and name[:1].isupper()
                  and isinstance(getattr(torch.sparse, name, None), type))


# -- records --------------------------------------------------------------------------------------
def records(target, cfg):
    """Patch records for the CUDA library front-ends (part of area "cuda")."""
    holder = {}
    nvtx = _nvtx_functions()
    out = [
        Patch("torch.cuda", "CudaError", _cuda_error(holder), kind=EMULATED,
              note="a RuntimeError subclass built from the error code without a CUDA runtime"),
        Patch("torch.cuda", "check_error", _check_error(holder), kind=EMULATED,
              note="raises CudaError for non-zero codes"),
        Patch("torch.cuda", "cudart", _cudart(target), kind=EMULATED,
              note="stand-in runtime: profiler start/stop and host register succeed, cudaMemGetInfo is the target's"),
        Patch("torch.cuda", "current_blas_handle", lambda original: raiser(
            "torch.cuda.current_blas_handle()", target.type, "there is no cuBLAS handle off CUDA",
            "Use torch.matmul and the other torch ops, which run on the target.", original),
            kind=UNSUPPORTED, note="clear error: no cuBLAS"),
        Patch("torch.cuda", "current_solver_handle", lambda original: raiser(
            "torch.cuda.current_solver_handle()", target.type, "there is no cuSOLVER handle off CUDA",
            "Use torch.linalg, which runs on the target.", original),
            kind=UNSUPPORTED, note="clear error: no cuSOLVER"),
        Patch("torch.cuda", "GreenContext", _green_context(target), kind=UNSUPPORTED,
              note="clear error: green contexts partition NVIDIA SMs"),
        Patch("torch.cuda.profiler", "start", lambda original: functools.wraps(original)(lambda: None), kind=NOOP,
              note="no CUDA profiler collects on the target; use torch.profiler"),
        Patch("torch.cuda.profiler", "stop", lambda original: functools.wraps(original)(lambda: None), kind=NOOP,
              note="no CUDA profiler collects on the target; use torch.profiler"),
        Patch("torch.cuda.nccl", "is_available", lambda original: functools.wraps(original)(
            lambda tensors: False), kind=EMULATED, note="False: no NCCL on the target"),
    ]
    for name, function in nvtx.items():
        out.append(Patch("torch.cuda.nvtx", name, lambda original, f=function: functools.wraps(original)(f),
                         kind=EMULATED, note="a torch.profiler range (record_function)"))
    for name in ("_create_jit_fn", "_create_multi_output_jit_fn"):
        out.append(Patch("torch.cuda.jiterator", name, _jiterator(name, target), kind=UNSUPPORTED,
                         note="the jitted function raises a clear error when called"))
    comm = _comm_functions(target)
    for owner in ("torch.nn.parallel.comm", "torch.cuda.comm"):
        for name, function in comm.items():
            out.append(Patch(owner, name, lambda original, f=function: functools.wraps(original)(f),
                             kind=EMULATED, note="each listed device gets its own copy on the target"))
    nccl_why = "single-process multi-GPU NCCL collectives need NVIDIA GPUs and NCCL"
    nccl_instead = "Use torch.distributed collectives, or combine the tensors with torch ops."
    for name in ("version", "unique_id", "init_rank", "all_reduce", "reduce", "broadcast", "all_gather",
                 "reduce_scatter"):
        out.append(Patch("torch.cuda.nccl", name, lambda original, name=name: raiser(
            f"torch.cuda.nccl.{name}", target.type, nccl_why, nccl_instead, original),
            kind=UNSUPPORTED, note="clear error: no NCCL"))
    out += _tunable_records(target)
    for name in _sparse_names():
        out.append(Patch("torch.cuda.sparse", name, _sparse_type(name, target), kind=EMULATED,
                         note="legacy sparse type built on the target"))
    return out
