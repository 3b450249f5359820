"""Training-script checks on the tensor itself: synchronize before timing, autocast dtype by device
type, a device-equality guard before a GPU-only step, and the tensor's own CUDA ordinal.

    python gpu_checks.py
"""
import time

import torch

device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
model = torch.nn.Linear(16, 4).to(device)
x = torch.randn(32, 16).to(device)
taken = []

start = time.perf_counter()
y = model(x)
if y.is_cuda:  # time the GPU work, not the launch
    torch.cuda.synchronize()
    taken.append("synchronize")
elapsed = time.perf_counter() - start

use_amp = x.device.type == "cuda"
with torch.autocast(device_type="cuda" if use_amp else "cpu", dtype=torch.float16 if use_amp else torch.bfloat16):
    out = model(x)
taken.append(f"autocast {out.dtype}")

if x.device == torch.device("cuda", 0):
    with torch.cuda.device(x.get_device()):  # the tensor's own GPU
        taken.append(f"device_of {torch.cuda.current_device()}")
else:
    taken.append("cpu branch")
print("taken", "; ".join(taken), f"sum {out.float().sum().item():.3f}")
