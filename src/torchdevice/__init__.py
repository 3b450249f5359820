"""torchdevice: run unmodified CUDA-written PyTorch code on Apple Silicon (MPS) or CPU.

Installed, it patches torch the moment a program imports it (through the
``torchdevice_autoload.pth`` hook), so ``device="cuda"``, ``.cuda()``,
``torch.cuda.*``, AMP, CUDA events and NCCL process groups run on the target
device. ``import torchdevice`` does the same explicitly: it activates at once if
torch is already imported, or when torch is imported next.
``TORCHDEVICE_DISABLE=1`` turns all of it off.

Public API: ``patch()``, ``unpatch()``, ``status()``, ``TorchDeviceWarning``,
``ConfigError``. This module imports only the standard library; the rest loads
on first use.
"""
from ._autoload import install as _install

__version__ = "0.1.0"
__all__ = ["patch", "unpatch", "status", "TorchDeviceWarning", "ConfigError", "__version__"]


def patch(strict=None, **settings):
    """Apply every patch area now (importing torch if needed); return ``status()``.

    Works even when TORCHDEVICE_DISABLE is set: an explicit call wins. Keyword
    settings override the environment, e.g. ``patch(device="cpu")``.
    """
    import torch  # noqa: F401  (patches apply to the loaded torch)

    from .core import config, patch as _patch

    cfg = config.load(_without_disable())
    if settings:
        cfg = cfg.with_overrides(**settings)
    return _patch.activate(cfg, strict=strict)


def unpatch():
    """Restore every attribute torchdevice replaced to the identical original object."""
    import sys

    if "torchdevice.core.patch" in sys.modules:
        sys.modules["torchdevice.core.patch"].deactivate()


def status():
    """Target device, and per area: state, patches applied, patches skipped with reasons."""
    from .core import patch as _patch

    return _patch.status()


def _without_disable():
    import os

    env = dict(os.environ)
    env.pop("TORCHDEVICE_DISABLE", None)
    return env


def __getattr__(name):
    if name == "TorchDeviceWarning":
        from .core.logger import TorchDeviceWarning

        return TorchDeviceWarning
    if name == "ConfigError":
        from .core.config import ConfigError

        return ConfigError
    raise AttributeError(f"module 'torchdevice' has no attribute {name!r}")


_install()
