"""How accelerate (1.16) decides device, distributed mode and mixed precision, without accelerate.

    python accelerate_style_state.py OUT_DIR fp16|bf16
    torchrun --nproc_per_node=2 accelerate_style_state.py OUT_DIR fp16|bf16

The same torch calls, in the same order, as accelerate's
``utils.imports.get_torch_accelerator_backend``, ``PartialState._prepare_backend``
/ ``set_device`` / ``default_device``, ``Accelerator.prepare_model`` (DDP with
``device_ids=[local_rank]``), its autocast and GradScaler choice
(``device.type != "cpu"``), ``utils.modeling.get_max_memory`` and the RNG
checkpointing; then a few training steps. Each process writes
OUT_DIR/rank<R>.json with what it decided and computed.
"""
import contextlib
import json
import os
import sys

import torch
import torch.distributed as dist

BACKENDS = {"cuda": "nccl", "xpu": "xccl", "cpu": "gloo"}


@contextlib.contextmanager
def environment(**values):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def accelerator_backend():
    """(device type, device module) as accelerate's get_torch_accelerator_backend() finds them."""
    device = torch.accelerator.current_accelerator()
    if device is not None:
        with environment(PYTORCH_NVML_BASED_CUDA_CHECK="1"):
            available = torch.cuda.is_available() if device.type == "cuda" else torch.accelerator.is_available()
        if available:
            return device.type, torch.get_device_module(device.type)
    return None, None


def main():
    out_dir, mode = sys.argv[1], sys.argv[2]
    local_rank = int(os.environ.get("LOCAL_RANK", -1))
    device_type, module = accelerator_backend()
    distributed_type, backend = "NO", None
    if local_rank != -1 and BACKENDS.get(device_type):
        distributed_type = "MULTI_GPU" if device_type == "cuda" else f"MULTI_{device_type.upper()}"
        backend = BACKENDS[device_type]
    if distributed_type == "NO":
        device = torch.device(device_type) if device_type else torch.device("cpu")
        rank, world = 0, 1
    else:
        dist.init_process_group(backend=backend)
        rank, world = dist.get_rank(), dist.get_world_size()
        module = torch.get_device_module("cuda" if distributed_type == "MULTI_GPU" else device_type)
        device = torch.device(device_type, local_rank % module.device_count())
        module.set_device(device)
    native_amp = device.type != "cpu"
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[mode]
    scaler = torch.amp.GradScaler(device.type) if native_amp and mode == "fp16" else None
    memory_index = torch.accelerator.current_device_index()
    allocated = torch.accelerator.memory_allocated(memory_index)
    free, total = torch.accelerator.get_memory_info(memory_index)
    rng_state = module.get_rng_state() if module is not None else None

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)).to(device)
    if distributed_type == "MULTI_GPU":
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index],
                                                          output_device=device.index)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(rank)
    x = torch.randn(32, 8, generator=generator).to(device)
    y = x[:, :2].sum(dim=1, keepdim=True)
    losses, seen = [], {}
    for _ in range(4):
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=native_amp):
            out = model(x)
            seen.setdefault("autocast_on", torch.is_autocast_enabled(device.type))
            seen.setdefault("out_dtype", str(out.dtype).replace("torch.", ""))
            loss = torch.nn.functional.mse_loss(out.float(), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    torch.accelerator.synchronize()
    params = [p.detach().double().sum().item() for p in model.parameters()]
    result = {
        "device": str(device), "distributed_type": distributed_type, "backend": backend,
        "num_processes": world, "process_index": rank, "current_device_index": memory_index,
        "native_amp": native_amp, "scaler": None if scaler is None else type(scaler).__name__,
        "scaler_enabled": None if scaler is None else scaler.is_enabled(),
        "allocated": allocated, "memory_total": total, "memory_free": free,
        "rng_state_bytes": None if rng_state is None else int(rng_state.numel()),
        "losses": losses, "params": params, "x_device_type": x.device.type, **seen,
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
