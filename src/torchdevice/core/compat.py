"""The one place that knows how torch releases differ in APIs torchdevice calls itself.

Everything else adapts by asking torch (``getattr`` with a default, probing a
call once at activation); the functions here cover the differences that
cannot be probed from one attribute: the same question is asked through a
different function, or with a different signature, depending on the release.

Autocast state. torch 2.4 added the device-generic ``is_autocast_enabled(device_type)``,
``set_autocast_enabled(device_type, enabled)``, ``get_autocast_dtype(device_type)``
and ``set_autocast_dtype(device_type, dtype)``. Earlier releases have one pair of
functions per device kind: ``*_autocast_cpu_*`` for "cpu", the argument-less
``is_autocast_enabled()``/``set_autocast_enabled(bool)`` plus
``*_autocast_gpu_dtype`` for "cuda", and no autocast state for other device
types (on those releases "mps" has no autocast; its state reads as off and
setting it changes nothing, which is what such a torch does).
"""
import torch

__all__ = ["get_autocast_dtype", "is_autocast_enabled", "set_autocast_dtype", "set_autocast_enabled"]

DEVICE_GENERIC_AUTOCAST = hasattr(torch, "get_autocast_dtype")

if DEVICE_GENERIC_AUTOCAST:
    is_autocast_enabled = torch.is_autocast_enabled
    set_autocast_enabled = torch.set_autocast_enabled
    get_autocast_dtype = torch.get_autocast_dtype
    set_autocast_dtype = torch.set_autocast_dtype
else:
    _LEGACY = {
        # device type: (is_enabled, set_enabled, get_dtype, set_dtype)
        "cpu": (torch.is_autocast_cpu_enabled, torch.set_autocast_cpu_enabled,
                torch.get_autocast_cpu_dtype, torch.set_autocast_cpu_dtype),
        "cuda": (torch.is_autocast_enabled, torch.set_autocast_enabled,
                 torch.get_autocast_gpu_dtype, torch.set_autocast_gpu_dtype),
    }

    def is_autocast_enabled(device_type="cuda"):
        """Whether autocast is on for ``device_type`` (False where this torch has none)."""
        functions = _LEGACY.get(device_type)
        return functions[0]() if functions is not None else False

    def set_autocast_enabled(device_type, enabled):
        """Switch autocast for ``device_type`` (nothing to switch where this torch has none)."""
        functions = _LEGACY.get(device_type)
        if functions is not None:
            functions[1](enabled)

    def get_autocast_dtype(device_type):
        """The autocast dtype of ``device_type`` (torch's float16 default where it has no state)."""
        functions = _LEGACY.get(device_type)
        return functions[2]() if functions is not None else torch.float16

    def set_autocast_dtype(device_type, dtype):
        """Set the autocast dtype of ``device_type`` (nothing to set where this torch has none)."""
        functions = _LEGACY.get(device_type)
        if functions is not None:
            functions[3](dtype)
