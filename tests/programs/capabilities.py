"""
Pick settings from what the GPU can do, the way training scripts commonly do:
device count for DataParallel, compute capability for the mixed-precision dtype
and TF32, free memory for the batch size. Then run one training step.

    python capabilities.py
"""
import torch
import torch.nn as nn


def describe_gpus():
    if not torch.cuda.is_available():
        print("CUDA not available, running on CPU")
        return torch.device("cpu"), 0
    n = torch.cuda.device_count()
    print(f"CUDA available: {n} device(s), current {torch.cuda.current_device()}")
    for i in range(n):
        props = torch.cuda.get_device_properties(i)
        print(f"  [{i}] {props.name}: {props.total_memory / 2**30:.1f} GiB, capability {props.major}.{props.minor}, "
              f"{props.multi_processor_count} multiprocessors")
        assert torch.cuda.get_device_name(i) == props.name
    return torch.device("cuda"), n


def choose_precision():
    major, minor = torch.cuda.get_device_capability()
    if major >= 8:
        # Ampere or newer: bf16 and TF32 tensor cores
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif major >= 7:
        dtype = torch.float16  # Volta/Turing tensor cores
    else:
        dtype = torch.float32
    print(f"capability {major}.{minor} -> autocast dtype {dtype}, tf32 {torch.backends.cuda.matmul.allow_tf32}")
    return dtype


def choose_batch_size(per_sample_bytes):
    free, total = torch.cuda.mem_get_info()
    batch = 8
    while batch < 256 and 2 * batch * per_sample_bytes < 0.5 * free:
        batch *= 2
    print(f"memory free {free / 2**30:.2f} of {total / 2**30:.2f} GiB -> batch size {batch}")
    return batch


def main():
    torch.manual_seed(0)
    device, n_gpus = describe_gpus()
    dtype = choose_precision()
    batch = choose_batch_size(per_sample_bytes=64 * 4 * 1000)

    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    if n_gpus > 1:
        print(f"Let's use {n_gpus} GPUs!")
        model = nn.DataParallel(model, device_ids=list(range(n_gpus)))
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

    x = torch.randn(batch, 64, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    for step in range(3):
        with torch.autocast(device_type="cuda", dtype=dtype, enabled=dtype != torch.float32):
            out = model(x)
            loss = nn.functional.cross_entropy(out, y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        print(f"step {step} loss {loss.item():.4f} (logits {out.dtype}, on {out.device.type})")


if __name__ == "__main__":
    main()
