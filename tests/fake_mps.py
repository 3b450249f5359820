"""A fake Apple MPS backend for tests on machines without one.

Only torch's MPS surface is faked: ``torch.backends.mps.is_available()`` says
True, the ``torch.mps`` functions torchdevice calls are recorded, and a
TorchFunctionMode stores tensors that torch is asked to put on ``mps`` on the
``meta`` device (shapes and dtypes, no data). torchdevice itself runs
unchanged with target ``mps:0``: its wrappers send ``mps`` to torch exactly as
on a Mac, so what the tests observe is what our code asked torch for.
"""
import contextlib

import torch
from torch.overrides import TorchFunctionMode

import torchdevice


def _is_mps(value):
    if isinstance(value, torch._C.device):
        return value.type == "mps"
    return isinstance(value, str) and (value == "mps" or value.startswith("mps:"))


class _MpsToMeta(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = []  # (function name, device asked for, dtype asked for)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch._C.device:  # building a device object is not placing a tensor
            return func(*args, **(kwargs or {}))
        kwargs = dict(kwargs or {})
        asked = None
        if _is_mps(kwargs.get("device")):
            asked = kwargs["device"]
            kwargs["device"] = "meta"
        args = list(args)
        for i, value in enumerate(args):
            if _is_mps(value):
                asked = value
                args[i] = torch._C.device("meta")
        if asked is not None:
            self.calls.append((getattr(func, "__name__", str(func)), str(asked),
                               kwargs.get("dtype") or next((a for a in args if isinstance(a, torch.dtype)), None)))
        return func(*args, **kwargs)


class FakeMps:
    """State of one fake MPS session: what torch.mps received."""

    def __init__(self, mode):
        self.mode = mode
        self.synchronized = 0
        self.seeds = []
        self.allocated = 0

    @property
    def calls(self):
        return self.mode.calls


@contextlib.contextmanager
def fake_mps(**settings):
    """Activate torchdevice with target mps against the fake backend."""
    mode = _MpsToMeta()
    fake = FakeMps(mode)
    saved = {}

    def replace(owner, name, value):
        saved[(owner, name)] = getattr(owner, name, None)
        setattr(owner, name, value)

    def synchronize():
        fake.synchronized += 1

    replace(torch.backends.mps, "is_available", lambda: True)
    replace(torch.backends.mps, "is_built", lambda: True)
    replace(torch.mps, "synchronize", synchronize)
    replace(torch.mps, "manual_seed", lambda seed: fake.seeds.append(seed))
    replace(torch.mps, "current_allocated_memory", lambda: fake.allocated)
    replace(torch.mps, "driver_allocated_memory", lambda: fake.allocated)
    torchdevice.unpatch()
    try:
        torchdevice.patch(strict=True, device="mps", **settings)
        with mode:
            yield fake
    finally:
        torchdevice.unpatch()
        for (owner, name), value in saved.items():
            setattr(owner, name, value)
