"""Area "memory" on the CPU target: process-level figures with real, resettable peaks."""
import gc
import os
import pickle
import warnings

import pytest
import torch

import torchdevice
from conftest import clean_env, run_python
from torch_features import needs
from torchdevice.ops.device.errors import TargetUnsupportedError
from torchdevice.ops.memory import stats as memory_stats

MiB = 2 ** 20
SIZE = 256 * MiB
linux = pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux /proc")


def status(key):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def meminfo(key):
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


@linux
def test_allocated_is_resident_memory(patched):
    allocated = torch.cuda.memory_allocated()
    assert abs(allocated - status("VmRSS")) < 16 * MiB
    assert torch.cuda.memory_reserved() >= allocated - 16 * MiB


@linux
def test_peak_rises_with_a_large_tensor_and_resets(patched):
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    assert torch.cuda.max_memory_allocated() < base + 16 * MiB, "reset brings the peak down to now"
    x = torch.ones(SIZE // 4, device="cuda")  # touches every page
    during = torch.cuda.memory_allocated()
    assert during >= base + 0.9 * SIZE
    del x
    after = torch.cuda.memory_allocated()
    assert after < during - 0.5 * SIZE, "freeing a large tensor returns its pages"
    peak = torch.cuda.max_memory_allocated()
    assert peak >= base + 0.9 * SIZE, "the peak remembers the freed tensor"
    assert torch.cuda.max_memory_reserved() >= base + 0.9 * SIZE
    assert torch.cuda.memory_stats()["allocated_bytes.all.peak"] >= base + 0.9 * SIZE
    torch.cuda.reset_peak_memory_stats()
    assert torch.cuda.max_memory_allocated() < base + 0.5 * SIZE
    assert abs(status("VmHWM") - status("VmRSS")) < 16 * MiB, "the kernel's own peak was reset"


@linux
def test_peak_falls_back_to_sampling_when_the_kernel_refuses(patched, monkeypatch):
    from torchdevice.ops.device import cpu

    monkeypatch.setattr(cpu, "reset_process_peak", lambda: False)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    x = torch.ones(SIZE // 4, device="cuda")
    torch.cuda.synchronize()
    import time
    time.sleep(10 * memory_stats.SAMPLE_INTERVAL)  # the background sampler sees the tensor
    del x
    assert torch.cuda.max_memory_allocated() >= base + 0.9 * SIZE
    torch.cuda.reset_peak_memory_stats()
    assert torch.cuda.max_memory_allocated() < base + 0.5 * SIZE


def test_memory_stats_has_the_keys_code_reads(patched):
    stats = torch.cuda.memory_stats()
    for key in ("allocated_bytes.all.current", "allocated_bytes.all.peak", "allocated_bytes.all.allocated",
                "allocated_bytes.all.freed", "reserved_bytes.all.current", "reserved_bytes.all.peak",
                "active_bytes.all.current", "active_bytes.all.peak", "requested_bytes.all.current",
                "inactive_split_bytes.all.current", "allocation.all.current", "segment.all.current",
                "num_alloc_retries", "num_ooms", "max_split_size", "oversize_allocations.current"):
        assert key in stats, key
        assert isinstance(stats[key], int)
    assert list(stats) == sorted(stats), "flat form is sorted, as torch's"
    assert stats["num_ooms"] == 0 and stats["num_alloc_retries"] == 0
    assert stats["active_bytes.all.current"] == stats["allocated_bytes.all.current"]
    nested = torch.cuda.memory_stats_as_nested_dict()
    assert set(nested["allocated_bytes"]) == {"all", "small_pool", "large_pool"}
    assert set(nested["allocated_bytes"]["all"]) == {"current", "peak", "allocated", "freed"}
    assert abs(nested["allocated_bytes"]["all"]["current"] - torch.cuda.memory_allocated()) < 16 * MiB


def test_memory_module_and_torch_cuda_agree(patched):
    assert torch.cuda.memory.memory_stats is torch.cuda.memory_stats
    assert torch.cuda.memory.mem_get_info is torch.cuda.mem_get_info
    # torch's own helpers in torch.cuda.memory call through the module and see the same figures
    assert torch.cuda.memory.memory_allocated() > 0


@linux
def test_mem_get_info_is_ram(patched):
    free, total = torch.cuda.mem_get_info()
    assert 0 < free <= total
    assert total == torch.cuda.get_device_properties().total_memory
    limit = None
    try:
        text = open("/sys/fs/cgroup/memory.max").read().strip()
        limit = int(text) if text.isdigit() else None
    except OSError:
        pass
    assert total == (min(limit, meminfo("MemTotal")) if limit else meminfo("MemTotal"))
    assert abs(free - meminfo("MemAvailable")) < 1024 * MiB
    assert torch.cuda.mem_get_info("cuda:0") == pytest.approx((free, total), rel=0.1)


def test_deprecated_names_warn_like_torch(patched):
    with pytest.warns(FutureWarning, match="renamed to `torch.cuda.memory_reserved`"):
        cached = torch.cuda.memory_cached()
    assert abs(cached - torch.cuda.memory_reserved()) < 16 * MiB
    with pytest.warns(FutureWarning, match="max_memory_reserved"):
        assert torch.cuda.max_memory_cached() >= cached - 16 * MiB
    with pytest.warns(FutureWarning, match="resets /all/ peak memory stats"):
        torch.cuda.reset_max_memory_allocated()
    with pytest.warns(FutureWarning, match="resets /all/ peak memory stats"):
        torch.cuda.reset_max_memory_cached()


@linux
def test_empty_cache_returns_freed_heap(patched):
    blocks = [torch.ones(16 * 1024) for _ in range(4096)]  # 64 KiB each: served from the C heap
    keep = torch.ones(16 * 1024)  # pins the top of the heap so free() cannot shrink it by itself
    before = torch.cuda.memory_reserved()
    del blocks
    gc.collect()
    assert torch.cuda.memory_reserved() > before - 64 * MiB, "glibc keeps the freed blocks"
    torch.cuda.empty_cache()
    assert torch.cuda.memory_reserved() < before - 128 * MiB
    del keep


@needs("torch.cuda.get_per_process_memory_fraction")
def test_memory_fraction(patched):
    assert torch.cuda.get_per_process_memory_fraction() == 1.0
    torch.cuda.set_per_process_memory_fraction(0.5)
    assert torch.cuda.get_per_process_memory_fraction(0) == 0.5
    with pytest.raises(ValueError, match=r"Invalid fraction value: 1.5. Allowed range: 0~1"):
        torch.cuda.set_per_process_memory_fraction(1.5)
    with pytest.raises(TypeError, match="must be `float`"):
        torch.cuda.set_per_process_memory_fraction(1)


def test_summary_snapshot_and_processes(patched, tmp_path):
    text = torch.cuda.memory_summary()
    assert "cpu target" in text and "Allocated memory" in text and "Reserved memory" in text
    assert torch.cuda.memory_snapshot() == []
    listing = torch.cuda.list_gpu_processes()
    assert listing.startswith("GPU:0\n") and f"process {os.getpid():>10d} uses" in listing
    torch.cuda.memory._record_memory_history(max_entries=1000)
    path = tmp_path / "snapshot.pickle"
    torch.cuda.memory._dump_snapshot(str(path))
    assert pickle.loads(path.read_bytes()) == {"segments": [], "device_traces": [[]]}


@needs("torch.cuda.host_memory_stats")
def test_host_memory_stats_are_zero(patched):
    stats = torch.cuda.host_memory_stats()
    assert stats["allocated_bytes.current"] == 0 and stats["num_host_alloc"] == 0
    assert torch.cuda.host_memory_stats_as_nested_dict()["active_bytes"]["peak"] == 0
    assert torch.cuda.reset_peak_host_memory_stats() is None
    assert torch.cuda.reset_accumulated_host_memory_stats() is None
    assert torch.cuda.reset_accumulated_memory_stats() is None


@needs("torch.cuda.caching_allocator_enable")
def test_caching_allocator_blocks(patched):
    pointer = torch.cuda.caching_allocator_alloc(1 << 20)
    assert isinstance(pointer, int) and pointer != 0
    import ctypes
    ctypes.memset(pointer, 7, 1 << 20)  # real, writable memory
    assert ctypes.c_ubyte.from_address(pointer + 12345).value == 7
    torch.cuda.caching_allocator_delete(pointer)
    with pytest.raises(RuntimeError, match="invalid device pointer"):
        torch.cuda.caching_allocator_delete(pointer)
    assert torch.cuda.caching_allocator_alloc(0) == 0
    torch.cuda.caching_allocator_enable(False)
    if hasattr(torch.cuda, "caching_allocator_disabled"):  # not in torch 2.6
        with torch.cuda.caching_allocator_disabled():
            assert torch.ones(3, device="cuda").sum().item() == 3
    assert torch.cuda.get_allocator_backend() == "native"


@needs("torch.cuda.MemPool")
def test_mem_pool(patched):
    pool = torch.cuda.MemPool()
    other = torch.cuda.MemPool()
    assert pool.id != other.id and len(pool.id) == 2
    assert pool.use_count() == 1
    with torch.cuda.use_mem_pool(pool):
        assert pool.use_count() == 2
        x = torch.ones(8, device="cuda")
    assert pool.use_count() == 1 and x.sum().item() == 8
    assert pool.snapshot() == []
    with pytest.raises(TargetUnsupportedError, match=r"torch.cuda.MemPool\(allocator=...\).*cpu target"):
        torch.cuda.MemPool(allocator=object())


def test_mem_pool_context_tracks_the_active_pool():
    """MemPoolContext (torch 2.5 to 2.7 list it in torch.cuda) and use_mem_pool keep the active pool."""
    from torchdevice.ops.memory import management

    class State:  # what _mem_pool needs of the area's state
        def index(self, device, api):
            return 0

    MemPool, MemPoolContext, use_mem_pool = management._mem_pool(State())
    outer, inner = MemPool(), MemPool()
    assert MemPoolContext.active_pool() is None
    context = MemPoolContext(outer)
    assert MemPoolContext.active_pool() is outer
    with use_mem_pool(inner):
        assert MemPoolContext.active_pool() is inner and inner.use_count() == 2
    assert MemPoolContext.active_pool() is outer and inner.use_count() == 1
    del context
    assert MemPoolContext.active_pool() is None


@needs("torch.cuda.MemPoolContext")
def test_mem_pool_context_is_patched(patched):
    pool = torch.cuda.MemPool()
    with torch.cuda.use_mem_pool(pool):
        assert torch.cuda.MemPoolContext.active_pool() is pool
    assert torch.cuda.MemPoolContext.active_pool() is None


def test_pluggable_allocator_is_a_clear_error(patched):
    with pytest.raises(TargetUnsupportedError) as info:
        torch.cuda.memory.CUDAPluggableAllocator("alloc.so", "my_malloc", "my_free")
    assert "torch.cuda.memory.CUDAPluggableAllocator" in str(info.value) and "cpu target" in str(info.value)
    with pytest.raises(TargetUnsupportedError, match="change_current_allocator.*cpu target"):
        torch.cuda.memory.change_current_allocator(None)


def test_memory_queries_do_not_touch_tensor_creation(unpatched):
    """No factory, Tensor method or allocator hook belongs to the memory area: allocation costs nothing extra."""
    torchdevice.patch(strict=True, device="cpu")
    from torchdevice.core.patch import REGISTRY

    memory_targets = [a.record.target for area, a in REGISTRY.applied_records() if area == "memory"]
    assert memory_targets and all(t.startswith("torch.cuda.") for t in memory_targets)


def test_sampler_stops_after_unpatch(unpatched, monkeypatch):
    from torchdevice.ops.device import cpu

    torchdevice.patch(strict=True, device="cpu")
    monkeypatch.setattr(cpu, "reset_process_peak", lambda: False)
    torch.cuda.reset_peak_memory_stats()  # starts the background sampler
    import threading
    assert any(t.name == "torchdevice-memory-sampler" for t in threading.enumerate())
    torchdevice.unpatch()
    gc.collect()
    for thread in [t for t in threading.enumerate() if t.name == "torchdevice-memory-sampler"]:
        thread.join(timeout=2)
        assert not thread.is_alive()


def test_no_figures_are_read_at_apply_time(unpatched, monkeypatch):
    from torchdevice.ops.device import cpu

    calls = []
    monkeypatch.setattr(cpu, "resident", lambda: calls.append(1) or 1)
    torchdevice.patch(strict=True, device="cpu")
    assert calls == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.cuda.memory_allocated() == 1


@linux
def test_kept_proc_files_follow_fork():
    """The /proc/self descriptors are reopened in a forked child, so a child reports its own figures."""
    from torchdevice.ops.device import cpu

    assert cpu._status_bytes("VmRSS")  # opens the descriptor in this process
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        text = cpu._STATUS.read().decode()
        own = [line for line in text.splitlines() if line.startswith("Pid:")][0].split()[1]
        os.write(write_end, own.encode())
        os._exit(0)
    os.close(write_end)
    reported = os.read(read_end, 64).decode()
    os.waitpid(pid, 0)
    assert reported == str(pid)


@linux
def test_training_loop_peak_logging_in_a_real_program():
    """An unmodified CUDA-style loop that logs per-step peaks, run through the autoload hook."""
    done = run_python("""
        import torch
        assert torch.cuda.is_available()
        peaks = []
        for size_mib in (64, 256, 32):
            torch.cuda.reset_peak_memory_stats()
            start = torch.cuda.memory_allocated()
            x = torch.ones(size_mib * 2**20 // 4, device="cuda")
            del x
            torch.cuda.synchronize()
            peaks.append((torch.cuda.max_memory_allocated() - start) // 2**20)
        free, total = torch.cuda.mem_get_info()
        print(peaks, free <= total)
    """, env=clean_env(TORCHDEVICE_DEVICE="cpu"))
    assert done.returncode == 0, done.stderr
    peaks, ok = done.stdout.strip().rsplit(" ", 1)
    first, second, third = eval(peaks)
    assert ok == "True"
    assert 58 <= first <= 80 and 240 <= second <= 280 and 28 <= third <= 48, peaks


def test_without_proc_the_figures_are_the_rusage_peak(unpatched, monkeypatch):
    """macOS/Windows CPU target: no /proc, so current and peak are getrusage's peak resident size."""
    import resource
    import sys

    from torchdevice.ops.device import cpu

    monkeypatch.setattr(cpu._STATM, "read", lambda: None)
    monkeypatch.setattr(cpu._STATUS, "read", lambda: None)
    torchdevice.patch(strict=True, device="cpu")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    assert abs(torch.cuda.memory_allocated() - peak) < 64 * MiB
    assert torch.cuda.max_memory_allocated() >= torch.cuda.memory_allocated()
    assert "sampled peak" in torch.cuda.memory_summary()
