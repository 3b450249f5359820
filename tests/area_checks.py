"""One cheap check per patch area: what a CUDA program gets from that area, run in-process.

Each check raises (AssertionError or torch's own error) when the behaviour its area
provides is missing. tests/test_faults.py runs them under every accepted combination of
TORCHDEVICE_DISABLE_PATCHES, with a meta-test that every area has a check.
"""
import torch


def device():
    assert torch.zeros(2, device="cuda").device.type != "cuda"
    assert torch.ones(1).cuda().device.type != "cuda"


def cuda():
    assert torch.cuda.is_available() is True
    assert torch.cuda.current_device() == 0
    assert isinstance(torch.cuda.get_device_name(), str)


def random():
    torch.cuda.manual_seed(3)
    first = torch.randn(4, device="cuda")
    torch.cuda.manual_seed(3)
    assert torch.equal(first, torch.randn(4, device="cuda"))
    torch.cuda.set_rng_state(torch.cuda.get_rng_state())


def memory():
    assert isinstance(torch.cuda.memory_allocated(), int)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def streams():
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        torch.ones(1, device="cuda")
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    event.synchronize()
    torch.cuda.synchronize()


def amp():
    from torchdevice.core import compat

    with torch.autocast("cuda"):
        assert compat.is_autocast_enabled("cuda")
    assert torch.cuda.amp.GradScaler().is_enabled()


def nn():
    import warnings

    q = k = v = torch.ones(1, 2, 4, 8, device="cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sdp_kernel is deprecated; torchdevice's one-time fallback notice
        with torch.backends.cuda.sdp_kernel(enable_flash=False, enable_math=False, enable_mem_efficient=True):
            torch.nn.functional.scaled_dot_product_attention(q, k, v)  # a CUDA-only kernel choice falls back


def distributed():
    import torch.distributed as dist

    assert dist.is_nccl_available()
    dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1)
    try:
        tensor = torch.ones(2, device="cuda")
        dist.all_reduce(tensor)
        assert dist.get_backend() == "nccl" and tensor.tolist() == [1.0, 1.0]
    finally:
        dist.destroy_process_group()


CHECKS = {"device": device, "cuda": cuda, "random": random, "memory": memory, "streams": streams, "amp": amp,
          "nn": nn, "distributed": distributed}
