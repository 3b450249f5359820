"""Scaled-dot-product attention backend selections that exist only on CUDA.

CUDA code narrows ``F.scaled_dot_product_attention`` to one backend with
``torch.nn.attention.sdpa_kernel([SDPBackend.FLASH_ATTENTION])``,
``torch.backends.cuda.sdp_kernel(enable_math=False, ...)`` or
``torch.backends.cuda.enable_*_sdp(...)``. On the target some of those
backends do not exist (memory-efficient and cuDNN attention are CUDA kernels),
and attention would fail with "No viable backend". When a selection leaves no
backend the target can run, the backends the target does run are kept enabled
as well, and a one-time ``TorchDeviceWarning`` says so; a selection that
includes a usable backend is left exactly as asked.

Which backends the target runs is measured once, on first need, by running a
tiny attention on the target with each backend alone (a feature probe, not a
version table). ``sdpa_kernel`` is covered through the helper
``torch.nn.attention._sdpa_kernel`` that it (and torch.compile's handling of
it, and ``torch.backends.cuda.sdp_kernel``) calls; the ``enable_*_sdp``
switches are checked after each call. Where ``sdpa_kernel`` calls the switches
through names bound in ``torch.nn.attention`` (torch 2.3 to 2.5), those names are
covered too. torch 2.2 has no ``torch.nn.attention`` (so no ``sdpa_kernel``);
its ``enable_*_sdp`` switches are covered the same way.
"""
import collections
import functools

import torch

from ...core import device as _device
from ...core.logger import warn_once
from ...core.patch import Patch

_available = {}  # device type -> tuple of SDPBackend that run there, measured on first need
# flag name -> SDPBackend member, where torch has no such table (torch.nn.attention._backend_names)
_BACKEND_NAMES = {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION", "mem_efficient": "EFFICIENT_ATTENTION",
                  "math": "MATH"}
_SWITCHES = ("enable_flash_sdp", "enable_mem_efficient_sdp", "enable_math_sdp", "enable_cudnn_sdp")
_Backend = collections.namedtuple("_Backend", "name")  # where torch has no SDPBackend enum at all


def _flag_functions():
    """SDPBackend -> (setter, getter) for every backend flag this torch has."""
    try:
        import torch.nn.attention as attention
    except ImportError:  # torch 2.2
        attention = None
    names = getattr(attention, "_backend_names", None) or _BACKEND_NAMES
    enum = getattr(attention, "SDPBackend", None) or getattr(torch._C, "_SDPBackend", None)

    table = {}
    for name, member in names.items():
        setter = getattr(torch._C, f"_set_sdp_use_{name}", None)
        getter = getattr(torch._C, f"_get_{name}_sdp_enabled", None)
        backend = _Backend(member) if enum is None else getattr(enum, member, None)
        if setter is not None and getter is not None and backend is not None:
            table[backend] = (setter, getter)
    return table


def _available_backends(device):
    """The SDPA backends that run on ``device`` in this torch (measured once)."""
    found = _available.get(device.type)
    if found is None:
        flags = _flag_functions()
        before = {backend: getter() for backend, (setter, getter) in flags.items()}
        q = torch.ones(1, 1, 4, 8, device=device)  # no RNG use: the probe must not shift seeded streams
        found = []
        try:
            for backend in flags:
                for other, (setter, _) in flags.items():
                    setter(other is backend)
                try:
                    with torch.no_grad():
                        torch.nn.functional.scaled_dot_product_attention(q, q, q)
                    found.append(backend)
                except RuntimeError:
                    pass
        finally:
            for backend, (setter, _) in flags.items():
                setter(before[backend])
        found = _available[device.type] = tuple(found)
    return found


def _warn(asked, kept, device_type):
    names = ", ".join(b.name for b in asked) or "none"
    warn_once("sdpa-fallback",
              f"torchdevice: scaled_dot_product_attention backend selection ({names}) has no backend that runs "
              f"on {device_type}; {', '.join(b.name for b in kept)} stay enabled as a fallback.", stacklevel=4)


def _sdpa_kernel(target):
    def make(original):
        def _sdpa_kernel(backends, set_priority=False):
            asked = list(backends)
            usable = _available_backends(target.device)
            if usable and not any(b in usable for b in asked):
                _warn(asked, usable, target.type)
                asked += [b for b in usable if b not in asked]
            if set_priority:
                return original(asked, set_priority)
            return original(asked)  # torch 2.6 takes the backends alone
        return functools.wraps(original)(_sdpa_kernel)
    return make


def _switch(target):
    def make(original):
        def enable(enabled):
            original(enabled)
            usable = _available_backends(target.device)
            flags = _flag_functions()
            on = [b for b, (_, getter) in flags.items() if getter()]
            if usable and not any(b in usable for b in on):
                _warn(on, usable, target.type)
                for backend in usable:
                    flags[backend][0](True)
        return functools.wraps(original)(enable)
    return make


def records():
    target = _device.current()
    out = [Patch("torch.nn.attention", "_sdpa_kernel", _sdpa_kernel(target),
                 note="keeps a backend the target runs enabled (one-time warning)")]
    for owner in ("torch.backends.cuda", "torch.nn.attention"):  # the latter: names sdpa_kernel calls (2.3-2.5)
        for name in _SWITCHES:
            out.append(Patch(owner, name, _switch(target),
                             note="keeps a backend the target runs enabled (one-time warning)"))
    return out
