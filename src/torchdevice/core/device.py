"""Backend detection and the mapping of CUDA device specs to the target.

``select(config)`` decides the target once per activation:

* ``TORCHDEVICE_DEVICE=auto`` (default): real CUDA present -> pass-through
  (nothing that changes behaviour is patched); else MPS if available; else CPU.
* ``cpu`` / ``mps``: that target, even on a CUDA machine (``mps`` must exist).
* ``cuda``: pass-through; an error if this torch has no usable CUDA.

``map_device(spec)`` turns any device spec torch accepts into what the program
should get: every CUDA spec (``"cuda"``, ``"cuda:1"``, ``torch.device("cuda",
0)``, a bare index such as ``0``) becomes the target device; everything else
(``"cpu"``, ``"meta"``, an explicit ``"mps"``) is returned as torch would parse
it. Results are cached in ``DEVICE_CACHE`` (which also maps every dtype to
itself, for ``Tensor.to``), a plain dict that the wrappers on
hot paths read directly: one dict lookup per call, no parsing.

The device count is one rule (``check_index``): the program sees ``Target.count``
CUDA devices (``TORCHDEVICE_DEVICE_COUNT``, else at least as many as a launcher
says it started on this machine, else 1; ``device_count``), and every index that
enters torchdevice (a spec to map, ``set_device``, a memory or property query, a
stream) is checked against it, so nothing accepts an index that later code
rejects. An index beyond the count raises ``InvalidDeviceOrdinal``, the error
CUDA gives ("invalid device ordinal"). Only valid specs enter ``DEVICE_CACHE``.

The CUDA index the program selected (``set_device``, ``torch.cuda.device``) is
kept per thread, as CUDA keeps the current device per host thread: a new thread
starts on index 0.
"""
import dataclasses
import sys
import threading
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from .config import ConfigError, Config, DEVICE, DEVICE_COUNT


@dataclass(frozen=True)
class Target:
    """Where CUDA work goes in this process."""

    type: str            # "cpu", "mps" or "cuda"
    device: Any          # the torch.device tensors on the target report
    redirect: bool       # False: real CUDA is used as is (pass-through)
    reason: str          # why this target was chosen, for `torchdevice info`
    float64: bool        # whether the target computes in float64
    pinned_memory: bool  # whether page-locked host memory means anything here
    count: int = 1       # how many CUDA devices the program sees (device_count())
    count_source: str = "the default"  # why that many, for error messages and `torchdevice info`


_target: Optional[Target] = None
# spec -> mapped spec. Filled lazily by map_device and pre-seeded by select().
DEVICE_CACHE: Dict[Any, Any] = {}
_CACHE_LIMIT = 1024
# Per thread: .index, the CUDA index the program selected (torch.cuda.set_device / device()).
_local = threading.local()


# -- the device count ---------------------------------------------------------------------
# Launchers that say how many processes they started on this machine: (variable, who sets it).
# torchrun sets LOCAL_WORLD_SIZE (so do torch.distributed.launch and `accelerate launch
# --multi_gpu`, which runs torchrun); the MPI launchers set theirs. Lightning's own launcher
# and DeepSpeed's set only LOCAL_RANK in the processes they start: a process of local rank r
# sees at least r + 1 devices, so its set_device(local_rank) is valid.
LAUNCHER_COUNTS = (
    ("LOCAL_WORLD_SIZE", "torchrun"),
    ("OMPI_COMM_WORLD_LOCAL_SIZE", "Open MPI's mpirun"),
    ("MPI_LOCALNRANKS", "MPICH's mpirun"),
)
LOCAL_RANK = "LOCAL_RANK"
# The most devices torch can index (c10::DeviceIndex is an int8_t).
MAX_COUNT = 127


def _launcher_number(environ, name) -> Optional[int]:
    """A launcher's variable as a plain non-negative integer, or None (not set, or not a number:
    the variable is the launcher's, not ours to reject)."""
    value = (environ.get(name) or "").strip()
    return int(value) if value.isascii() and value.isdigit() else None


def device_count(config: Config, environ=None) -> Tuple[int, str]:
    """(count, why): how many CUDA devices the program sees while redirecting.

    ``TORCHDEVICE_DEVICE_COUNT`` (or ``patch(device_count=...)``) decides when given.
    Otherwise the default (1) is raised to what a launcher says it started on this
    machine (``LAUNCHER_COUNTS``; ``LOCAL_RANK`` + 1), so that the standard recipe,
    each rank calling ``torch.cuda.set_device(local_rank)``, works on every rank.
    """
    import os

    env = os.environ if environ is None else environ
    sources = getattr(config, "sources", None) or {}
    if DEVICE_COUNT in sources or "device_count" in sources:
        return config.device_count, f"{DEVICE_COUNT}={config.device_count}"
    count, why = config.device_count, "the default"
    for name, launcher in LAUNCHER_COUNTS:
        number = _launcher_number(env, name)
        if number is not None and number > count:
            count, why = number, f"{name}={number}, set by {launcher}"
    rank = _launcher_number(env, LOCAL_RANK)
    if rank is not None and rank + 1 > count:
        count, why = rank + 1, f"{LOCAL_RANK}={rank}, set by the launcher"
    if count > MAX_COUNT:
        count, why = MAX_COUNT, f"{why}, capped at {MAX_COUNT} (the most devices torch can index)"
    return count, why


_ordinal_error = None


def ordinal_error_type():
    """``InvalidDeviceOrdinal``: what an index beyond the count raises, as CUDA raises for a
    device that does not exist. A ``torch.AcceleratorError`` where this torch has it (what CUDA
    raises there; a RuntimeError everywhere) and an ``AssertionError`` (what torch's own checks
    in ``get_device_properties``/``can_device_access_peer`` raise), so every handler written
    for a GPU run catches it. Built once torch is loaded (its base class comes from torch)."""
    global _ordinal_error
    if _ordinal_error is None:
        import torch

        base = getattr(torch, "AcceleratorError", RuntimeError)
        _ordinal_error = type("InvalidDeviceOrdinal", (base, AssertionError), {
            "__module__": "torchdevice",
            "__doc__": "A CUDA device index beyond what torch.cuda.device_count() reports (torchdevice).",
        })
    return _ordinal_error


def invalid_ordinal(index: int, api: str = "") -> Exception:
    """The error for ``index`` (see ``ordinal_error_type``), naming the setting that widens the count."""
    target = _target
    count = target.count if target is not None else 1
    source = target.count_source if target is not None else "the default"
    where = f"{api}: " if api else ""
    hint = (f"set {DEVICE_COUNT}={index + 1} (or more) to give the program that many CUDA devices "
            f"(all run on {target.device if target is not None else 'the target'})" if index >= 0
            else "a CUDA device index is 0 or more")
    return ordinal_error_type()(
        f"{where}CUDA error: invalid device ordinal: the program asked for CUDA device {index}, but "
        f"torch.cuda.device_count() is {count} ({source}); {hint}.")


def check_index(index: int, api: str = "") -> int:
    """The one rule for every CUDA index that enters torchdevice: ``index`` if the program's
    device count has it, else ``invalid_ordinal`` is raised."""
    target = _target
    if 0 <= index < (target.count if target is not None else 1):
        return index
    raise invalid_ordinal(index, api)


def get_current_index() -> int:
    """The CUDA index this thread selected (0 until it selects one, as a new CUDA thread)."""
    return getattr(_local, "index", 0)


def set_current_index(index: int, api: str = "torch.cuda.set_device") -> None:
    """Select ``index`` for this thread (checked: an index beyond the count is refused)."""
    _local.index = check_index(index, api)


def _real_device_type():
    import torch

    return torch._C.device  # the C type, whatever torch.device is bound to now


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _cuda_available() -> bool:
    from .patch import REGISTRY

    import torch

    try:
        return bool(REGISTRY.original("torch.cuda", "is_available")())
    except Exception:
        return bool(torch.cuda.is_available())


def detect(config: Config) -> Target:
    """Compute the target for ``config`` (no caching; see ``select``)."""
    device_type = _real_device_type()
    choice = config.device
    if choice in ("auto", "cuda"):
        if _cuda_available():
            why = f"{DEVICE}=cuda" if choice == "cuda" else "real CUDA is available"
            return Target("cuda", device_type("cuda"), False, why + ": pass-through", True, True)
        if choice == "cuda":
            raise ConfigError(f"torchdevice: {DEVICE}=cuda but this torch has no usable CUDA device; "
                              f"use {DEVICE}=auto, mps or cpu.")
    if choice in ("auto", "mps"):
        if _mps_available():
            why = f"{DEVICE}=mps" if choice == "mps" else "no CUDA; Apple MPS is available"
            return Target("mps", device_type("mps", 0), True, why, False, False)
        if choice == "mps":
            raise ConfigError(f"torchdevice: {DEVICE}=mps but torch.backends.mps.is_available() is False "
                              f"on this machine; use {DEVICE}=auto or cpu.")
    why = f"{DEVICE}=cpu" if choice == "cpu" else "no CUDA and no MPS: using the CPU"
    return Target("cpu", device_type("cpu"), True, why, True, False)


def select(config: Config) -> Target:
    """Decide the target for this activation and seed the mapping cache."""
    global _target, _dynamo_tracing
    if _target is None:
        target = detect(config)
        if target.redirect:
            count, why = device_count(config)
            target = dataclasses.replace(target, count=count, count_source=why)
        _target = target
        _dynamo_tracing = _dynamo_probe()
        DEVICE_CACHE.clear()
        if _target.redirect:
            _seed_cache(_target)
    return _target


def _dynamo_probe():
    import torch

    return getattr(getattr(torch, "compiler", None), "is_dynamo_compiling", None) or _not_tracing


def current() -> Optional[Target]:
    return _target


def reset() -> None:
    """Forget the target (after unpatch), so a new activation detects again."""
    global _target, _local
    _target = None
    _local = threading.local()  # every thread starts on index 0 again
    DEVICE_CACHE.clear()


def _seed_cache(target: Target) -> None:
    device_type = _real_device_type()
    valid = range(min(target.count, 8))  # only indices the count has: others must raise each time
    for spec in ("cuda", "cpu", "mps", "meta", *(f"cuda:{i}" for i in valid)):
        map_device(spec)
    for i in valid:
        map_device(i)
        map_device(device_type("cuda", i))
    map_device(device_type("cuda"))
    map_device(target.device)
    # dtypes map to themselves: Tensor.to(torch.float16) then costs the wrapper one
    # cache hit instead of a miss and a call to map_device.
    import torch

    for value in vars(torch).values():
        if type(value) is torch.dtype:
            DEVICE_CACHE[value] = value


def map_device(spec: Any) -> Any:
    """Map one device spec (see module docstring). Invalid specs raise torch's error."""
    try:
        return DEVICE_CACHE[spec]
    except (KeyError, TypeError):
        pass
    mapped = _map_uncached(spec)
    if isinstance(spec, (str, int)) and not isinstance(spec, bool) or type(spec) is _real_device_type():
        if len(DEVICE_CACHE) < _CACHE_LIMIT:
            DEVICE_CACHE[spec] = mapped
    return mapped


def _map_uncached(spec: Any) -> Any:
    target = _target
    if target is None or not target.redirect or spec is None:
        return spec
    device_type = _real_device_type()
    if type(spec) is device_type:
        if spec.type != "cuda":
            return spec
        if spec.index is not None:
            check_index(spec.index)
        return target.device
    if isinstance(spec, str):
        parsed = device_type(spec)  # raises torch's own error for "cuda:x", "gpu", ...
        if parsed.type != "cuda":
            return parsed
        if parsed.index is not None:
            check_index(parsed.index)
        return target.device
    if isinstance(spec, int) and not isinstance(spec, bool):
        if spec == -1:
            # x.get_device() answers -1 for a tensor on the CPU target where a GPU answers its
            # ordinal, and torch's C++ reads index -1 as "the current device" (Device(kCUDA, -1)):
            # so torch.zeros(n, device=x.get_device()) and y.cuda(x.get_device()) keep working.
            return target.device
        if spec < 0:
            return spec  # let torch raise its own error for any other negative index
        check_index(spec)  # torch reads a bare index as a CUDA ordinal
        return target.device
    return spec


def is_cuda_spec(spec: Any) -> bool:
    """True when ``spec`` names a CUDA device (string, torch.device or index)."""
    device_type = _real_device_type()
    if type(spec) is device_type:
        return spec.type == "cuda"
    if isinstance(spec, str):
        return spec == "cuda" or spec.startswith("cuda:")
    return isinstance(spec, int) and not isinstance(spec, bool) and spec >= -1  # -1: see _map_uncached


def index_of(spec: Any, optional: bool = True) -> int:
    """The CUDA ordinal a ``torch.cuda`` device argument names, read as torch's
    ``torch.cuda._utils._get_device_index(spec, optional)`` reads it on a GPU machine.

    ``N``, ``"cuda:N"`` and ``torch.device("cuda", N)`` name N (returned unchecked: the
    caller checks it, or treats a negative index as torch does). ``None``, ``"cuda"`` and
    ``torch.device("cuda")`` name the selected index, or raise torch's ValueError where
    torch wants an explicit one (``optional=False``: ``set_device``). ``-1`` names the
    selected index: it is what ``x.get_device()`` answers on the CPU target. A device
    object of the target's type (``x.device`` of a tensor on the target, which names
    ``cuda:N`` on a GPU) names the selected index. Anything else raises torch's
    ValueError ("Expected a cuda device"): a string such as ``"cpu"`` names that device,
    never the GPU.
    """
    if spec is None:
        if optional:
            return get_current_index()
        raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{spec}")
    if isinstance(spec, int):
        return get_current_index() if spec == -1 else int(spec)
    device_type = _real_device_type()
    if isinstance(spec, str):
        parsed = device_type(spec)
        if parsed.type != "cuda":
            raise ValueError(f"Expected a cuda device, but got: {parsed}")
        spec = parsed
    if type(spec) is device_type:
        if spec.type == "cuda":
            if spec.index is not None:
                return spec.index
            if optional:
                return get_current_index()
            raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{spec}")
        target = _target
        if target is not None and spec.type == target.type:
            return get_current_index()
        raise ValueError(f"Expected a cuda device, but got: {spec}")
    index = getattr(spec, "idx", None)  # torch.cuda.device context objects
    if isinstance(index, int):
        return get_current_index() if index < 0 else index
    raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{spec}")


def checked_index(spec: Any, api: str = "", optional: bool = True) -> int:
    """``index_of(spec)`` checked against the device count (the rule of ``check_index``)."""
    return check_index(index_of(spec, optional), api)


_TORCH_PREFIX = "torch."
# torch modules that call a function on behalf of the code they compile:
# dynamo constant-folds torch.cuda.is_available() and friends by calling them
# while it traces a function, so these calls get the answer for that code.
_ON_BEHALF_OF_TRACED_CODE = frozenset({"torch._dynamo.variables.torch"})
# With TORCHDEVICE_REPORT on, a recorder of this module calls the replacement.
_RECORDER_MODULE = "torchdevice.core.report"


def _not_tracing() -> bool:
    return False


# torch.compiler.is_dynamo_compiling where this torch has it (bound by select()).
# It is False whenever Python really runs; dynamo reads it as True while it
# symbolically runs the code it compiles, where sys._getframe cannot be traced.
_dynamo_tracing = _not_tracing


def caller_sees_truth(truthful=frozenset(), depth: int = 2) -> bool:
    """Whether the code calling our wrapper should get real CUDA answers.

    torch's own modules (and packages listed in TORCHDEVICE_TRUTHFUL_MODULES)
    must see the truth so that torch never tries to run CUDA kernels; all other
    code sees the masquerade. ``depth`` counts frames up from this function.
    Code that torch.compile traces is treated as user code: inside dynamo's
    trace the answer is decided without frame inspection (no graph break).
    """
    if _dynamo_tracing():
        return False
    try:
        frame = sys._getframe(depth)
    except ValueError:
        return True  # no Python caller: called from torch's C++ (e.g. a lazy CUDA init)
    name = frame.f_globals.get("__name__") or ""
    if name == _RECORDER_MODULE:  # the migration report's recorder sits between the caller and us
        frame = frame.f_back
        name = (frame.f_globals.get("__name__") or "") if frame is not None else "torch"
    if name == "torch" or name.startswith(_TORCH_PREFIX):
        return name not in _ON_BEHALF_OF_TRACED_CODE
    if truthful:
        return name.partition(".")[0] in truthful
    return False
