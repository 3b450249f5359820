"""torchdevice's start-up hook: what ``torchdevice_autoload.pth`` runs at every interpreter start.

Python executes the .pth line (``import _torchdevice_trampoline``) in every
process of the environment, including the many that never import torch, so
this module does as little as it can: it reads TORCHDEVICE_DISABLE and puts
one small finder on ``sys.meta_path``. It imports neither torch nor the
torchdevice package: docs/performance.md compares the start-up cost of this
module with that of importing torchdevice at start.

The finder compares each imported name with "torch". On the first
``import torch`` it imports torchdevice, whose import hook replaces the finder
in place with the real one (torchdevice/_autoload.py) and answers for torch.
If torchdevice cannot be imported, torch loads unpatched, silently (one stderr
line under TORCHDEVICE_LOG_LEVEL=DEBUG): this hook must never break Python.

It lives outside the torchdevice package because importing a package's
submodule runs the package's ``__init__`` first.
"""
import os
import sys

_TRUE_WORDS = ("1", "true", "yes", "on")  # torchdevice.core.config.TRUE_WORDS; a test checks


class TorchdeviceTrampoline:
    """Meta-path finder: one string comparison per import until torch is imported."""

    _torchdevice_finder = True
    _torchdevice_trampoline = True

    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        try:
            from torchdevice._autoload import find_spec_from_trampoline
        except Exception as exc:
            _debug(exc)
            return None
        return find_spec_from_trampoline(self, name, path, target)


def _debug(exc):
    if os.environ.get("TORCHDEVICE_LOG_LEVEL", "").strip().upper() == "DEBUG":
        print("torchdevice: autoload hook failed:", repr(exc), file=sys.stderr)


def arm(environ=os.environ, meta_path=sys.meta_path, modules=sys.modules):
    """Arm the trampoline unless disabled; if torch is already imported, import torchdevice now.

    Idempotent: a site directory that is on ``sys.path`` twice runs the .pth twice.
    """
    try:
        if environ.get("TORCHDEVICE_DISABLE", "").strip().lower() in _TRUE_WORDS:
            return
        if "torch" in modules:  # a site dir added after torch was imported: activate at once
            import torchdevice  # noqa: F401
        elif not any(getattr(finder, "_torchdevice_finder", False) for finder in meta_path):
            meta_path.insert(0, TorchdeviceTrampoline())
    except Exception as exc:
        _debug(exc)


arm()
