"""The import hook: patch torch right after its first import.

``install()`` is what ``import torchdevice`` runs. If torch is already
imported it activates at once; otherwise it puts one ``_TorchFinder`` on
``sys.meta_path``.

The autoload ``.pth`` does not import this package at interpreter start (that
would cost every Python process of the environment about a millisecond): it
imports the small top-level module ``_torchdevice_trampoline``, whose finder
compares the name of each import with "torch". On the first ``import torch``
the trampoline imports torchdevice, whose ``install()`` replaces the
trampoline in place with the real ``_TorchFinder``, and then answers through
``find_spec_from_trampoline``.

The real finder answers only for the names in its hook table (one dict lookup
for every other import), asks the other finders for the real spec, and wraps
the real loader: after torch's own
``exec_module`` has finished, the hook runs, the module's ``__loader__`` is set
back to the real loader, and the finder removes itself once no hooks are left.
An error from torch's own import propagates untouched and nothing is patched.

This module imports only the standard library and never imports torch itself.
Reloading torch is unsupported.
"""
import os
import sys
from _thread import RLock

_lock = RLock()
_hooks = {}  # module name -> callback(module)
_TRUE_WORDS = ("1", "true", "yes", "on")  # core.config.TRUE_WORDS; tests check they agree


def _find_spec_elsewhere(finder, name, path, target):
    for other in list(sys.meta_path):
        if other is finder:
            continue
        find_spec = getattr(other, "find_spec", None)
        if find_spec is None:
            continue
        spec = find_spec(name, path, target)
        if spec is not None:
            return spec
    return None


class _ChainedLoader:
    """Runs the real loader, then the post-import hook for the module."""

    def __init__(self, loader, name):
        self._loader = loader
        self._name = name

    def __getattr__(self, attr):
        return getattr(self._loader, attr)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        hook = _hooks.get(self._name)
        if self._name == "torch":
            _check_config()  # a bad variable fails before torch starts loading
        self._loader.exec_module(module)
        module.__loader__ = self._loader
        spec = getattr(module, "__spec__", None)
        if spec is not None:
            spec.loader = self._loader
        with _lock:
            _hooks.pop(self._name, None)
            if not _hooks:
                uninstall()
        if hook is not None:
            hook(module)


class _TorchFinder:
    """Meta-path finder that fires the hooks of ``when_imported``."""

    _torchdevice_finder = True

    def __init__(self):
        self._busy = set()

    def find_spec(self, name, path=None, target=None):
        if name not in _hooks or name in self._busy:
            return None
        self._busy.add(name)
        try:
            spec = _find_spec_elsewhere(self, name, path, target)
        finally:
            self._busy.discard(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _ChainedLoader(spec.loader, name)
        return spec

    def invalidate_caches(self):
        pass


def _our_finders():
    return [f for f in sys.meta_path if getattr(f, "_torchdevice_finder", False)]


def _trampoline_armed():
    return any(getattr(f, "_torchdevice_trampoline", False) for f in sys.meta_path)


def _ensure_finder():
    """Put one _TorchFinder on sys.meta_path, in the place of the .pth trampoline if armed.

    Replacing the trampoline in place (not remove + insert) keeps the position
    of an import system loop that is running over ``sys.meta_path`` right now:
    the trampoline imports this module from inside its own ``find_spec``.
    """
    meta = sys.meta_path
    for i, finder in enumerate(meta):
        if getattr(finder, "_torchdevice_finder", False):
            if getattr(finder, "_torchdevice_trampoline", False):
                meta[i] = _TorchFinder()
            return
    meta.insert(0, _TorchFinder())


def find_spec_from_trampoline(trampoline, name, path=None, target=None):
    """Called by the .pth trampoline on the first ``import torch``, after ``import torchdevice``
    has replaced it with the real finder: answer as that finder does."""
    for finder in sys.meta_path:
        if isinstance(finder, _TorchFinder):
            return finder.find_spec(name, path, target)
    return None


def when_imported(name, callback, chain=False):
    """Run ``callback(module)`` once ``name`` has been imported (now, if it is).

    One hook per name; with ``chain`` a second callback runs after the first.
    """
    module = sys.modules.get(name)
    if module is not None and not getattr(getattr(module, "__spec__", None), "_initializing", False):
        callback(module)
        return
    with _lock:
        previous = _hooks.get(name)
        if chain and previous is not None:
            def both(module, first=previous, second=callback):
                first(module)
                second(module)
            _hooks[name] = both
        else:
            _hooks[name] = callback
        _ensure_finder()


def cancel(name):
    """Drop the pending hook for ``name`` (and the finder when none is left)."""
    with _lock:
        _hooks.pop(name, None)
        if not _hooks:
            uninstall()


def uninstall():
    """Take the finder off ``sys.meta_path`` and drop pending hooks' finder."""
    with _lock:
        for finder in _our_finders():
            sys.meta_path.remove(finder)


def is_installed():
    return bool(_our_finders())


def _check_config():
    from .core import config

    config.load()


def _activate_from_hook(module):
    from .core import config, patch

    settings = config.load()
    try:
        patch.activate(settings)
    except config.ConfigError:
        raise
    except Exception:
        if settings.strict:
            raise
        from .core.logger import get_logger

        get_logger().warning("torchdevice could not activate; torch runs unpatched", exc_info=True)


def install():
    """Arm the hook (or activate now if torch is loaded). Idempotent.

    Does nothing when TORCHDEVICE_DISABLE is set to a true value, unless the
    .pth trampoline is armed: it read the variable at interpreter start, and
    that decision stands (as when the .pth imported torchdevice at start). Any
    other value is checked when torch is imported, where a bad one raises
    ConfigError (raising here would be swallowed by site.py's .pth handling).
    """
    if os.environ.get("TORCHDEVICE_DISABLE", "").strip().lower() in _TRUE_WORDS and not _trampoline_armed():
        return
    when_imported("torch", _activate_from_hook)
