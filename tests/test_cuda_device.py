"""Area "cuda" on the CPU target: device queries answer with facts about this machine.

Expected values are read here independently of torchdevice (from /proc and
/sys directly), so a wrong source in ops/device/cpu.py fails the test.
"""
import os
import re
import uuid

import pytest
import torch

import torchdevice
from conftest import clean_env, run_python
from torch_features import needs
from torchdevice.ops.device.errors import TargetUnsupportedError


def cpuinfo_model():
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name") or line.startswith("Hardware"):
                return line.split(":", 1)[1].strip()
    return None


def meminfo(key):
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def cgroup_limit():
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        return int(text) if text.isdigit() and int(text) < 1 << 60 else None
    return None


def expected_total():
    limit = cgroup_limit()
    total = meminfo("MemTotal")
    return min(total, limit) if limit else total


linux = pytest.mark.skipif(not os.path.exists("/proc/meminfo"), reason="reads Linux /proc")


@linux
def test_properties_are_facts_about_this_cpu(patched):
    props = torch.cuda.get_device_properties(0)
    assert props.name == cpuinfo_model()
    assert props.total_memory == expected_total()
    assert props.multi_processor_count == len(os.sched_getaffinity(0))
    assert (props.major, props.minor) == (8, 0)
    assert props.is_integrated == 1 and props.is_multi_gpu_board == 0
    l2 = None
    base = "/sys/devices/system/cpu/cpu0/cache"
    for entry in os.listdir(base) if os.path.isdir(base) else ():
        if entry.startswith("index") and open(f"{base}/{entry}/level").read().strip() == "2":
            size = open(f"{base}/{entry}/size").read().strip()
            l2 = int(size[:-1]) * {"K": 1024, "M": 1024 ** 2}[size[-1]]
    assert props.L2_cache_size == (l2 or 0)
    assert isinstance(props.uuid, uuid.UUID) and props.uuid == torch.cuda.get_device_properties("cuda").uuid
    assert props.warp_size == 1


def test_properties_repr_and_readonly(patched):
    props = torch.cuda.get_device_properties()
    text = repr(props)
    assert text.startswith("_CudaDeviceProperties(name='") and f"total_memory={props.total_memory // 2**20}MB" in text
    with pytest.raises(AttributeError, match="readonly"):
        props.major = 9
    with pytest.raises(AttributeError, match="gcnArchName.*cpu target"):
        props.gcnArchName


def test_name_and_capability_follow_properties(patched):
    props = torch.cuda.get_device_properties()
    assert torch.cuda.get_device_name() == props.name == torch.cuda.get_device_name("cuda:0")
    assert torch.cuda.get_device_capability() == (props.major, props.minor) == (8, 0)


def test_device_argument_forms(patched):
    name = torch.cuda.get_device_name()
    for spec in (None, 0, "cuda", "cuda:0", torch.device("cuda"), torch.device("cuda", 0), torch.device("cpu")):
        assert torch.cuda.get_device_name(spec) == name, spec
    with pytest.raises(AssertionError, match="invalid device ordinal"):  # torch's check raises AssertionError
        torch.cuda.get_device_properties(1)  # TORCHDEVICE_DEVICE_COUNT defaults to 1
    with pytest.raises(ValueError, match="Expected a cuda device"):
        torch.cuda.get_device_name("meta")


def test_device_count_setting_widens_valid_indices(unpatched):
    torchdevice.patch(strict=True, device="cpu", device_count=2)
    assert torch.cuda.get_device_name(1) == torch.cuda.get_device_name(0)
    assert torch.cuda.can_device_access_peer(0, 1) is True
    assert torch.cuda.can_device_access_peer(1, 1) is False  # CUDA's answer for a device and itself
    with pytest.raises(AssertionError, match=r"peer device.*invalid device ordinal"):
        torch.cuda.can_device_access_peer(0, 2)


def test_bf16_and_tf32(patched):
    assert torch.cuda.is_bf16_supported() is True
    if hasattr(torch.cpu, "_is_avx512_bf16_supported"):
        native = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    else:  # torch < 2.3: what the kernel reports
        with open("/proc/cpuinfo") as handle:
            flags = handle.read().split()
        native = "avx512_bf16" in flags or "amx_bf16" in flags or "bf16" in flags
    assert torch.cuda.is_bf16_supported(including_emulation=False) is native
    if hasattr(torch.cuda, "is_tf32_supported"):  # torch >= 2.8
        assert torch.cuda.is_tf32_supported() is False
    x = torch.ones(4, 4, dtype=torch.bfloat16, device="cuda")
    assert (x @ x).dtype == torch.bfloat16, "what is_bf16_supported promises works"


def test_is_compiled_masquerade_keeps_torch_truthful(patched):
    assert torch.cuda._is_compiled() is True, "user code sees a CUDA build"
    # torch.cuda.get_arch_list() calls _is_compiled() itself: it must see the truth (a CPU wheel
    # would otherwise call torch._C._cuda_getArchFlags, which does not exist).
    arch = torch.cuda.get_arch_list()
    if hasattr(torch._C, "_cuda_getArchFlags"):
        assert isinstance(arch, list)
    else:
        assert arch == [], "torch saw the truth (else it would have called a missing torch._C function)"
    assert not hasattr(torch._C, "_cuda_getDeviceCount") or torch.version.cuda, \
        "never create the attribute torch reads as 'built with CUDA'"


def test_is_compiled_truthful_modules(unpatched):
    torchdevice.patch(strict=True, device="cpu", truthful_modules=frozenset({"tests", "test_cuda_device"}))
    assert torch.cuda._is_compiled() is hasattr(torch._C, "_cuda_getDeviceCount")


@linux
@needs("torch.cuda.device_memory_used")
def test_device_memory_used_is_ram_in_use(patched):
    used = torch.cuda.device_memory_used()
    expected = expected_total() - meminfo("MemAvailable")
    assert abs(used - expected) < 512 * 2**20


@linux
def test_utilization_measures_busy_time(patched):
    torch.cuda.utilization()  # start a measurement interval
    end = os.times().elapsed + 0.3
    while os.times().elapsed < end:
        pass  # keep one core busy
    busy = torch.cuda.utilization()
    cores = len(os.sched_getaffinity(0))
    assert 0 <= busy <= 100
    assert busy >= 100 / cores * 0.5, f"one busy core out of {cores} should show, got {busy}%"


@linux
def test_clock_rate_is_cpu_mhz(patched):
    values = [float(line.split(":")[1]) for line in open("/proc/cpuinfo") if line.startswith("cpu MHz")]
    if not values:
        with pytest.raises(TargetUnsupportedError, match=r"torch.cuda.clock_rate\(\).*cpu target"):
            torch.cuda.clock_rate()
        return
    rate = torch.cuda.clock_rate()
    assert isinstance(rate, int) and abs(rate - sum(values) / len(values)) < 0.2 * max(values)


@pytest.mark.parametrize("name,word", [("temperature", "temperature"), ("power_draw", "power"),
                                       ("memory_usage", "memory-controller")])
def test_sensor_readings_are_clear_errors(patched, name, word):
    with pytest.raises(RuntimeError) as info:
        getattr(torch.cuda, name)()
    message = str(info.value)
    assert f"torch.cuda.{name}()" in message and "cpu target" in message and word in message
    assert "try/except" in message or "mem_get_info" in message


def test_sync_debug_mode_roundtrip(patched):
    assert torch.cuda.get_sync_debug_mode() == 0
    torch.cuda.set_sync_debug_mode("warn")
    assert torch.cuda.get_sync_debug_mode() == 1
    torch.cuda.set_sync_debug_mode(2)
    assert torch.cuda.get_sync_debug_mode() == 2
    with pytest.raises(RuntimeError, match="invalid value of debug_mode"):
        torch.cuda.set_sync_debug_mode("loud")
    torch.cuda.set_sync_debug_mode("default")
    assert torch.cuda.get_sync_debug_mode() == 0


def test_init_ipc_and_initialized(patched):
    assert torch.cuda.init() is None and torch.cuda.ipc_collect() is None
    assert torch.cuda.is_initialized() is True


def test_out_of_memory_error_is_catchable(patched):
    assert issubclass(torch.cuda.OutOfMemoryError, RuntimeError)
    # What torch raises for device OOMs (torch.OutOfMemoryError from 2.4; torch.cuda's before).
    raised = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        raise raised("MPS backend out of memory")


def test_no_raw_cuda_messages(patched):
    """No torch.cuda function of this area answers with torch's raw 'not compiled' errors."""
    green = getattr(torch.cuda, "GreenContext", None)
    calls = [torch.cuda.get_device_name, torch.cuda.get_device_properties, torch.cuda.get_device_capability,
             torch.cuda.ipc_collect, torch.cuda.get_sync_debug_mode, torch.cuda.current_blas_handle,
             getattr(torch.cuda, "current_solver_handle", None), torch.cuda.temperature, torch.cuda.cudart,
             lambda: torch.cuda.can_device_access_peer(0, 0), green and green.create]
    calls = [call for call in calls if call is not None]  # names this torch lacks (newer releases)
    for call in calls:
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - the message is what is checked
            text = str(exc)
            assert "not compiled with CUDA" not in text and "dummy base class" not in text, text
            assert "cpu target" in text, text


def test_restores_identity(unpatched):
    before = {name: torch.cuda.__dict__[name] for name in ("get_device_properties", "_is_compiled", "utilization")}
    torchdevice.patch(strict=True, device="cpu")
    assert all(torch.cuda.__dict__[name] is not obj for name, obj in before.items())
    torchdevice.unpatch()
    assert all(torch.cuda.__dict__[name] is obj for name, obj in before.items())


def test_user_subprocess_sees_gpu_facts():
    done = run_python("""
        import torch
        print(torch.cuda.get_device_name(0))
        print(torch.cuda.get_device_properties(0).total_memory)
        print(torch.cuda.get_device_capability())
    """, env=clean_env(TORCHDEVICE_DEVICE="cpu"))
    assert done.returncode == 0, done.stderr
    name, total, capability = done.stdout.splitlines()
    assert name == (cpuinfo_model() or name) and int(total) > 0 and capability == "(8, 0)"
    assert re.fullmatch(r"\d+", total)
