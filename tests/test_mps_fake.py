"""The MPS target's device queries and memory figures, through the fake MPS backend (tests/fake_mps.py)."""
import gc
import time

import pytest
import torch

import torchdevice
from fake_mps import GiB, FakeMPS
from torchdevice import coverage
from torchdevice.ops.device.errors import TargetUnsupportedError
from torchdevice.ops.memory import stats as memory_stats


@pytest.fixture
def fake_mps(monkeypatch):
    fake = FakeMPS(monkeypatch)
    status = fake.activate()
    assert status["target"] == "mps:0"
    yield fake
    torchdevice.unpatch()
    gc.collect()  # lets a background sampler notice its figures are gone before the fake is removed


def test_properties_describe_the_apple_gpu(fake_mps):
    props = torch.cuda.get_device_properties(0)
    assert props.name == "Apple M2 Pro" == torch.cuda.get_device_name()
    assert props.total_memory == fake_mps.total
    assert props.multi_processor_count == 19
    # Capability 8.0 stands for bfloat16 support (macOS 14), which torch 2.2 cannot detect: 7.0 there.
    capability = (8, 0) if hasattr(torch.backends.mps, "is_macos_or_newer") else (7, 0)
    assert (props.major, props.minor) == capability == torch.cuda.get_device_capability()
    assert props.warp_size == 32 and props.is_integrated == 1
    # torch 2.2 cannot tell macOS 14 (bfloat16 on MPS) from older: it answers False there.
    assert torch.cuda.is_bf16_supported() is hasattr(torch.backends.mps, "is_macos_or_newer")
    if hasattr(torch.cuda, "is_tf32_supported"):  # torch >= 2.8
        assert torch.cuda.is_tf32_supported() is False


def test_older_macos_has_no_bf16(monkeypatch):
    fake = FakeMPS(monkeypatch, macos14=False)
    fake.activate()
    try:
        assert torch.cuda.is_bf16_supported() is False
        assert torch.cuda.get_device_capability() == (7, 0)
    finally:
        torchdevice.unpatch()


def test_memory_figures_come_from_torch_mps(fake_mps):
    assert torch.cuda.memory_allocated() == 1 * GiB
    assert torch.cuda.memory_reserved() == 2 * GiB
    assert torch.cuda.mem_get_info() == (fake_mps.total - 2 * GiB, fake_mps.total)
    if hasattr(torch.cuda, "device_memory_used"):  # torch >= 2.6
        assert torch.cuda.device_memory_used() == 2 * GiB
    stats = torch.cuda.memory_stats()
    assert stats["allocated_bytes.all.current"] == 1 * GiB and stats["reserved_bytes.all.current"] == 2 * GiB
    assert f"{1024:>12.3f} MB" in torch.cuda.list_gpu_processes()


def test_sampled_peak_rises_and_resets(fake_mps):
    torch.cuda.reset_peak_memory_stats()  # starts sampling
    assert torch.cuda.max_memory_allocated() == 1 * GiB
    fake_mps.allocated = 5 * GiB
    time.sleep(20 * memory_stats.SAMPLE_INTERVAL)  # a short-lived peak between two queries
    fake_mps.allocated = 1 * GiB
    assert torch.cuda.memory_allocated() == 1 * GiB
    assert torch.cuda.max_memory_allocated() == 5 * GiB
    assert torch.cuda.memory_stats()["allocated_bytes.all.peak"] == 5 * GiB
    torch.cuda.reset_peak_memory_stats()
    assert torch.cuda.max_memory_allocated() == 1 * GiB


def test_synchronize_empty_cache_and_fraction_call_torch_mps(fake_mps):
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(0.5)
    assert fake_mps.calls == [("synchronize",), ("empty_cache",), ("set_per_process_memory_fraction", 0.5)]
    assert torch.cuda.memory_reserved() == 1 * GiB, "the cache was released"
    if hasattr(torch.cuda, "get_per_process_memory_fraction"):  # torch >= 2.5
        assert torch.cuda.get_per_process_memory_fraction() == 0.5


def test_unmeasurable_readings_name_mps(fake_mps):
    for name in ("utilization", "clock_rate", "temperature"):
        with pytest.raises(TargetUnsupportedError) as info:
            getattr(torch.cuda, name)()
        assert f"torch.cuda.{name}()" in str(info.value) and "mps target" in str(info.value)


def test_coverage_reports_the_applied_mps_records(fake_mps):
    rows = {row["name"]: row for row in coverage.coverage_rows()}
    assert rows["synchronize"]["kind"] == "redirected"
    assert rows["empty_cache"]["kind"] == "redirected"
    assert rows["utilization"]["kind"] == "unsupported"
    unclassified = [name for name, row in rows.items() if row["kind"] == coverage.UNCLASSIFIED_KIND]
    assert unclassified == []


def test_declared_mps_records_match_applied(fake_mps):
    """What the coverage doc declares for MPS is what applying on MPS does (for the areas applied here)."""
    applied = [row for row in coverage.coverage_rows() if row["kind"] in coverage.KINDS]
    assert len(applied) > 60
    torchdevice.unpatch()
    declared = {row["name"]: row for row in coverage.coverage_rows("mps")}
    assert [declared[row["name"]] for row in applied] == applied
