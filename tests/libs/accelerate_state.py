"""accelerate's state, mixed precision and one prepared training step, as a GPU user runs it.

    python accelerate_state.py fp16|bf16|no                       (one process)
    torchrun --nproc_per_node=2 accelerate_state.py fp16|bf16|no  (two ranks)

Prints one ``RESULT {...}`` line per process: what accelerate decided (device,
distributed type, number and index of processes, the GradScaler), whether
autocast was in effect inside the model and in which dtype, and the result of
a short prepared training run (losses; a parameter checksum that DDP keeps
equal on every rank; a gathered tensor that holds one value per rank).
"""
import json
import sys

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "fp16"
    accelerator = Accelerator(mixed_precision=mode)
    set_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    seen = {}

    def record(module, inputs, output):
        seen.setdefault("layer_dtype", str(output.dtype).replace("torch.", ""))
        try:
            seen.setdefault("autocast_cuda", torch.is_autocast_enabled("cuda"))
        except TypeError:  # torch < 2.4: the argument-less form is CUDA's
            seen.setdefault("autocast_cuda", torch.is_autocast_enabled())
        seen.setdefault("input_device_type", inputs[0].device.type)

    model[0].register_forward_hook(record)
    model, optimizer = accelerator.prepare(model, optimizer)
    generator = torch.Generator().manual_seed(accelerator.process_index)
    x = torch.randn(64, 16, generator=generator)
    y = x[:, :4].sum(dim=1, keepdim=True)
    losses = []
    for _ in range(5):
        out = model(x.to(accelerator.device))
        loss = torch.nn.functional.mse_loss(out.float(), y.to(accelerator.device))
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    gathered = accelerator.gather(torch.tensor([float(accelerator.process_index)], device=accelerator.device))
    scaler = accelerator.scaler
    result = {
        "device": str(accelerator.device),
        "distributed_type": str(accelerator.distributed_type),
        "num_processes": accelerator.num_processes,
        "process_index": accelerator.process_index,
        "is_main_process": accelerator.is_main_process,
        "mixed_precision": accelerator.mixed_precision,
        "native_amp": accelerator.native_amp,
        "scaler": None if scaler is None else type(scaler).__name__,
        "scaler_enabled": None if scaler is None else scaler.is_enabled(),
        "wrapped": type(model).__name__,
        "losses": losses,
        "param_sum": float(sum(p.detach().double().sum() for p in model.parameters())),
        "gathered": gathered.tolist(),
        **seen,
    }
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")  # one write: ranks share the pipe
    sys.stdout.flush()
    accelerator.end_training()


if __name__ == "__main__":
    main()
