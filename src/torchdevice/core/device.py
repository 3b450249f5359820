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
"""
import sys
from dataclasses import dataclass
from typing import Any, Dict, Optional

from .config import ConfigError, Config, DEVICE


@dataclass(frozen=True)
class Target:
    """Where CUDA work goes in this process."""

    type: str            # "cpu", "mps" or "cuda"
    device: Any          # the torch.device tensors on the target report
    redirect: bool       # False: real CUDA is used as is (pass-through)
    reason: str          # why this target was chosen, for `torchdevice info`
    float64: bool        # whether the target computes in float64
    pinned_memory: bool  # whether page-locked host memory means anything here


_target: Optional[Target] = None
# spec -> mapped spec. Filled lazily by map_device and pre-seeded by select().
DEVICE_CACHE: Dict[Any, Any] = {}
_CACHE_LIMIT = 1024
# The index CUDA code believes is current (torch.cuda.set_device / device()).
current_index = 0


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
        _target = detect(config)
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
    global _target, current_index
    _target = None
    current_index = 0
    DEVICE_CACHE.clear()


def _seed_cache(target: Target) -> None:
    device_type = _real_device_type()
    for spec in ("cuda", "cpu", "mps", "meta", *(f"cuda:{i}" for i in range(8))):
        map_device(spec)
    for i in range(8):
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
        return target.device if spec.type == "cuda" else spec
    if isinstance(spec, str):
        parsed = device_type(spec)  # raises torch's own error for "cuda:x", "gpu", ...
        return target.device if parsed.type == "cuda" else parsed
    if isinstance(spec, int) and not isinstance(spec, bool):
        if spec == -1:
            # x.get_device() answers -1 for a tensor on the CPU target where a GPU answers its
            # ordinal, and torch's C++ reads index -1 as "the current device" (Device(kCUDA, -1)):
            # so torch.zeros(n, device=x.get_device()) and y.cuda(x.get_device()) keep working.
            return target.device
        if spec < 0:
            return spec  # let torch raise its own error for any other negative index
        return target.device  # torch reads a bare index as a CUDA ordinal
    return spec


def is_cuda_spec(spec: Any) -> bool:
    """True when ``spec`` names a CUDA device (string, torch.device or index)."""
    device_type = _real_device_type()
    if type(spec) is device_type:
        return spec.type == "cuda"
    if isinstance(spec, str):
        return spec == "cuda" or spec.startswith("cuda:")
    return isinstance(spec, int) and not isinstance(spec, bool) and spec >= -1  # -1: see _map_uncached


def cuda_index(spec: Any) -> int:
    """The CUDA ordinal a spec names (``current_index`` when it names none)."""
    device_type = _real_device_type()
    if spec is None:
        return current_index
    if isinstance(spec, int) and not isinstance(spec, bool):
        return spec
    if isinstance(spec, str):
        spec = device_type(spec)
    if type(spec) is device_type:
        return current_index if spec.index is None else spec.index
    index = getattr(spec, "idx", None)  # torch.cuda.device context objects
    if isinstance(index, int):
        return index
    raise ValueError(f"Expected a cuda device, but got: {spec!r}")


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
