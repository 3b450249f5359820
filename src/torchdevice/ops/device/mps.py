"""Facts about the Apple MPS target, read through ``torch.mps`` and ``torch.backends.mps``.

A deliberately thin layer: each function is one call into torch's MPS API
(looked up when called, so a test double that replaces ``torch.mps``
functions is seen), with a fallback where an older torch lacks the call.

* ``name()``: ``torch.backends.mps.get_name()`` (the Metal device name, e.g.
  'Apple M2 Pro'); older torch: the chip brand from ``sysctl`` on macOS;
  else 'Apple Silicon GPU'.
* ``core_count()``: ``torch.backends.mps.get_core_count()`` (GPU cores), else 1.
* ``total_memory()``: ``torch.mps.recommended_max_memory()``, the working set
  Metal recommends for this process (what CUDA code should treat as the
  device's memory); with torch 2.2, which cannot ask Metal, the machine's RAM
  (Apple silicon GPUs share it).
* ``allocated()`` / ``driver_allocated()``: ``torch.mps.current_allocated_memory()``
  (bytes held by tensors) / ``torch.mps.driver_allocated_memory()`` (bytes the
  Metal driver holds for this process, cached blocks included).
* ``bf16()``: bfloat16 needs macOS 14 (``core.compat.mps_macos_at_least(14, 0)``).
"""
import functools
import sys

import torch

from ...core import compat

# Apple GPU facts that torch does not expose but Metal documents for every Apple silicon GPU.
SIMD_WIDTH = 32                 # threads per SIMD-group (the analogue of a CUDA warp)
MAX_THREADS_PER_GROUP = 1024    # maxTotalThreadsPerThreadgroup
THREADGROUP_MEMORY = 32768      # bytes of threadgroup memory (the analogue of CUDA shared memory)
THREADS_PER_CORE = 3072         # concurrent threads per GPU core (torch.backends.mps.get_core_count docs)


def name() -> str:
    get_name = getattr(torch.backends.mps, "get_name", None)
    if get_name is not None:
        try:
            found = get_name()
        except RuntimeError:
            found = None
        if found:
            return found
    return _brand_from_sysctl() or "Apple Silicon GPU"


@functools.lru_cache(maxsize=None)
def _brand_from_sysctl():
    if sys.platform != "darwin":
        return None
    from . import cpu

    return cpu._sysctl("machdep.cpu.brand_string")


def core_count() -> int:
    get_count = getattr(torch.backends.mps, "get_core_count", None)
    if get_count is not None:
        try:
            return int(get_count()) or 1
        except RuntimeError:
            pass
    return 1


def total_memory() -> int:
    recommended = getattr(torch.mps, "recommended_max_memory", None)  # torch >= 2.3
    if recommended is not None:
        return int(recommended())
    from . import cpu

    return cpu.total_memory()  # unified memory: the GPU's share of RAM is all of it


def allocated() -> int:
    return int(torch.mps.current_allocated_memory())


def driver_allocated() -> int:
    return int(torch.mps.driver_allocated_memory())


def memory_info():
    """(free, total): total is the recommended working set; free is what the driver does not hold yet."""
    total = total_memory()
    return max(total - driver_allocated(), 0), total


def bf16() -> bool:
    return compat.mps_macos_at_least(14, 0)


def synchronize() -> None:
    torch.mps.synchronize()


def empty_cache() -> None:
    torch.mps.empty_cache()


def set_memory_fraction(fraction: float) -> None:
    torch.mps.set_per_process_memory_fraction(fraction)
