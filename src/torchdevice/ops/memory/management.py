"""Area "memory": torch.cuda's memory API answered with the target's figures.

Every function of ``torch.cuda.memory.__all__`` is patched on both
``torch.cuda`` and ``torch.cuda.memory`` (torch's own helpers there call each
other through the module, so both names must agree), plus the private
``_record_memory_history``/``_snapshot``/``_dump_snapshot`` that memory
tutorials use. What the figures mean is in ``stats.py`` and docs/cuda-api.md.

* statistics (``memory_allocated``, ``max_memory_reserved``, ``memory_stats``,
  ``memory_summary``, ...): the target's figures; peaks really reset.
* ``mem_get_info``: (free, total) of RAM available to the process, or of
  Metal's recommended working set on MPS.
* ``empty_cache``: ``torch.mps.empty_cache()`` on MPS; on the CPU, glibc's
  ``malloc_trim`` returns freed heap pages to the OS (which lowers "reserved").
* ``set_per_process_memory_fraction``: validated and kept; enforced on MPS
  through ``torch.mps.set_per_process_memory_fraction``, not enforced on CPU.
* ``caching_allocator_alloc/delete``: real blocks of target memory, kept alive
  until deleted. ``MemPool``/``use_mem_pool`` work, with every allocation still
  served by the target's allocator; pluggable allocators raise a clear error.

Nothing runs per tensor allocation: figures are read only when asked for.
"""
import contextlib
import functools
import itertools
import os
import pickle
import threading
import warnings

import torch

from ...core import device as _device
from ...core.patch import EMULATED, NOOP, REDIRECTED, REGISTRY, UNSUPPORTED, Patch
from ..device import cpu as _cpu
from ..device import mps as _mps
from ..device.errors import raiser, unsupported
from . import stats as _stats

AREA = "memory"
_OWNERS = ("torch.cuda", "torch.cuda.memory")


class _State:
    """Per-activation memory state: figures (made on first use), fraction, raw blocks, pools."""

    def __init__(self, target):
        self.target = target
        self._figures = None
        self._lock = threading.Lock()
        self.fraction = 1.0
        self.blocks = {}

    @property
    def figures(self):
        figures = self._figures
        if figures is None:
            with self._lock:
                if self._figures is None:
                    self._figures = _stats.Figures(self.target.type)
                figures = self._figures
        return figures

    def index(self, device, api):
        return _device.checked_index(device, api)


def _wrap(original, function):
    return functools.wraps(original)(function) if callable(original) else function


def _functions(state):
    """The public replacements, by torch name."""
    target_type = state.target.type
    info = _mps.memory_info if target_type == "mps" else _cpu.memory_info

    def memory_stats_as_nested_dict(device=None):
        state.index(device, "torch.cuda.memory_stats_as_nested_dict")
        return _stats.nested_stats(state.figures)

    def memory_stats(device=None):
        state.index(device, "torch.cuda.memory_stats")
        return _stats.flatten(_stats.nested_stats(state.figures))

    def memory_allocated(device=None):
        state.index(device, "torch.cuda.memory_allocated")
        return state.figures.current()[0]

    def memory_reserved(device=None):
        state.index(device, "torch.cuda.memory_reserved")
        return state.figures.current()[1]

    def max_memory_allocated(device=None):
        state.index(device, "torch.cuda.max_memory_allocated")
        return state.figures.all()[2]

    def max_memory_reserved(device=None):
        state.index(device, "torch.cuda.max_memory_reserved")
        return state.figures.all()[3]

    def reset_peak_memory_stats(device=None):
        state.index(device, "torch.cuda.reset_peak_memory_stats")
        state.figures.reset_peaks()

    def reset_max_memory_allocated(device=None):
        warnings.warn("torch.cuda.reset_max_memory_allocated now calls torch.cuda.reset_peak_memory_stats, "
                      "which resets /all/ peak memory stats.", FutureWarning, stacklevel=2)
        return reset_peak_memory_stats(device)

    def reset_max_memory_cached(device=None):
        warnings.warn("torch.cuda.reset_max_memory_cached now calls torch.cuda.reset_peak_memory_stats, "
                      "which resets /all/ peak memory stats.", FutureWarning, stacklevel=2)
        return reset_peak_memory_stats(device)

    def memory_cached(device=None):
        warnings.warn("`torch.cuda.memory_cached` has been renamed to `torch.cuda.memory_reserved`",
                      FutureWarning, stacklevel=2)
        return memory_reserved(device)

    def max_memory_cached(device=None):
        warnings.warn("`torch.cuda.max_memory_cached` has been renamed to `torch.cuda.max_memory_reserved`",
                      FutureWarning, stacklevel=2)
        return max_memory_reserved(device)

    def reset_accumulated_memory_stats(device=None):
        state.index(device, "torch.cuda.reset_accumulated_memory_stats")  # the accumulated counters are not tracked (always 0)

    def memory_summary(device=None, abbreviated=False):
        index = state.index(device, "torch.cuda.memory_summary")
        return _stats.summary(state.figures, target_type, index, abbreviated)

    def memory_snapshot(mempool_id=None, include_traces=True):
        return []

    def mem_get_info(device=None):
        state.index(device, "torch.cuda.mem_get_info")
        return info()

    def empty_cache():
        if target_type == "mps":
            _mps.empty_cache()
        else:
            _cpu.release_free_heap()

    def set_per_process_memory_fraction(fraction, device=None):
        state.index(device, "torch.cuda.set_per_process_memory_fraction")
        if not isinstance(fraction, float):
            raise TypeError("Invalid type for fraction argument, must be `float`")
        if fraction < 0 or fraction > 1:
            raise ValueError(f"Invalid fraction value: {fraction}. Allowed range: 0~1")
        if target_type == "mps":
            _mps.set_memory_fraction(fraction)
        state.fraction = fraction

    def get_per_process_memory_fraction(device=None):
        state.index(device, "torch.cuda.get_per_process_memory_fraction")
        return state.fraction

    def list_gpu_processes(device=None):
        index = state.index(device, "torch.cuda.list_gpu_processes")
        used = state.figures.current()[0] / (1024 * 1024)
        return f"GPU:{index}\nprocess {os.getpid():>10d} uses {used:>12.3f} MB GPU memory"

    def host_memory_stats():
        return _stats.flatten(_stats.nested_host_stats())

    def host_memory_stats_as_nested_dict():
        return _stats.nested_host_stats()

    def reset_peak_host_memory_stats():
        return None

    def reset_accumulated_host_memory_stats():
        return None

    def caching_allocator_alloc(size, device=None, stream=None):
        state.index(device, "torch.cuda.caching_allocator_alloc")
        if size == 0:
            return 0
        block = torch.empty(int(size), dtype=torch.uint8, device=state.target.device)
        pointer = block.data_ptr()
        state.blocks[pointer] = block
        return pointer

    def caching_allocator_delete(mem_ptr):
        if mem_ptr == 0:
            return
        if state.blocks.pop(mem_ptr, None) is None:
            raise RuntimeError(f"invalid device pointer: {mem_ptr:#x}")

    def caching_allocator_enable(value=True):
        return None

    @contextlib.contextmanager
    def caching_allocator_disabled():
        yield

    def get_allocator_backend():
        return "native"

    def _record_memory_history(*args, **kwargs):
        return None

    def _snapshot(device=None, augment_with_fx_traces=False):
        return {"segments": [], "device_traces": [[] for _ in range(state.target.count)]}

    def _dump_snapshot(filename="dump_snapshot.pickle", augment_with_fx_traces=False):
        with open(filename, "wb") as handle:
            pickle.dump(_snapshot(), handle)

    return {name: value for name, value in locals().items() if callable(value) and not name.startswith("__")
            and name not in ("info",)}


def _mem_pool(state):
    ids = itertools.count(1)

    class MemPool:
        """A named memory pool; on the target every allocation is served by its own allocator.

        Args:
            allocator: must be None (pluggable CUDA allocators cannot run on the target).
            use_on_oom, no_split: accepted and kept.
        """

        def __init__(self, allocator=None, use_on_oom=False, no_split=False):
            if allocator is not None:
                raise unsupported("torch.cuda.MemPool(allocator=...)", state.target.type,
                                  "a pluggable allocator hands out CUDA memory",
                                  "Create the pool without an allocator; allocations go to the target's allocator.")
            self._id = (0, next(ids))
            self._uses = 0
            self.use_on_oom = use_on_oom
            self.no_split = no_split

        @property
        def id(self):
            """The ID of this pool as a tuple of two ints."""
            return self._id

        def use_count(self):
            """1 for this object plus one per active ``use_mem_pool`` context."""
            return 1 + self._uses

        def snapshot(self, include_traces=True):
            """[]: the target's allocator has no CUDA segments to list."""
            return []

        def __repr__(self):
            return f"MemPool(id={self._id})"

    MemPool.__module__ = "torch.cuda.memory"
    active = []  # pools made active, innermost last

    class MemPoolContext:
        """Makes ``pool`` the active pool until this object is deleted (torch 2.5 to 2.7 have this class).

        Args:
            pool (torch.cuda.MemPool): the pool to make active.
        """

        def __init__(self, pool):
            self._pool = pool
            active.append(pool)

        def __del__(self):
            for i in range(len(active) - 1, -1, -1):
                if active[i] is self._pool:
                    del active[i]
                    break

        @staticmethod
        def active_pool():
            """The active MemPool, or None."""
            return active[-1] if active else None

    MemPoolContext.__module__ = "torch.cuda.memory"

    @contextlib.contextmanager
    def use_mem_pool(pool, device=None):
        state.index(device, "torch.cuda.use_mem_pool")
        pool._uses += 1
        context = MemPoolContext(pool)
        try:
            yield
        finally:
            pool._uses -= 1
            del context

    return MemPool, MemPoolContext, use_mem_pool


# name -> (kind on cpu, kind on mps, note on cpu, note on mps)
_KINDS = {
    "memory_stats": (EMULATED, EMULATED, "CUDA's keys; bytes = process resident memory (VmRSS/VmHWM)",
                     "CUDA's keys; bytes = torch.mps allocator figures, peaks sampled"),
    "memory_stats_as_nested_dict": (EMULATED, EMULATED, "nested form of memory_stats()",
                                    "nested form of memory_stats()"),
    "memory_allocated": (EMULATED, EMULATED, "process resident memory (VmRSS)",
                         "torch.mps.current_allocated_memory()"),
    "max_memory_allocated": (EMULATED, EMULATED, "peak resident memory since start/reset (VmHWM)",
                             "sampled peak of current_allocated_memory() since start/reset"),
    "memory_reserved": (EMULATED, EMULATED, "process resident memory (no caching allocator)",
                        "torch.mps.driver_allocated_memory()"),
    "max_memory_reserved": (EMULATED, EMULATED, "peak resident memory since start/reset (VmHWM)",
                            "sampled peak of driver_allocated_memory() since start/reset"),
    "reset_peak_memory_stats": (EMULATED, EMULATED, "resets VmHWM to the current size (/proc/self/clear_refs)",
                                "restarts the sampled peaks from the current figures"),
    "reset_max_memory_allocated": (EMULATED, EMULATED, "reset_peak_memory_stats() (FutureWarning, as torch)",
                                   "reset_peak_memory_stats() (FutureWarning, as torch)"),
    "reset_max_memory_cached": (EMULATED, EMULATED, "reset_peak_memory_stats() (FutureWarning, as torch)",
                                "reset_peak_memory_stats() (FutureWarning, as torch)"),
    "memory_cached": (EMULATED, EMULATED, "memory_reserved() (FutureWarning, as torch)",
                      "memory_reserved() (FutureWarning, as torch)"),
    "max_memory_cached": (EMULATED, EMULATED, "max_memory_reserved() (FutureWarning, as torch)",
                          "max_memory_reserved() (FutureWarning, as torch)"),
    "reset_accumulated_memory_stats": (NOOP, NOOP, "accumulated counters are not tracked (always 0)",
                                       "accumulated counters are not tracked (always 0)"),
    "memory_summary": (EMULATED, EMULATED, "a table of the figures above", "a table of the figures above"),
    "memory_snapshot": (NOOP, NOOP, "[]: no CUDA allocator segments", "[]: no CUDA allocator segments"),
    "mem_get_info": (EMULATED, EMULATED, "(MemAvailable, MemTotal), capped by the cgroup limit",
                     "(recommended working set minus driver memory, recommended working set)"),
    "empty_cache": (EMULATED, REDIRECTED, "returns freed heap pages to the OS (glibc malloc_trim)",
                    "torch.mps.empty_cache()"),
    "set_per_process_memory_fraction": (NOOP, REDIRECTED, "validated and kept; not enforced on the CPU",
                                        "torch.mps.set_per_process_memory_fraction()"),
    "get_per_process_memory_fraction": (EMULATED, EMULATED, "the fraction last set (default 1.0)",
                                        "the fraction last set (default 1.0)"),
    "list_gpu_processes": (EMULATED, EMULATED, "this process and its resident memory",
                           "this process and its MPS tensor memory"),
    "host_memory_stats": (NOOP, NOOP, "zeros: no pinned host memory", "zeros: no pinned host memory"),
    "host_memory_stats_as_nested_dict": (NOOP, NOOP, "zeros: no pinned host memory",
                                         "zeros: no pinned host memory"),
    "reset_peak_host_memory_stats": (NOOP, NOOP, "no pinned host memory", "no pinned host memory"),
    "reset_accumulated_host_memory_stats": (NOOP, NOOP, "no pinned host memory", "no pinned host memory"),
    "caching_allocator_alloc": (EMULATED, EMULATED, "a block of CPU memory; returns its address",
                                "a block of MPS memory; returns its address"),
    "caching_allocator_delete": (EMULATED, EMULATED, "frees a block from caching_allocator_alloc",
                                 "frees a block from caching_allocator_alloc"),
    "caching_allocator_enable": (NOOP, NOOP, "the target's allocator cannot be switched",
                                 "the target's allocator cannot be switched"),
    "caching_allocator_disabled": (NOOP, NOOP, "context that changes nothing", "context that changes nothing"),
    "get_allocator_backend": (EMULATED, EMULATED, "'native'", "'native'"),
    "_record_memory_history": (NOOP, NOOP, "no allocation history on the target",
                               "no allocation history on the target"),
    "_snapshot": (NOOP, NOOP, "an empty snapshot", "an empty snapshot"),
    "_dump_snapshot": (NOOP, NOOP, "pickles the empty snapshot", "pickles the empty snapshot"),
}
_PRIVATE = ("_record_memory_history", "_snapshot", "_dump_snapshot")


def records():
    target = _device.current()
    state = _State(target)
    functions = _functions(state)
    mem_pool, mem_pool_context, use_mem_pool = _mem_pool(state)
    on_mps = target.type == "mps"
    out = []
    for name, (cpu_kind, mps_kind, cpu_note, mps_note) in _KINDS.items():
        function = functions[name]
        kind, note = (mps_kind, mps_note) if on_mps else (cpu_kind, cpu_note)
        owners = ("torch.cuda.memory",) if name in _PRIVATE else _OWNERS
        for owner in owners:
            out.append(Patch(owner, name, lambda original, f=function: _wrap(original, f), kind=kind, note=note))
    pool_note = "pools without an allocator; allocations are served by the target's allocator"
    why = "a pluggable allocator hands out CUDA memory from a compiled CUDA library"
    instead = "Remove the custom allocator; the target's own allocator serves every tensor."
    for owner in _OWNERS:
        out += [
            Patch(owner, "MemPool", lambda original: mem_pool, kind=EMULATED, note=pool_note),
            Patch(owner, "MemPoolContext", lambda original: mem_pool_context, kind=EMULATED,
                  note="keeps the active pool (torch 2.5 to 2.7)"),
            Patch(owner, "use_mem_pool", lambda original: _wrap(original, use_mem_pool), kind=NOOP,
                  note="context accepted; allocations still go to the target's allocator"),
            Patch(owner, "CUDAPluggableAllocator", lambda original: _pluggable(target), kind=UNSUPPORTED,
                  note="clear error: CUDA allocator libraries cannot serve the target"),
            Patch(owner, "change_current_allocator", lambda original: raiser(
                "torch.cuda.memory.change_current_allocator", target.type, why, instead, original),
                kind=UNSUPPORTED, note="clear error"),
        ]
    return out


def _pluggable(target):
    class CUDAPluggableAllocator:
        """CUDA allocators loaded from a shared library cannot serve the target: raises a clear error."""

        def __init__(self, path_to_so_file, alloc_fn_name, free_fn_name):
            raise unsupported("torch.cuda.memory.CUDAPluggableAllocator", target.type,
                              "a pluggable allocator hands out CUDA memory from a compiled CUDA library",
                              "Remove the custom allocator; the target's own allocator serves every tensor.")

    CUDAPluggableAllocator.__module__ = "torch.cuda.memory"
    return CUDAPluggableAllocator


def apply_patches():
    """Apply the memory area (fenced: a second call changes nothing)."""
    return REGISTRY.apply_area(AREA, records())
