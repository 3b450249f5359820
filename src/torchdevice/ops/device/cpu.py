"""Facts about the CPU target, read from the operating system.

Everything ``torch.cuda`` reports about "the GPU" while the CPU is the target
comes from here: the processor's model name, the memory this process may use,
the logical CPUs it may run on, cache sizes, clock, and this process's
resident memory (the CPU figures behind ``torch.cuda.memory_allocated``).

Sources, in order of preference (Linux first, stdlib fallbacks elsewhere):

* name: ``model name`` (x86) or ``Hardware``/``Processor``/``CPU part``
  lines of ``/proc/cpuinfo``, else ``platform.processor()``, else
  ``platform.machine()``.
* memory: ``MemTotal``/``MemAvailable`` from ``/proc/meminfo``, capped by the
  cgroup limit (v2 ``memory.max``/``memory.current``, v1
  ``memory.limit_in_bytes``/``memory.usage_in_bytes``) when one is set; on
  other systems ``os.sysconf`` pages.
* resident memory: ``VmRSS``/``VmHWM`` from ``/proc/self/status``; the peak
  (``VmHWM``) is reset by writing ``5`` to ``/proc/self/clear_refs`` (Linux
  >= 4.0). Without ``/proc`` the peak comes from ``resource.getrusage`` and
  cannot be reset.

Nothing here is on a hot path; the static facts are cached.
"""
import functools
import os
import platform
import sys
import threading
import uuid as _uuid

_PROC_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"
_MEMINFO = "/proc/meminfo"
_CPUINFO = "/proc/cpuinfo"
_CACHE_DIR = "/sys/devices/system/cpu/cpu0/cache"
_CPUFREQ_MAX = "/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"
_NO_LIMIT = 1 << 60  # cgroup "no limit" values are near 2**63


def _read(path):
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def _cpuinfo_fields():
    """First value of each key of /proc/cpuinfo (empty on other systems)."""
    text = _read(_CPUINFO) or ""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


@functools.lru_cache(maxsize=None)
def name() -> str:
    """The processor's model name, e.g. 'AMD EPYC 7B13' or 'Intel(R) Xeon(R) ...'."""
    fields = _cpuinfo_fields()
    for key in ("model name", "Hardware", "Processor", "cpu model"):
        if fields.get(key):
            return fields[key]
    if sys.platform == "darwin":
        brand = _sysctl("machdep.cpu.brand_string")
        if brand:
            return brand
    return platform.processor() or platform.machine() or "CPU"


def _sysctl(key):
    import subprocess

    try:
        out = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def logical_cpus() -> int:
    """Logical CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _meminfo():
    text = _read(_MEMINFO)
    if text is None:
        return None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0]) * (1024 if parts[1:2] == ["kB"] else 1)
    return values


def _cgroup_memory():
    """(limit, usage) in bytes for this process's memory cgroup, or None when unlimited."""
    for limit_path, usage_path in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit = _read(limit_path)
        if limit is None:
            continue
        limit = limit.strip()
        if not limit.isdigit() or int(limit) >= _NO_LIMIT:
            return None
        usage = (_read(usage_path) or "0").strip()
        return int(limit), int(usage) if usage.isdigit() else 0
    return None


def memory_info():
    """(free, total) bytes of RAM this process can use.

    total: physical RAM (MemTotal), or the cgroup memory limit when that is
    lower. free: MemAvailable (what the kernel can hand out without swapping),
    or the room left under the cgroup limit when that is lower.
    """
    info = _meminfo()
    if info is not None and "MemTotal" in info:
        total = info["MemTotal"]
        free = info.get("MemAvailable", info.get("MemFree", 0))
    else:
        page = os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * page
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * page
        except (ValueError, OSError):
            free = 0
    cgroup = _cgroup_memory()
    if cgroup is not None:
        limit, usage = cgroup
        if limit < total:
            total = limit
            free = min(free, max(limit - usage, 0))
    return min(free, total), total


def total_memory() -> int:
    return memory_info()[1]


def _cache_sizes():
    """{(level, type): bytes} for cpu0's caches, from sysfs."""
    sizes = {}
    try:
        entries = os.listdir(_CACHE_DIR)
    except OSError:
        return sizes
    for entry in entries:
        if not entry.startswith("index"):
            continue
        level = (_read(f"{_CACHE_DIR}/{entry}/level") or "").strip()
        kind = (_read(f"{_CACHE_DIR}/{entry}/type") or "").strip()
        size = (_read(f"{_CACHE_DIR}/{entry}/size") or "").strip()
        if not level.isdigit() or not size:
            continue
        unit = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(size[-1].upper(), 1)
        digits = size.rstrip("KkMmGg")
        if digits.isdigit():
            sizes[(int(level), kind)] = int(digits) * unit
    return sizes


@functools.lru_cache(maxsize=None)
def l2_cache_size() -> int:
    """Bytes of level-2 cache of one core (0 when the OS does not say)."""
    sizes = _cache_sizes()
    return sizes.get((2, "Unified"), sizes.get((2, "Data"), 0))


@functools.lru_cache(maxsize=None)
def l1_data_cache_size() -> int:
    """Bytes of level-1 data cache of one core (0 when the OS does not say)."""
    return _cache_sizes().get((1, "Data"), 0)


@functools.lru_cache(maxsize=None)
def max_clock_khz() -> int:
    """Maximum clock of cpu0 in kHz (cpufreq), else the current 'cpu MHz' of /proc/cpuinfo, else 0."""
    value = (_read(_CPUFREQ_MAX) or "").strip()
    if value.isdigit():
        return int(value)
    return current_clock_khz()


def current_clock_khz() -> int:
    """Mean current clock over all CPUs in kHz from /proc/cpuinfo (0 when not reported)."""
    text = _read(_CPUINFO) or ""
    values = []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "cpu MHz":
            try:
                values.append(float(value))
            except ValueError:
                pass
    return int(sum(values) / len(values) * 1000) if values else 0


@functools.lru_cache(maxsize=None)
def device_uuid() -> _uuid.UUID:
    """A stable identifier of this machine's CPU device (from the machine id, else the host name)."""
    machine = (_read("/etc/machine-id") or _read("/var/lib/dbus/machine-id") or platform.node()).strip()
    return _uuid.uuid5(_uuid.NAMESPACE_OID, f"torchdevice:cpu:{machine}")


@functools.lru_cache(maxsize=None)
def native_bf16() -> bool:
    """Whether the CPU computes bfloat16 in hardware (AVX512-BF16, AMX, or Arm BF16)."""
    import torch

    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, probe, None) for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    checks = [check for check in checks if check is not None]
    if checks:  # torch asks the CPU and the OS itself
        if any(check() for check in checks):
            return True
    else:  # torch < 2.3 has no probes: the kernel's CPU flags (x86)
        x86 = _cpuinfo_fields().get("flags", "").split()
        if "avx512_bf16" in x86 or "amx_bf16" in x86:
            return True
    return "bf16" in _cpuinfo_fields().get("Features", "").split()  # Arm


# -- process memory ---------------------------------------------------------------
class _ProcFile:
    """A /proc/self file kept open and re-read with pread (about 1 us instead of ~50 us per open).

    The descriptor is reopened after a fork: /proc/self resolves when opened, so
    an inherited descriptor would describe the parent.
    """

    def __init__(self, path):
        self.path = path
        self.pid = None
        self.fd = None
        self.lock = threading.Lock()

    def read(self):
        pid = os.getpid()
        with self.lock:
            if self.pid != pid:
                try:
                    self.fd = os.open(self.path, os.O_RDONLY)
                except OSError:
                    self.fd = None
                self.pid = pid
            if self.fd is None:
                return None
            try:
                return os.pread(self.fd, 16384, 0)
            except OSError:
                return None


_STATM = _ProcFile("/proc/self/statm")
_STATUS = _ProcFile(_PROC_STATUS)
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _status_bytes(*keys):
    data = _STATUS.read()
    if data is None:
        return None
    found = {}
    for line in data.decode("ascii", "replace").splitlines():
        key, _, rest = line.partition(":")
        if key in keys:
            found[key] = int(rest.split()[0]) * 1024
    return tuple(found.get(key, 0) for key in keys)


def _rusage_peak() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def resident() -> int:
    """Resident bytes of this process now (``/proc/self/statm``), else the peak from getrusage."""
    data = _STATM.read()
    if data is not None:
        return int(data.split()[1]) * _PAGE
    return _rusage_peak()


def process_memory():
    """(resident bytes now, peak resident bytes since start or the last reset)."""
    values = _status_bytes("VmRSS", "VmHWM")
    if values is not None:
        return values
    peak = _rusage_peak()
    return peak, peak


def reset_process_peak() -> bool:
    """Reset the kernel's peak resident size (VmHWM) to the current size; False if unsupported."""
    try:
        with open(_CLEAR_REFS, "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


@functools.lru_cache(maxsize=None)
def _malloc_trim():
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_heap() -> bool:
    """Give freed C-heap pages back to the OS (glibc ``malloc_trim``); False where unavailable."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def cpu_times():
    """(busy, total) jiffies summed over all CPUs since boot, from /proc/stat; None elsewhere."""
    text = _read("/proc/stat")
    if not text or not text.startswith("cpu "):
        return None
    values = [int(v) for v in text.splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user/nice
    return total - idle, total
