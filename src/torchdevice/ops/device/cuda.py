"""Area "cuda": the torch.cuda device API answers as a one-GPU machine would.

User code sees the masquerade (``is_available()`` is True, ``device_count()``
is ``TORCHDEVICE_DEVICE_COUNT``, default 1, ``torch.cuda._is_compiled()`` is
True) so that CUDA code takes its CUDA path. Callers inside torch (and packages
named in ``TORCHDEVICE_TRUTHFUL_MODULES``) get the real answers, so torch never
tries to launch a CUDA kernel. ``TORCHDEVICE_MASQUERADE=0`` turns the
masquerade off. ``torch._C._cuda_getDeviceCount`` is never created on a CPU
build: torch tests for its existence to decide whether it was built with CUDA.

The CUDA index a program selects (``set_device``, ``torch.cuda.device(i)``) is
remembered per thread and reported back by ``current_device()``; every index maps
to the one target device. Every index is checked by the one rule of
``core/device.check_index``: beyond ``device_count()`` it raises CUDA's
"invalid device ordinal" error, whichever API it enters by.

Device queries describe the target with facts read from the machine
(``ops/device/cpu.py``, ``ops/device/mps.py``): ``get_device_name`` is the CPU
model or the Apple GPU name, ``get_device_properties().total_memory`` the RAM
the process may use or Metal's recommended working set, and so on (table in
docs/cuda-api.md). ``get_device_capability()`` is (8, 0) where bfloat16 works
on the target (every CPU; MPS on macOS 14+) and (7, 0) elsewhere, so code that
gates bf16 / TF32 / Ampere paths on the capability takes the path the target
can run. The CUDA library front-ends (nvtx, cudart, jiterator, comm, nccl,
tunable, ...) are declared in ``cuda_libs.py`` and applied with this area.
"""
import functools
import threading

import torch

from ...core import device as _device
from ...core.patch import EMULATED, NOOP, REDIRECTED, REGISTRY, UNSUPPORTED, Patch, active_config
from . import cpu as _cpu
from . import mps as _mps
from .errors import raiser, unsupported

AREA = "cuda"
_RealDevice = torch._C.device

# The compute capability CUDA code sees (docs/cuda-api.md, "Capability").
CAPABILITY_WITH_BF16 = (8, 0)
CAPABILITY_WITHOUT_BF16 = (7, 0)


def _masquerade(real_answer, fake_answer):
    """Build is_available-style functions: the real answer for torch, the fake for users."""
    truthful = active_config().truthful_modules
    sees_truth = _device.caller_sees_truth

    def make(original):
        def answer(*args, **kwargs):
            if sees_truth(truthful):
                return real_answer
            return fake_answer
        return functools.wraps(original)(answer)
    return make


def _masquerade_original(fake_answer):
    """Like ``_masquerade``, but torch itself gets whatever the original returns."""
    return _for_users(lambda *args, **kwargs: fake_answer)


def _for_users(replacement):
    """``replacement`` for user code; torch itself gets the original.

    For what torch consults before touching the CUDA runtime (``is_initialized``,
    ``_lazy_init``): torch must keep deferring its CUDA work and raise its own
    errors instead of calling into a runtime that is absent or has no GPU. And
    for device properties: inductor reads ROCm-only fields from them and
    expects the real failure.
    """
    truthful = active_config().truthful_modules
    sees_truth = _device.caller_sees_truth

    def make(original):
        def answer(*args, **kwargs):
            if sees_truth(truthful):
                return original(*args, **kwargs)
            return replacement(*args, **kwargs)
        try:
            return functools.wraps(original)(answer)
        except (AttributeError, TypeError):
            return answer
    return make


def _current_device(original):
    get_current_index = _device.get_current_index

    def current_device():
        return get_current_index()
    return functools.wraps(original)(current_device)


def _set_device(original):
    def set_device(device):
        index = _device.index_of(device, optional=False)  # torch: an explicit index is required
        if index >= 0:  # a negative index is a no-op, as in torch
            _device.set_current_index(index, "torch.cuda.set_device")
    return functools.wraps(original)(set_device)


class device:
    """Context-manager that changes the selected CUDA index (all map to the target).

    Args:
        device (torch.device or int or str): device index to select. It's a
            no-op if this argument is a negative integer or ``None``.
    """

    def __init__(self, device):
        self.idx = -1 if device is None else _device.index_of(device)
        self.prev_idx = -1

    def __enter__(self):
        self.prev_idx = _device.get_current_index()
        if self.idx >= 0:  # checked here, where CUDA's cudaSetDevice fails for a missing device
            _device.set_current_index(self.idx, "torch.cuda.device")

    def __exit__(self, *exc):
        _device.set_current_index(self.prev_idx, "torch.cuda.device")
        return False


class device_of(device):
    """Context-manager that selects the CUDA index of the given tensor (a no-op off CUDA)."""

    def __init__(self, obj):
        super().__init__(obj.get_device() if obj.is_cuda else -1)


def _synchronize(target):
    def make(original):
        if target.type == "mps":
            def synchronize(device=None):
                if device is not None:
                    _device.checked_index(device, "torch.cuda.synchronize")
                _mps.synchronize()
        else:
            def synchronize(device=None):
                if device is not None:
                    _device.checked_index(device, "torch.cuda.synchronize")
                return None  # CPU ops have completed when they return
        return functools.wraps(original)(synchronize)
    return make


def _noop(original):
    def noop(*args, **kwargs):
        return None
    return functools.wraps(original)(noop)


# -- device properties --------------------------------------------------------------------
class _CudaDeviceProperties:
    """What ``torch.cuda.get_device_properties()`` returns while redirecting.

    Read-only attributes with the names of torch's ``_CudaDeviceProperties``,
    filled with facts about the target (docs/cuda-api.md lists each field's
    source). An attribute torch has but the target cannot answer raises an
    AttributeError naming it.
    """

    __slots__ = ("_fields", "_target")

    def __init__(self, fields, target_type):
        object.__setattr__(self, "_fields", dict(fields))
        object.__setattr__(self, "_target", target_type)

    def __getattr__(self, name):
        fields = object.__getattribute__(self, "_fields")
        try:
            return fields[name]
        except KeyError:
            target = object.__getattribute__(self, "_target")
            raise AttributeError(f"'_CudaDeviceProperties' object has no attribute '{name}' "
                                 f"(torchdevice has no such fact for the {target} target)") from None

    def __setattr__(self, name, value):
        raise AttributeError(f"readonly attribute '{name}' of '_CudaDeviceProperties'")

    def __dir__(self):
        return sorted(set(object.__dir__(self)) | set(self._fields))

    def __repr__(self):
        f = self._fields
        return (f"_CudaDeviceProperties(name='{f['name']}', major={f['major']}, minor={f['minor']}, "
                f"total_memory={f['total_memory'] // (1024 * 1024)}MB, "
                f"multi_processor_count={f['multi_processor_count']}, uuid={f['uuid']}, "
                f"pci_bus_id={f['pci_bus_id']}, pci_device_id={f['pci_device_id']}, "
                f"pci_domain_id={f['pci_domain_id']}, L2_cache_size={f['L2_cache_size'] // (1024 * 1024)}MB)")


def bf16_supported(target_type, including_emulation=True):
    if target_type == "mps":
        return _mps.bf16()
    return True if including_emulation else _cpu.native_bf16()


def capability(target_type):
    return CAPABILITY_WITH_BF16 if bf16_supported(target_type) else CAPABILITY_WITHOUT_BF16


def property_fields(target_type):
    """The facts behind get_device_properties() for a target type."""
    major, minor = capability(target_type)
    common = {"major": major, "minor": minor, "is_integrated": 1, "is_multi_gpu_board": 0,
              "pci_bus_id": 0, "pci_device_id": 0, "pci_domain_id": 0,
              "memory_clock_rate": 0, "memory_bus_width": 0, "regs_per_multiprocessor": 0}
    if target_type == "mps":
        cores = _mps.core_count()
        return dict(common, name=_mps.name(), total_memory=_mps.total_memory(),
                    multi_processor_count=cores, uuid=_cpu.device_uuid(), L2_cache_size=0,
                    warp_size=_mps.SIMD_WIDTH, max_threads_per_block=_mps.MAX_THREADS_PER_GROUP,
                    max_threads_per_multi_processor=_mps.THREADS_PER_CORE,
                    shared_memory_per_block=_mps.THREADGROUP_MEMORY,
                    shared_memory_per_block_optin=_mps.THREADGROUP_MEMORY,
                    shared_memory_per_multiprocessor=_mps.THREADGROUP_MEMORY, clock_rate=0)
    l1 = _cpu.l1_data_cache_size()
    return dict(common, name=_cpu.name(), total_memory=_cpu.total_memory(),
                multi_processor_count=_cpu.logical_cpus(), uuid=_cpu.device_uuid(),
                L2_cache_size=_cpu.l2_cache_size(), warp_size=1, max_threads_per_block=1,
                max_threads_per_multi_processor=1, shared_memory_per_block=l1,
                shared_memory_per_block_optin=l1, shared_memory_per_multiprocessor=l1,
                clock_rate=_cpu.max_clock_khz())


def _properties_api(target):
    """get_device_properties / get_device_name / get_device_capability sharing one cached object."""
    cache = []
    lock = threading.Lock()

    def properties(device=None, api="torch.cuda.get_device_properties"):
        _device.checked_index(device, api)
        if not cache:
            with lock:
                if not cache:
                    cache.append(_CudaDeviceProperties(property_fields(target.type), target.type))
        return cache[0]

    def get_device_properties(device=None):
        return properties(device)

    def get_device_name(device=None):
        return properties(device, "torch.cuda.get_device_name").name

    def get_device_capability(device=None):
        props = properties(device, "torch.cuda.get_device_capability")
        return props.major, props.minor

    return {"get_device_properties": get_device_properties, "get_device_name": get_device_name,
            "get_device_capability": get_device_capability}


def _is_bf16_supported(target):
    def make(original):
        def is_bf16_supported(including_emulation=True):
            return bf16_supported(target.type, including_emulation)
        return functools.wraps(original)(is_bf16_supported)
    return make


def _false(original):
    def answer(*args, **kwargs):
        return False
    return functools.wraps(original)(answer)


def _can_device_access_peer(target):
    def make(original):
        def can_device_access_peer(device, peer_device):
            index = _device.checked_index(device, "torch.cuda.can_device_access_peer")
            peer = _device.check_index(_device.index_of(peer_device, optional=False),
                                       "torch.cuda.can_device_access_peer (peer device)")
            return index != peer  # every index is the same memory; CUDA answers False for itself
        return functools.wraps(original)(can_device_access_peer)
    return make


def _device_memory_used(target):
    info = _mps.memory_info if target.type == "mps" else _cpu.memory_info

    def make(original):
        def device_memory_used(device=None):
            _device.checked_index(device, "torch.cuda.device_memory_used")
            free, total = info()
            return total - free
        return functools.wraps(original)(device_memory_used)
    return make


def _utilization(target):
    last = [(0, 0)]
    lock = threading.Lock()

    def make(original):
        def utilization(device=None):
            _device.checked_index(device, "torch.cuda.utilization")
            now = _cpu.cpu_times()
            if now is None:
                raise unsupported("torch.cuda.utilization()", target.type,
                                  "this system has no /proc/stat to measure CPU busy time",
                                  "Guard the call with try/except RuntimeError.")
            with lock:
                before, last[0] = last[0], now
            busy, total = now[0] - before[0], now[1] - before[1]
            return round(100 * busy / total) if total > 0 else 0
        return functools.wraps(original)(utilization)
    return make


def _clock_rate(target):
    def make(original):
        def clock_rate(device=None):
            _device.checked_index(device, "torch.cuda.clock_rate")
            khz = _cpu.current_clock_khz()
            if not khz:
                raise unsupported("torch.cuda.clock_rate()", target.type,
                                  "this system does not report the CPU clock in /proc/cpuinfo",
                                  "Guard the call with try/except RuntimeError.")
            return khz // 1000
        return functools.wraps(original)(clock_rate)
    return make


_SYNC_DEBUG_MODES = {"default": 0, "warn": 1, "error": 2}


def _sync_debug_mode():
    """set/get_sync_debug_mode keeping the setting (the target has no host-device syncs to report)."""
    state = [0]

    def setter(original):
        def set_sync_debug_mode(debug_mode):
            if isinstance(debug_mode, str):
                if debug_mode not in _SYNC_DEBUG_MODES:
                    raise RuntimeError("invalid value of debug_mode, expected one of `default`, `warn`, `error`")
                debug_mode = _SYNC_DEBUG_MODES[debug_mode]
            if debug_mode not in (0, 1, 2):
                raise RuntimeError("invalid value of debug_mode, expected one of 0,1,2")
            state[0] = int(debug_mode)
        return functools.wraps(original)(set_sync_debug_mode)

    def getter(original):
        def get_sync_debug_mode():
            return state[0]
        return functools.wraps(original)(get_sync_debug_mode)
    return setter, getter


def _unsupported(api, target, why, instead):
    return lambda original: raiser(api, target.type, why, instead, original)


def records():
    from . import accelerator, cuda_libs

    target = _device.current()
    cfg = active_config()
    count = target.count
    on_mps = target.type == "mps"
    props = _properties_api(target)
    set_sync, get_sync = _sync_debug_mode()
    facts = "the Apple GPU (torch.backends.mps)" if on_mps else "the CPU (/proc/cpuinfo, /proc/meminfo)"
    no_sensor = "there is no NVML sensor for it off NVIDIA hardware"
    out = [
        Patch("torch.cuda", "current_device", _current_device, kind=EMULATED,
              note="the index this thread selected by set_device/device(), default 0"),
        Patch("torch.cuda", "set_device", _set_device, kind=EMULATED,
              note="remembers the index per thread (checked against device_count()); all map to the target"),
        Patch("torch.cuda", "device", lambda original: device, kind=EMULATED, note="selects an index (context)"),
        Patch("torch.cuda", "device_of", lambda original: device_of, kind=EMULATED,
              note="selects the tensor's CUDA index (context); a no-op for tensors on the target"),
        Patch("torch.cuda", "synchronize", _synchronize(target), kind=REDIRECTED if on_mps else NOOP,
              note="torch.mps.synchronize()" if on_mps else "CPU work has finished when each op returns"),
        Patch("torch.cuda", "init", _noop, kind=NOOP, note="nothing to initialise"),
        Patch("torch.cuda", "_lazy_init", _for_users(lambda: None), kind=NOOP,
              note="a no-op for user code; torch itself gets the real one"),
        Patch("torch.cuda", "is_initialized", _for_users(lambda: True), kind=EMULATED,
              note="True for user code, the real answer for torch itself"),
        Patch("torch.cuda", "get_device_properties", _for_users(props["get_device_properties"]), kind=EMULATED,
            note=f"facts about {facts}; fields in docs/cuda-api.md"),
        Patch("torch.cuda", "get_device_name", lambda original: functools.wraps(original)(props["get_device_name"]),
              kind=EMULATED, note="the Metal device name, e.g. 'Apple M2 Pro'" if on_mps else "the CPU model name"),
        Patch("torch.cuda", "get_device_capability", lambda original: functools.wraps(original)(
            props["get_device_capability"]), kind=EMULATED,
            note="(8, 0) on macOS 14+ (bf16 works), else (7, 0)" if on_mps else "(8, 0): bf16 works on every CPU"),
        Patch("torch.cuda", "is_bf16_supported", _is_bf16_supported(target), kind=EMULATED,
              note="True on macOS 14+" if on_mps
              else "True; including_emulation=False: whether the CPU has AVX512-BF16/AMX/Arm BF16"),
        Patch("torch.cuda", "is_tf32_supported", _false, kind=EMULATED,
              note="False: no TF32 math on the target (the allow_tf32 flags stay settable)"),
        Patch("torch.cuda", "can_device_access_peer", _can_device_access_peer(target), kind=EMULATED,
              note="True between different valid indices: they are the same memory"),
        Patch("torch.cuda", "ipc_collect", _noop, kind=NOOP, note="no CUDA IPC memory to collect"),
        Patch("torch.cuda", "device_memory_used", _device_memory_used(target), kind=EMULATED,
              note="recommended working set minus driver-held memory" if on_mps
              else "RAM in use on the machine: total minus MemAvailable"),
        Patch("torch.cuda", "set_sync_debug_mode", set_sync, kind=NOOP,
              note="the mode is kept and reported; there are no host-device syncs to flag"),
        Patch("torch.cuda", "get_sync_debug_mode", get_sync, kind=NOOP, note="the mode last set (default 0)"),
        Patch("torch.cuda", "memory_usage", _unsupported(
            "torch.cuda.memory_usage()", target, f"it reads the memory-controller busy time from NVML and {no_sensor}",
            "For memory in use call torch.cuda.mem_get_info() or torch.cuda.memory_allocated()."),
            kind=UNSUPPORTED, note="clear error: no memory-controller counter"),
        Patch("torch.cuda", "temperature", _unsupported(
            "torch.cuda.temperature()", target, f"it reads the GPU temperature from NVML and {no_sensor}",
            "Guard the call with try/except RuntimeError."), kind=UNSUPPORTED, note="clear error: no sensor"),
        Patch("torch.cuda", "power_draw", _unsupported(
            "torch.cuda.power_draw()", target, f"it reads the board power from NVML and {no_sensor}",
            "Guard the call with try/except RuntimeError."), kind=UNSUPPORTED, note="clear error: no sensor"),
    ]
    if on_mps:
        out += [
            Patch("torch.cuda", "utilization", _unsupported(
                "torch.cuda.utilization()", target, "Metal exposes no GPU busy-time counter to torch",
                "Guard the call with try/except RuntimeError."), kind=UNSUPPORTED,
                note="clear error: no busy-time counter"),
            Patch("torch.cuda", "clock_rate", _unsupported(
                "torch.cuda.clock_rate()", target, "Metal exposes no GPU clock to torch",
                "Guard the call with try/except RuntimeError."), kind=UNSUPPORTED,
                note="clear error: no clock reading"),
        ]
    else:
        out += [
            Patch("torch.cuda", "utilization", _utilization(target), kind=EMULATED,
                  note="% of CPU time busy (all cores) since the previous call, from /proc/stat"),
            Patch("torch.cuda", "clock_rate", _clock_rate(target), kind=EMULATED,
                  note="mean current CPU clock in MHz from /proc/cpuinfo"),
        ]
    if cfg.masquerade:
        out += [
            Patch("torch.cuda", "is_available", _masquerade(False, True), kind=EMULATED,
                  note="True for user code, the real answer for torch itself"),
            Patch("torch.cuda", "device_count", _masquerade(0, count), kind=EMULATED,
                  note="TORCHDEVICE_DEVICE_COUNT (default: 1, or as many as a launcher started here) for user code"),
            Patch("torch.cuda", "_is_compiled", _masquerade_original(True), kind=EMULATED,
                  note="True for user code, the real answer for torch itself"),
            # NVML-based counts that libraries (and torch's own device_count) consult.
            Patch("torch.cuda", "_device_count_nvml", _masquerade_original(count), kind=EMULATED,
                  note="the masqueraded count for user code; torch itself gets NVML's answer"),
            Patch("torch.cuda", "_raw_device_count_nvml", _masquerade_original(count), kind=EMULATED,
                  note="the masqueraded count for user code; torch itself gets NVML's answer"),
            # Exists on CUDA builds only (never created: torch reads its presence as "built with CUDA").
            Patch("torch._C", "_cuda_getDeviceCount", _masquerade_original(count), kind=EMULATED,
                  note="CUDA builds: the masqueraded count for user code"),
        ]
    return out + cuda_libs.records(target, cfg) + accelerator.records(target, cfg)


def apply_patches():
    """Apply the cuda area (fenced: a second call changes nothing)."""
    return REGISTRY.apply_area(AREA, records())
