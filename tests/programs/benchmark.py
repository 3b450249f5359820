"""
Micro-benchmark of a transformer-style MLP block on the GPU: forward and
forward+backward, timed with CUDA events after warm-up, with peak memory.

    python benchmark.py --batch 16 --seq 32 --dim 128 --iters 10

Prints one line per measurement, e.g.
    forward            1.234 ms/iter  (wall 1.301 ms/iter)
    peak memory        12.3 MiB
"""
import argparse
import time

import torch
import torch.nn as nn

parser = argparse.ArgumentParser()
parser.add_argument("--batch", type=int, default=16)
parser.add_argument("--seq", type=int, default=32)
parser.add_argument("--dim", type=int, default=128)
parser.add_argument("--iters", type=int, default=10)
parser.add_argument("--warmup", type=int, default=3)
args = parser.parse_args()

assert torch.cuda.is_available(), "benchmark needs a GPU"
device = torch.device("cuda", torch.cuda.current_device())
print(f"device: {torch.cuda.get_device_name(device)}")

model = nn.Sequential(
    nn.LayerNorm(args.dim),
    nn.Linear(args.dim, 4 * args.dim),
    nn.GELU(),
    nn.Linear(4 * args.dim, args.dim),
).to(device)
x = torch.randn(args.batch, args.seq, args.dim, device=device, requires_grad=True)


def forward():
    with torch.no_grad():
        model(x)


def forward_backward():
    model(x).sum().backward()


def bench(name, fn):
    for _ in range(args.warmup):
        fn()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    wall0 = time.perf_counter()
    start.record()
    for _ in range(args.iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - wall0) * 1000 / args.iters
    ms = start.elapsed_time(end) / args.iters
    print(f"{name:<18} {ms:.3f} ms/iter  (wall {wall:.3f} ms/iter)")
    return ms


torch.cuda.empty_cache()
torch.cuda.reset_peak_memory_stats()
baseline = torch.cuda.memory_allocated()
fwd = bench("forward", forward)
fwd_bwd = bench("forward+backward", forward_backward)
peak = torch.cuda.max_memory_allocated()
print(f"allocated now      {torch.cuda.memory_allocated() / 2**20:.1f} MiB (baseline {baseline / 2**20:.1f} MiB)")
print(f"peak memory        {peak / 2**20:.1f} MiB")
print(f"reserved           {torch.cuda.memory_reserved() / 2**20:.1f} MiB")
flops = 2 * 2 * args.batch * args.seq * args.dim * 4 * args.dim  # two matmuls
print(f"forward throughput {flops / (fwd / 1000) / 1e9:.2f} GFLOP/s")
print(f"backward/forward   {fwd_bwd / fwd:.2f}x")
