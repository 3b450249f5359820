"""
Multi-GPU training with DistributedDataParallel, one process per GPU:

    torchrun --nproc_per_node=2 ddp.py --epochs 2

NCCL backend, SyncBatchNorm, a DistributedSampler per epoch, checkpoint written
by rank 0. Rank 0 prints the loss averaged over all ranks and, at the end, the
BatchNorm running statistics and a checksum of the weights; every rank checks
that its weights equal rank 0's.
"""
import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler


def make_dataset(n=512, dim=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g) * 2 + 1
    w = torch.randn(dim, 3, generator=g)
    y = (x @ w).argmax(1)
    return TensorDataset(x, y)


class Classifier(nn.Module):
    def __init__(self, dim=10, hidden=32, classes=3):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.fc2(F.relu(self.bn(self.fc1(x))))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32, help="per GPU")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--ckpt", default="")
    args = parser.parse_args()

    local_rank = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{local_rank}")
    torch.manual_seed(0)

    model = Classifier()
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model).to(device)
    model = DDP(model, device_ids=[local_rank], output_device=local_rank)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr * world_size, momentum=0.9)

    dataset = make_dataset()
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, pin_memory=True)

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        model.train()
        total = torch.zeros(2, device=device)
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += torch.stack([loss.detach() * x.size(0), torch.tensor(float(x.size(0)), device=device)])
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        if rank == 0:
            print(f"epoch {epoch} loss {(total[0] / total[1]).item():.6f}")

    flat = torch.cat([p.detach().flatten() for p in model.module.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    assert torch.equal(flat, reference), f"rank {rank}: weights differ from rank 0"
    stats = model.module.bn.running_mean.clone()
    gathered = [torch.zeros_like(stats) for _ in range(world_size)]
    dist.all_gather(gathered, stats)
    assert all(torch.equal(stats, other) for other in gathered), "SyncBatchNorm running stats differ across ranks"

    if rank == 0:
        print(f"bn running_mean {' '.join(f'{v:.6f}' for v in stats[:6].tolist())}")
        print(f"weights checksum {flat.double().sum().item():.6f}")
        if args.ckpt:
            torch.save(model.module.state_dict(), args.ckpt)
            print("saved", args.ckpt)
    dist.barrier(device_ids=[local_rank])
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
