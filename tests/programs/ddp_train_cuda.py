"""A CUDA/NCCL DistributedDataParallel training script, written for GPUs in the usual style.

Run with ``torchrun --nproc_per_node=N ddp_train_cuda.py OUT_DIR``. The global
batch (16) is split across the ranks, so any N trains on the same sequence of
global batches. Each rank writes OUT_DIR/rank<R>.json with the gradients of the
last step (after DDP's all-reduce), the final parameters and the loss over the
whole data set.
"""
import json
import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

GLOBAL_BATCH = 16


def main(out_dir):
    assert torch.cuda.is_available() and dist.is_nccl_available(), "this script needs a GPU machine"
    dist.init_process_group(backend="nccl", init_method="env://")
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local_rank)
    device = torch.device(f"cuda:{local_rank}")

    torch.manual_seed(0)
    inputs = torch.randn(96, 10)
    targets = inputs[:, :3].sum(dim=1, keepdim=True) - inputs[:, 5:6]
    data = TensorDataset(inputs, targets)
    sampler = DistributedSampler(data, shuffle=False)
    loader = DataLoader(data, batch_size=GLOBAL_BATCH // world, sampler=sampler, pin_memory=True)

    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1)).cuda(local_rank)
    model = DDP(model, device_ids=[local_rank], output_device=local_rank)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with torch.no_grad():
        initial_loss = F.mse_loss(model(inputs.cuda()), targets.cuda()).item()

    for epoch in range(4):
        sampler.set_epoch(epoch)
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.cuda(non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            loss = F.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
    last_grads = [p.grad.tolist() for p in model.parameters()]

    with torch.no_grad():
        full_loss = F.mse_loss(model(inputs.cuda()), targets.cuda()).item()
    loss_tensor = torch.tensor([full_loss], device=device)
    dist.all_reduce(loss_tensor)
    torch.cuda.synchronize()

    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({
            "rank": rank,
            "world": world,
            "backend": str(dist.get_backend()),
            "grads": last_grads,
            "params": [p.tolist() for p in model.module.parameters()],
            "initial_loss": initial_loss,
            "full_loss": full_loss,
            "mean_loss": loss_tensor.item() / world,
            "device": str(next(model.parameters()).device),
        }, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
