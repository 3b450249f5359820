"""Memory probe, run in its own process by the "memory" group of bench/run.py.

Usage: ``python _rss_probe.py torchdevice|native STEPS WARMUP``. Runs WARMUP
steps, then STEPS more, and prints JSON with the RSS growth between the two
points (KiB), then the growth of Python-level allocations that tracemalloc
sees over a fifth as many further steps. The torchdevice side writes every call with CUDA specs;
the native side is the same program written for the CPU.
"""
import gc
import json
import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

import _measure  # noqa: E402


def main():
    side, steps, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    redirected = side == "torchdevice"
    if redirected:
        import torchdevice

        torchdevice.patch(strict=True)
    dev = "cuda" if redirected else "cpu"
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    model = model.cuda() if redirected else model.cpu()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    xb, yb = torch.randn(8, 16), torch.randn(8, 1)

    def step(i):
        device = torch.device(dev, i % 4) if redirected else torch.device(dev)
        x = xb.to(f"{dev}:{i % 4}" if redirected else dev, non_blocking=True)
        y = yb.cuda() if redirected else yb.cpu()
        bias = torch.zeros(1, device=device)
        loss = torch.nn.functional.mse_loss(model(x) + bias, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(warmup):
        step(i)
    gc.collect()
    before = _measure.rss_bytes()
    for i in range(steps):
        step(i)
    gc.collect()
    after = _measure.rss_bytes()
    # Python-level allocations over a fifth of the steps (tracemalloc slows every allocation,
    # so it is kept out of the RSS window above).
    tracemalloc.start()
    trace_before = tracemalloc.get_traced_memory()[0]
    for i in range(steps // 5):
        step(i)
    gc.collect()
    trace_after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    out = {"growth_kib": (after - before) / 1024, "trace_kib": (trace_after - trace_before) / 1024,
           "trace_steps": steps // 5, "rss_kib": after / 1024}
    if redirected:
        from torchdevice.core import device as core_device

        out["device_cache"] = len(core_device.DEVICE_CACHE)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
