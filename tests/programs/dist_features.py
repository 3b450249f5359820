"""torch.distributed features CUDA scripts use, checked on two ranks (torchrun --nproc_per_node=2).

Writes OUT_DIR/rank<R>.json with observed values; the test compares them.
"""
import inspect
import json
import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data.distributed import DistributedSampler


def collectives(rank, out):
    dist.barrier(device_ids=[int(os.environ["LOCAL_RANK"])])
    t = torch.full((3,), float(rank + 1), device="cuda")
    dist.all_reduce(t)
    out["all_reduce"] = t.tolist()
    b = torch.full((2,), float(10 * rank + 5), device=torch.device("cuda", rank))
    dist.broadcast(b, src=1)
    out["broadcast"] = b.tolist()
    gathered = [torch.zeros(2, device="cuda") for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, torch.full((2,), float(rank), device="cuda"))
    out["all_gather"] = [g.tolist() for g in gathered]
    work = dist.all_reduce(torch.ones(1, device="cuda"), async_op=True)
    work.wait()
    out["tensor_device"] = str(t.device)


def masquerade(out):
    out["user_backend"] = str(dist.get_backend())
    out["user_nccl"] = dist.is_nccl_available()
    torch_view = {"dist": dist}
    exec("backend = str(dist.get_backend()); nccl = dist.is_nccl_available()",
         {"__name__": "torch.distributed._probe", "dist": dist}, torch_view)
    out["torch_backend"], out["torch_nccl"] = torch_view["backend"], torch_view["nccl"]
    group = dist.new_group([0, 1], backend="nccl")
    t = torch.ones(1, device="cuda")
    dist.all_reduce(t, group=group)
    out["subgroup"] = [str(dist.get_backend(group)), t.item()]


def sampler(rank, out):
    s = DistributedSampler(list(range(11)), shuffle=True, seed=3)
    s.set_epoch(2)
    out["sampler"] = list(s)


def sync_batch_norm(rank, world, out):
    """SyncBatchNorm on this rank's half against BatchNorm over the full batch."""
    gen = torch.Generator().manual_seed(11)
    full = torch.randn(8, 3, 4, generator=gen) * 3 + 1
    grad = torch.randn(8, 3, 4, generator=gen)
    weight, bias = torch.randn(3, generator=gen), torch.randn(3, generator=gen)
    part = slice(rank * 8 // world, (rank + 1) * 8 // world)

    model = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm1d(3, momentum=0.3))).cuda()
    reference = nn.BatchNorm1d(3, momentum=0.3)
    with torch.no_grad():
        for m in (model[0], reference):
            m.weight.copy_(weight)
            m.bias.copy_(bias)
    errors = {}
    for step in range(2):
        x = (full[part] * (step + 1)).cuda().requires_grad_()
        x_full = (full * (step + 1)).requires_grad_()
        y = model(x)
        y_full = reference(x_full)
        (y * grad[part].cuda()).sum().backward()
        (y_full * grad).sum().backward()
        errors[f"out{step}"] = (y.detach().cpu() - y_full.detach()[part]).abs().max().item()
        errors[f"grad_input{step}"] = (x.grad.cpu() - x_full.grad[part]).abs().max().item()
    errors["running_mean"] = (model[0].running_mean.cpu() - reference.running_mean).abs().max().item()
    errors["running_var"] = (model[0].running_var.cpu() - reference.running_var).abs().max().item()
    summed = torch.stack([model[0].weight.grad, model[0].bias.grad]).clone()
    dist.all_reduce(summed)  # per-rank parameter gradients add up to the full-batch ones
    errors["param_grads"] = (summed.cpu() - torch.stack([reference.weight.grad, reference.bias.grad])).abs().max().item()
    errors["batches_tracked"] = int(model[0].num_batches_tracked)
    model.eval()
    errors["eval_uses_running_stats"] = (model(full.cuda()).cpu() - reference.eval()(full)).abs().max().item()
    out["sync_batch_norm"] = errors


def fsdp(out):
    """One FSDP step (device_id from torch.cuda) equals one plain step: same data on every rank."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).cuda()
    plain = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).cuda()
    plain.load_state_dict(model.state_dict())
    sharded = FSDP(model, device_id=torch.cuda.current_device())
    x = torch.linspace(-1, 1, 12, device="cuda").view(3, 4)
    for net in (sharded, plain):
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        net(x).pow(2).sum().backward()
        optimizer.step()
    with FSDP.summon_full_params(sharded):
        full = [p.detach().clone() for p in sharded.module.parameters()]
    error = max((a - b).abs().max().item() for a, b in zip(full, plain.parameters()))
    out["fsdp"] = [str(next(sharded.parameters()).device), error < 1e-6, error]


def device_mesh(out):
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cuda", (dist.get_world_size(),))
    out["mesh"] = [mesh.device_type, mesh.size()]


def main(out_dir):
    local_rank = int(os.environ["LOCAL_RANK"])
    # device_id= binds the process group to this rank's GPU (torch >= 2.3 takes it).
    takes_device_id = "device_id" in inspect.signature(dist.init_process_group).parameters
    dist.init_process_group(backend="cuda:nccl,cpu:gloo",
                            **({"device_id": torch.device("cuda", local_rank)} if takes_device_id else {}))
    torch.cuda.set_device(local_rank)
    rank, world = dist.get_rank(), dist.get_world_size()
    out = {"rank": rank}
    for check in (lambda: collectives(rank, out), lambda: masquerade(out), lambda: sampler(rank, out),
                  lambda: sync_batch_norm(rank, world, out), lambda: fsdp(out), lambda: device_mesh(out)):
        check()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(out, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
