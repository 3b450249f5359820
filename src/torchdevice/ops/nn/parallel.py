"""nn.DataParallel and nn.parallel.DistributedDataParallel with CUDA device ids, on the target.

DataParallel. On a machine without CUDA torch's own DataParallel already runs
the wrapped module once, unreplicated (there is one target device; replicas on
it would compute the same thing several times). ``device_ids=[0, 1]`` and
``output_device`` are accepted and ignored, results equal the plain module.
On a GPU, DataParallel also moves CPU inputs to ``device_ids[0]``; on an MPS
target torchdevice does the same (inputs go to the target), on a CPU target
they already are there, so nothing is patched.

DistributedDataParallel. CUDA code passes ``device_ids=[local_rank]`` and
``output_device=local_rank``. torch refuses device ids for CPU modules, so on
a CPU target CUDA device ids are dropped (they all name the CPU). On other
targets they become the target's index. If the process group's backend cannot
handle tensors of the target's type (gloo handles CPU tensors only, so an MPS
module cannot be reduced), construction fails with an error that says so and
how to run instead; the capability is read from torch's backend table.
"""
import functools
import inspect

import torch

from ...core import device as _device
from ...core.patch import REDIRECTED, REGISTRY, Patch

_RealDevice = torch._C.device


def _names_cuda(spec, target):
    """True for every spec CUDA code would pass that now means the target."""
    if _device.is_cuda_spec(spec):
        return True
    return type(spec) is _RealDevice and spec.type == target.type


def _check_ids(device_ids, output_device, api):
    """The CUDA indices in ``device_ids``/``output_device`` must exist (the device-count rule,
    core/device.check_index), as on a GPU machine, where a missing one fails."""
    for spec in [*(device_ids or ()), output_device]:
        if spec is not None and _device.is_cuda_spec(spec):
            _device.checked_index(spec, api)


def _mapped_ids(device_ids, output_device, target):
    _check_ids(device_ids, output_device, "DistributedDataParallel")
    if target.type == "cpu":
        ids = None if device_ids is None or all(_names_cuda(d, target) for d in device_ids) else device_ids
        out = None if output_device is None or _names_cuda(output_device, target) else output_device
        return ids, out
    index = target.device.index or 0
    if device_ids is not None:
        device_ids = [index if _names_cuda(d, target) else d for d in device_ids]
    if output_device is not None and _names_cuda(output_device, target):
        output_device = index
    return device_ids, output_device


def _check_backend_handles(device_type, backend, api="DistributedDataParallel"):
    """Raise a clear error when ``backend`` has no support for ``device_type`` tensors."""
    import torch.distributed as dist

    capability = getattr(dist.Backend, "backend_capability", {}).get(str(backend).lower())
    if capability is not None and device_type not in capability:
        raise RuntimeError(
            f"{api}: the torchdevice target is {device_type}, but the process group backend "
            f"{backend!r} cannot reduce {device_type} tensors (it handles {', '.join(capability)}). "
            f"Run distributed jobs on the CPU target: TORCHDEVICE_DEVICE=cpu.")


def _ddp_init(target):
    def make(original):
        def __init__(self, module, device_ids=None, output_device=None, *args, **kwargs):
            device_ids, output_device = _mapped_ids(device_ids, output_device, target)
            if target.type != "cpu":
                import torch.distributed as dist

                if dist.is_initialized() and any(p.device.type == target.type for p in module.parameters()):
                    bound = inspect.signature(original).bind(self, module, device_ids, output_device, *args, **kwargs)
                    group = bound.arguments.get("process_group")
                    _check_backend_handles(target.type, REGISTRY.original("torch.distributed", "get_backend")(group))
            return original(self, module, device_ids, output_device, *args, **kwargs)
        return functools.wraps(original)(__init__)
    return make


def _data_parallel_init(original):
    """DataParallel(module, device_ids, output_device): the indices are checked as on a GPU
    machine (torch reads each one's properties there); then torch's own constructor, which
    on a machine without CUDA keeps the module unreplicated."""
    def __init__(self, module, device_ids=None, output_device=None, dim=0):
        _check_ids(device_ids, output_device, "DataParallel")
        return original(self, module, device_ids, output_device, dim)
    return functools.wraps(original)(__init__)


def _to_device(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_to_device(v, device) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return type(value)((k, _to_device(v, device)) for k, v in value.items())
    return value


def _data_parallel_forward(target_device):
    """DataParallel.forward that moves inputs to the target when torch did not replicate."""
    def make(original):
        def forward(self, *inputs, **kwargs):
            if not self.device_ids:
                inputs = _to_device(inputs, target_device)
                kwargs = _to_device(kwargs, target_device)
            return original(self, *inputs, **kwargs)
        return functools.wraps(original)(forward)
    return make


def records():
    target = _device.current()
    out = [
        Patch("torch.nn.parallel.DistributedDataParallel", "__init__", _ddp_init(target),
              note="CUDA device_ids/output_device name the target"),
        Patch("torch.nn.parallel.DataParallel", "__init__", _data_parallel_init,
              note="CUDA device_ids/output_device are checked against device_count()"),
    ]
    if target.type != "cpu":
        out.append(Patch("torch.nn.parallel.DataParallel", "forward", _data_parallel_forward(target.device),
                         kind=REDIRECTED, note="inputs move to the target, as they move to device_ids[0] on a GPU"))
    return out
