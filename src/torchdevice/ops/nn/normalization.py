"""nn.SyncBatchNorm on the target: statistics are synchronised across ranks.

torch's SyncBatchNorm only synchronises CUDA-like tensors (its kernels
``batch_norm_stats`` & co. have no CPU or MPS version) and raises for others
inside an initialised process group. On the target, training-mode forward in
a process group with more than one rank runs ``_SyncBatchNorm`` instead: each
rank computes its per-channel count, mean and sum of squared deviations; the
ranks all-gather them and combine them exactly (parallel variance formula), so
every rank normalises with the statistics of the whole global batch and
updates the running statistics with the global unbiased variance, as
single-process BatchNorm over the full batch would. Backward all-reduces the
two per-channel gradient sums; weight and bias gradients stay per rank, as in
torch (DDP averages them). Without a process group, with one rank, in eval
mode, or for tensors torch can synchronise itself, torch's forward runs as is.
``convert_sync_batchnorm`` needs no change.

Collectives go through the group's backend. A backend that cannot take the
target's tensors (gloo with MPS tensors) gets CPU copies of the small
statistics vectors.
"""
import functools

import torch
import torch.nn.functional as F

from ...core.patch import REGISTRY, Patch

# Device types torch's own SyncBatchNorm synchronises.
_NATIVE = ("cuda", "hpu", "xpu")


def _collective_device(tensor, group):
    import torch.distributed as dist

    capability = getattr(dist.Backend, "backend_capability", {})
    backend = str(REGISTRY.original("torch.distributed", "get_backend")(group)).lower()
    devices = capability.get(backend)
    return tensor.device if devices is None or tensor.device.type in devices else torch.device("cpu")


def _all_gather(tensor, group, world_size):
    import torch.distributed as dist

    home = tensor.device
    tensor = tensor.to(_collective_device(tensor, group))
    gathered = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(gathered, tensor, group=group)
    return torch.stack(gathered).to(home)


def _all_reduce(tensor, group):
    import torch.distributed as dist

    home = tensor.device
    work = tensor.to(_collective_device(tensor, group))
    dist.all_reduce(work, group=group)
    return work.to(home) if work is not tensor else work


class _SyncBatchNorm(torch.autograd.Function):
    """Batch norm over the union of every rank's batch (one process group)."""

    @staticmethod
    def forward(ctx, input, weight, bias, running_mean, running_var, eps, momentum, group, world_size):
        channels = input.shape[1]
        dims = [d for d in range(input.dim()) if d != 1]
        x = input.float() if input.dtype in (torch.float16, torch.bfloat16) else input
        count = input.numel() // channels if channels else 0
        if count:
            mean = x.mean(dims)
            m2 = ((x - mean.view(1, -1, *([1] * (x.dim() - 2)))) ** 2).sum(dims)
        else:
            mean = x.new_zeros(channels)
            m2 = x.new_zeros(channels)
        local = torch.cat([mean, m2, mean.new_full((1,), float(count))])
        stats = _all_gather(local, group, world_size)           # (world, 2C+1)
        means, m2s, counts = stats[:, :channels], stats[:, channels:2 * channels], stats[:, 2 * channels:]
        total = counts.sum()
        if float(total) <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {input.size()}")
        global_mean = (means * counts).sum(0) / total
        global_m2 = (m2s + counts * (means - global_mean) ** 2).sum(0)
        var = global_m2 / total
        invstd = torch.rsqrt(var + eps)
        if running_mean is not None:
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(global_mean.to(running_mean.dtype), alpha=momentum)
                unbiased = global_m2 / (total - 1)
                running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
        shape = (1, channels) + (1,) * (input.dim() - 2)
        xhat = (x - global_mean.view(shape)) * invstd.view(shape)
        out = xhat
        if weight is not None:
            out = out * weight.view(shape)
        if bias is not None:
            out = out + bias.view(shape)
        ctx.save_for_backward(xhat, weight, invstd)
        ctx.group, ctx.total, ctx.has_bias = group, total, bias is not None
        return out.to(input.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        xhat, weight, invstd = ctx.saved_tensors
        channels = xhat.shape[1]
        dims = [d for d in range(xhat.dim()) if d != 1]
        shape = (1, channels) + (1,) * (xhat.dim() - 2)
        dy = grad_output.to(xhat.dtype)
        sum_dy = dy.sum(dims)
        sum_dy_xhat = (dy * xhat).sum(dims)
        grad_weight = sum_dy_xhat.to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        grad_bias = sum_dy.to(grad_output.dtype) if ctx.has_bias and ctx.needs_input_grad[2] else None
        grad_input = None
        if ctx.needs_input_grad[0]:
            sums = _all_reduce(torch.cat([sum_dy, sum_dy_xhat]), ctx.group)
            mean_dy = (sums[:channels] / ctx.total).view(shape)
            mean_dy_xhat = (sums[channels:] / ctx.total).view(shape)
            scale = invstd.view(shape) if weight is None else (invstd * weight).view(shape)
            grad_input = ((dy - mean_dy - xhat * mean_dy_xhat) * scale).to(grad_output.dtype)
        return grad_input, grad_weight, grad_bias, None, None, None, None, None, None


def _sync_batch_norm_forward(original):
    import torch.distributed as dist

    native = (*_NATIVE, torch._C._get_privateuse1_backend_name())
    initialized = dist.is_initialized if dist.is_available() else (lambda: False)

    def forward(self, input):
        if not self.training or input.device.type in native or not initialized():
            return original(self, input)
        group = self.process_group or dist.group.WORLD
        world_size = dist.get_world_size(group)
        self._check_input_dim(input)
        check_channels = getattr(self, "_check_non_zero_input_channels", None)
        if check_channels is not None:
            check_channels(input)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
            running_mean, running_var = self.running_mean, self.running_var
        else:
            running_mean = running_var = None
        if world_size == 1:
            return F.batch_norm(input, running_mean, running_var, self.weight, self.bias, True, momentum, self.eps)
        return _SyncBatchNorm.apply(input, self.weight, self.bias, running_mean, running_var,
                                    self.eps, momentum, group, world_size)
    return functools.wraps(original)(forward)


def _ddp_accepts_sync_batch_norm(original):
    # DDP refuses SyncBatchNorm in a CPU module; on the target the forward above
    # synchronises it, so there is nothing to refuse.
    def _passing_sync_batchnorm_handle(self, module):
        return None
    return functools.wraps(original)(_passing_sync_batchnorm_handle)


def records():
    return [
        Patch("torch.nn.SyncBatchNorm", "forward", _sync_batch_norm_forward,
              note="synchronises statistics across ranks for target tensors"),
        Patch("torch.nn.parallel.DistributedDataParallel", "_passing_sync_batchnorm_handle",
              _ddp_accepts_sync_batch_norm, note="DDP accepts SyncBatchNorm in a module on the target"),
    ]
