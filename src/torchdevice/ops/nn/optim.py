"""Fused and foreach optimizer/clipping flags on the target.

CUDA code asks for ``AdamW(..., fused=True)``, ``SGD(..., foreach=True)`` or
``clip_grad_norm_(..., foreach=True)``. Recent torch runs all of these on the
CPU and MPS; older versions refuse them for non-CUDA tensors ("`fused=True`
requires all the params to be floating point Tensors of supported devices",
"can't use the foreach API on cpu tensors"). Whether a flag works is measured
on first use, per optimizer class and flag, by a one-step probe on the target
(not read from a version number). Where it works nothing changes; where it
does not, the flag is dropped (torch then picks its default implementation,
which computes the same update) with a one-time ``TorchDeviceWarning``.
"""
import functools
import inspect

import torch

from ...core import device as _device
from ...core.logger import warn_once
from ...core.patch import Patch

_FLAGS = ("fused", "foreach")
_verdicts = {}  # (device type, what, flag) -> bool


def _probe_param(device):
    param = torch.zeros(2, device=device, requires_grad=True)
    param.grad = torch.ones(2, device=device)
    return param


def _optimizer_flag_works(cls, init, flag, device):
    """Whether ``cls(params, **{flag: True})`` constructs and steps on ``device``."""
    key = (device.type, cls, flag)
    verdict = _verdicts.get(key)
    if verdict is None:
        kwargs = {flag: True}
        if "lr" in inspect.signature(init).parameters:
            kwargs["lr"] = 1e-3
        try:
            optimizer = cls.__new__(cls)
            init(optimizer, [_probe_param(device)], **kwargs)
            optimizer.step()
            verdict = True
        except (RuntimeError, NotImplementedError, TypeError, ValueError):
            verdict = False
        _verdicts[key] = verdict
    return verdict


def _optimizer_init(cls, flags, target):
    def make(original):
        def __init__(self, params, *args, **kwargs):
            for flag in flags:
                if kwargs.get(flag) and not _optimizer_flag_works(cls, original, flag, target.device):
                    warn_once(("optim", cls, flag),
                              f"torchdevice: {cls.__name__}({flag}=True) has no {target.type} implementation in "
                              f"this torch; using the default implementation (same update).")
                    kwargs[flag] = None
            return original(self, params, *args, **kwargs)
        return functools.wraps(original)(__init__)
    return make


def _clip_foreach_works(name, original, device):
    key = (device.type, name, "foreach")
    verdict = _verdicts.get(key)
    if verdict is None:
        try:
            original([_probe_param(device)], 1.0, foreach=True)
            verdict = True
        except (RuntimeError, NotImplementedError):
            verdict = False
        _verdicts[key] = verdict
    return verdict


def _clip(name, target):
    def make(original):
        def clip(parameters, *args, **kwargs):
            if kwargs.get("foreach") and not _clip_foreach_works(name, original, target.device):
                warn_once(("clip", name), f"torchdevice: {name}(foreach=True) has no {target.type} implementation "
                                          f"in this torch; using the per-tensor implementation (same result).")
                kwargs["foreach"] = None
            return original(parameters, *args, **kwargs)
        return functools.wraps(original)(clip)
    return make


def _optimizer_classes():
    """(class, flags) for the optimizers of this torch whose own __init__ takes fused/foreach."""
    found = []
    for cls in vars(torch.optim).values():
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)) or "__init__" not in vars(cls):
            continue
        try:
            parameters = inspect.signature(cls.__init__).parameters
        except (TypeError, ValueError):
            continue
        flags = tuple(flag for flag in _FLAGS if flag in parameters)
        if flags:
            found.append((cls, flags))
    return found


def records():
    target = _device.current()
    out = []
    for cls, flags in _optimizer_classes():
        out.append(Patch(f"torch.optim.{cls.__name__}", "__init__", _optimizer_init(cls, flags, target),
                         note=f"{'/'.join(flags)}=True falls back when the target lacks the kernels"))
    for owner in ("torch.nn.utils", "torch.nn.utils.clip_grad"):
        for name in ("clip_grad_norm_", "clip_grad_value_"):
            out.append(Patch(owner, name, _clip(name, target),
                             note="foreach=True falls back when the target lacks the kernels"))
    return out
