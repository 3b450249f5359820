"""Area "cuda": the torch.cuda device API answers as a one-GPU machine would.

User code sees the masquerade (``is_available()`` is True, ``device_count()``
is ``TORCHDEVICE_DEVICE_COUNT``, default 1) so that CUDA code takes its CUDA
path. Callers inside torch (and packages named in
``TORCHDEVICE_TRUTHFUL_MODULES``) get the real answers, so torch never tries
to launch a CUDA kernel. ``TORCHDEVICE_MASQUERADE=0`` turns the masquerade off.

The CUDA index a program selects (``set_device``, ``torch.cuda.device(i)``) is
remembered and reported back by ``current_device()``; every index maps to the
one target device.
"""
import functools

import torch

from ...core import device as _device
from ...core.patch import EMULATED, NOOP, REDIRECTED, REGISTRY, Patch, active_config

AREA = "cuda"


def _masquerade(real_answer, fake_answer):
    """Build is_available-style functions: the real answer for torch, the fake for users."""
    truthful = active_config().truthful_modules
    sees_truth = _device.caller_sees_truth

    def make(original):
        def answer(*args, **kwargs):
            if sees_truth(truthful):
                return real_answer
            return fake_answer
        return functools.wraps(original)(answer)
    return make


def _for_user_code(user_version):
    """torch's own callers keep the original; user code gets ``user_version``.

    For the CUDA bookkeeping torch consults before touching the CUDA runtime
    (``is_initialized``, ``_lazy_init``): torch must keep deferring its CUDA
    work (``_lazy_call`` queues while not initialized) and keep raising its
    own error ("Torch not compiled with CUDA enabled", "Found no NVIDIA
    driver") instead of calling into a runtime that is absent or has no GPU.
    """
    truthful = active_config().truthful_modules
    sees_truth = _device.caller_sees_truth

    def make(original):
        def wrapper(*args, **kwargs):
            if sees_truth(truthful):
                return original(*args, **kwargs)
            return user_version(*args, **kwargs)
        return functools.wraps(original)(wrapper)
    return make


def _current_device(original):
    def current_device():
        return _device.current_index
    return functools.wraps(original)(current_device)


def _set_device(original):
    def set_device(device):
        index = _device.cuda_index(device)
        if index >= 0:
            _device.current_index = index
    return functools.wraps(original)(set_device)


class device:
    """Context-manager that changes the selected CUDA index (all map to the target).

    Args:
        device (torch.device or int or str): device index to select. It's a
            no-op if this argument is a negative integer or ``None``.
    """

    def __init__(self, device):
        self.idx = -1 if device is None else _device.cuda_index(device)
        self.prev_idx = -1

    def __enter__(self):
        self.prev_idx = _device.current_index
        if self.idx >= 0:
            _device.current_index = self.idx

    def __exit__(self, *exc):
        _device.current_index = self.prev_idx
        return False


class device_of(device):
    """Context-manager that selects the CUDA index of the given tensor (a no-op off CUDA)."""

    def __init__(self, obj):
        super().__init__(obj.get_device() if obj.is_cuda else -1)


def _synchronize(target):
    def make(original):
        if target.type == "mps":
            mps_sync = torch.mps.synchronize

            def synchronize(device=None):
                mps_sync()
        else:
            def synchronize(device=None):
                return None  # CPU ops have completed when they return
        return functools.wraps(original)(synchronize)
    return make


def _noop(original):
    def noop(*args, **kwargs):
        return None
    return functools.wraps(original)(noop)


def records():
    target = _device.current()
    cfg = active_config()
    out = [
        Patch("torch.cuda", "current_device", _current_device, kind=EMULATED,
              note="the index selected by set_device/device(), default 0"),
        Patch("torch.cuda", "set_device", _set_device, kind=EMULATED, note="remembers the index; all map to the target"),
        Patch("torch.cuda", "device", lambda original: device, kind=EMULATED, note="selects an index (context)"),
        Patch("torch.cuda", "device_of", lambda original: device_of, kind=EMULATED),
        Patch("torch.cuda", "synchronize", _synchronize(target),
              kind=REDIRECTED if target.type == "mps" else NOOP,
              note="torch.mps.synchronize on MPS; CPU work is synchronous"),
        Patch("torch.cuda", "init", _noop, kind=NOOP),
        Patch("torch.cuda", "_lazy_init", _for_user_code(lambda: None), kind=NOOP,
              note="a no-op for user code; torch itself gets the real one"),
        Patch("torch.cuda", "is_initialized", _for_user_code(lambda: True), kind=EMULATED,
              note="True for user code, the real answer for torch itself"),
    ]
    if cfg.masquerade:
        out += [
            Patch("torch.cuda", "is_available", _masquerade(False, True), kind=EMULATED,
                  note="True for user code, the real answer for torch itself"),
            Patch("torch.cuda", "device_count", _masquerade(0, cfg.device_count), kind=EMULATED,
                  note="TORCHDEVICE_DEVICE_COUNT (default 1) for user code"),
        ]
    return out


def apply_patches():
    """Apply the cuda area (fenced: a second call changes nothing)."""
    return REGISTRY.apply_area(AREA, records())
