"""Memory figures for torch.cuda's memory statistics, per target (area "memory").

What the figures mean (docs/cuda-api.md, "Memory"):

* CPU target, Linux: the process's resident memory. "allocated" and
  "reserved" are both ``VmRSS`` (the CPU has no caching allocator between
  tensors and the OS), their peaks are the kernel's high-water mark
  ``VmHWM``, and ``reset_peak_memory_stats()`` resets that mark to the current
  size (``/proc/self/clear_refs``). Nothing is tracked per allocation, so
  creating tensors costs exactly what it costs without torchdevice. If the
  kernel refuses the reset, the peak falls back to sampling (below).
* CPU target without ``/proc`` (macOS, Windows): the only figure is the peak
  resident size from ``resource.getrusage``; it stands for current and peak.
* MPS target: "allocated" is ``torch.mps.current_allocated_memory()`` (bytes
  in live tensors), "reserved" is ``torch.mps.driver_allocated_memory()``
  (what the Metal driver holds, cached blocks included). torch keeps no MPS
  peak, so peaks are sampled: every memory query reads the figures, and once
  a program asks for a peak (or resets it) a daemon thread also reads them
  every ``SAMPLE_INTERVAL`` seconds. A peak shorter than that can be missed.

Counters CUDA's caching allocator keeps and the targets do not (allocation
counts, segment counts, cumulative "allocated"/"freed" bytes, per-pool
splits) are reported as 0, so code that reads any key of ``memory_stats()``
finds it.
"""
import threading
import time
import weakref
from collections import OrderedDict

from ..device import cpu as _cpu
from ..device import mps as _mps

SAMPLE_INTERVAL = 0.005  # seconds between background samples (MPS, and CPU when VmHWM cannot be reset)


def _sample_loop(figures_ref, interval):
    """Background sampler: stops when the figures object is gone (after unpatch) or stops sampling."""
    while True:
        figures = figures_ref()
        if figures is None or not figures._sampling:
            return
        figures.sample()
        del figures
        time.sleep(interval)


class Figures:
    """Current and peak figures of one target, with resettable peaks."""

    def __init__(self, target_type):
        self.target_type = target_type
        self._lock = threading.Lock()
        self._sampling = False
        self._thread = None
        self._peak_allocated = 0
        self._peak_reserved = 0
        # CPU on Linux reads the kernel's peak; it switches to sampling if the kernel refuses a reset.
        self.kernel_peak = target_type == "cpu" and _cpu._status_bytes("VmRSS") is not None
        self.sample()

    # -- raw figures ----------------------------------------------------------
    def _read(self, with_peak=False):
        """(allocated, reserved, kernel peak or None); the kernel peak is read only when asked for."""
        if self.target_type == "mps":
            return _mps.allocated(), _mps.driver_allocated(), None
        if with_peak and self.kernel_peak:
            current, peak = _cpu.process_memory()
            return current, current, peak
        current = _cpu.resident()
        return current, current, None

    def sample(self, with_peak=False):
        """Read the figures now and fold them into the sampled peaks; return (allocated, reserved, peak)."""
        allocated, reserved, kernel_peak = self._read(with_peak)
        with self._lock:
            if allocated > self._peak_allocated:
                self._peak_allocated = allocated
            if reserved > self._peak_reserved:
                self._peak_reserved = reserved
        return allocated, reserved, kernel_peak

    # -- queries ----------------------------------------------------------------
    def current(self):
        """(allocated, reserved) now."""
        allocated, reserved, _ = self.sample()
        return allocated, reserved

    def all(self):
        """(allocated, reserved, peak allocated, peak reserved)."""
        allocated, reserved, kernel_peak = self.sample(with_peak=True)
        if self.kernel_peak and kernel_peak is not None:
            return allocated, reserved, max(kernel_peak, allocated), max(kernel_peak, reserved)
        self._start_sampler()
        with self._lock:
            return allocated, reserved, self._peak_allocated, self._peak_reserved

    def reset_peaks(self):
        if self.kernel_peak and not _cpu.reset_process_peak():
            self.kernel_peak = False  # the kernel refused: sample from now on
        allocated, reserved, _ = self._read()
        with self._lock:
            self._peak_allocated, self._peak_reserved = allocated, reserved
        if not self.kernel_peak:
            self._start_sampler()

    def _start_sampler(self):
        if self._sampling:
            return
        with self._lock:
            if self._sampling:
                return
            self._sampling = True
        self._thread = threading.Thread(target=_sample_loop, args=(weakref.ref(self), SAMPLE_INTERVAL),
                                        name="torchdevice-memory-sampler", daemon=True)
        self._thread.start()

    def stop(self):
        """Stop the background sampler (if any) and wait for it."""
        self._sampling = False
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=1)

    def describe(self):
        if self.target_type == "mps":
            return "MPS allocator: tensors (torch.mps.current_allocated_memory), driver (driver_allocated_memory)"
        if self.kernel_peak:
            return "process resident memory (VmRSS; peak VmHWM)"
        return "process resident memory (sampled peak)"


# -- memory_stats() ---------------------------------------------------------------------
_POOLS = ("all", "small_pool", "large_pool")
_COUNT_STATS = ("allocation", "segment", "active", "inactive_split")


def _stat(current=0, peak=0):
    return {"current": current, "peak": peak, "allocated": 0, "freed": 0}


def _stat_array(current=0, peak=0):
    return {"all": _stat(current, peak), "small_pool": _stat(), "large_pool": _stat()}


def nested_stats(figures: Figures):
    """memory_stats_as_nested_dict(): CUDA's layout, filled with the target's figures."""
    allocated, reserved, peak_allocated, peak_reserved = figures.all()
    stats = {"num_alloc_retries": 0, "num_ooms": 0, "num_sync_all_streams": 0, "num_device_alloc": 0,
             "num_device_free": 0, "max_split_size": -1}
    for name in _COUNT_STATS:
        stats[name] = _stat_array()
    stats["allocated_bytes"] = _stat_array(allocated, peak_allocated)
    stats["active_bytes"] = _stat_array(allocated, peak_allocated)
    stats["requested_bytes"] = _stat_array(allocated, peak_allocated)
    stats["reserved_bytes"] = _stat_array(reserved, peak_reserved)
    stats["inactive_split_bytes"] = _stat_array()
    stats["oversize_allocations"] = _stat()
    stats["oversize_segments"] = _stat()
    return stats


def flatten(nested):
    """CUDA's flat form: dotted keys, sorted, in an OrderedDict."""
    result = []

    def walk(prefix, obj):
        if isinstance(obj, dict):
            for key, value in obj.items():
                walk(f"{prefix}.{key}" if prefix else key, value)
        else:
            result.append((prefix, obj))
    walk("", nested)
    result.sort()
    return OrderedDict(result)


def nested_host_stats():
    """host_memory_stats_as_nested_dict(): the targets have no pinned host memory, so all zeros."""
    timing = {"total": 0, "max": 0, "min": 0, "count": 0, "avg": 0}
    return {"allocations": _stat(), "allocated_bytes": _stat(), "active_requests": _stat(),
            "active_bytes": _stat(), "num_host_alloc": 0, "num_host_free": 0,
            "host_alloc_time": dict(timing), "host_free_time": dict(timing)}


def _size(n):
    """A byte count as CUDA's summary prints it: a number and a binary unit, 10 characters wide."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:6d} {unit:<3}" if unit == "B" else f"{n:6.1f} {unit}"
        n /= 1024
    return str(n)


def summary(figures: Figures, target_type: str, index: int, abbreviated: bool = False) -> str:
    """memory_summary(): the figures torchdevice has, in CUDA's table style."""
    allocated, reserved, peak_allocated, peak_reserved = figures.all()
    free, total = (_mps.memory_info() if target_type == "mps" else _cpu.memory_info())
    width = 75
    rule = "|" + "=" * width + "|"
    thin = "|" + "-" * width + "|"

    def line(text):
        return "|" + text.ljust(width) + "|"

    def row(metric, *values):
        return line(f" {metric:<22}| " + " | ".join(f"{v:>10}" for v in values))

    rows = [rule,
            line(f" torchdevice memory summary, device ID {index} (runs on the {target_type} target)"),
            thin,
            line(f" figures: {figures.describe()}"),
            line(" allocation and segment counters of CUDA's caching allocator: not tracked"),
            rule,
            row("Metric", "Cur Usage", "Peak Usage"),
            thin,
            row("Allocated memory", _size(allocated), _size(peak_allocated)),
            row("Reserved memory", _size(reserved), _size(peak_reserved)),
            thin,
            row("Device total memory", _size(total)),
            row("Device free memory", _size(free)),
            rule]
    return "\n".join(rows) + "\n"
