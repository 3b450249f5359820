"""Logging and warnings for torchdevice.

Loggers live under ``torchdevice`` with one child per area
(``get_logger("device")`` is ``torchdevice.device``, ``get_logger("amp")`` is
``torchdevice.amp``, ...). torchdevice is quiet by default: the ``torchdevice``
logger gets one stderr handler at ``TORCHDEVICE_LOG_LEVEL`` (default WARNING)
and does not propagate to the root logger, so a program's own logging setup
neither repeats nor hides its lines. What each level shows:

* DEBUG: activation steps, every patch skipped or deferred, failure tracebacks;
* INFO: one line per activation saying where CUDA work runs and why;
* WARNING: only what a user must know (a patch area that failed to apply).

Behaviour a user must know about while their program runs (a dtype changed, a
feature emulated approximately) is a ``TorchDeviceWarning`` whose message
starts with ``torchdevice:``: ``warn_once`` shows a message once per process,
``warn_once_per_site`` once per line of the user's code that triggered it,
attributed to that line. Neither does any work per call until the caller has
decided to warn. To silence them: ``python -W "ignore:torchdevice"`` (or the
same in ``PYTHONWARNINGS``; a filter naming the category by module path cannot
work there, because Python reads ``-W`` before site-packages is on the path),
or ``warnings.filterwarnings("ignore", category=torchdevice.TorchDeviceWarning)``
in code.
"""
import logging
import warnings

ROOT = "torchdevice"


class TorchDeviceWarning(UserWarning):
    """A one-time notice about something torchdevice changed in your program."""


PREFIX = "torchdevice: "


def _prefixed(message: str) -> str:
    return message if message.startswith(PREFIX) else PREFIX + message


def get_logger(area: str = "") -> logging.Logger:
    return logging.getLogger(f"{ROOT}.{area}" if area else ROOT)


def configure(level: str) -> None:
    """Attach one stderr handler to the ``torchdevice`` logger (idempotent)."""
    logger = logging.getLogger(ROOT)
    logger.setLevel(level)
    if not any(getattr(h, "_torchdevice", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("torchdevice %(levelname)s [%(name)s]: %(message)s"))
        handler._torchdevice = True
        logger.addHandler(handler)
        logger.propagate = False


_warned = set()


def warn_once(key, message: str, stacklevel: int = 3) -> None:
    """Emit ``message`` as a TorchDeviceWarning the first time ``key`` is seen.

    The message gets the ``torchdevice: `` prefix if it lacks it.
    """
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(_prefixed(message), TorchDeviceWarning, stacklevel=stacklevel)


_warned_sites = set()


def warn_once_per_site(key, message: str) -> None:
    """Warn once per (``key``, user call site), pointing at the user's own line.

    The call site is the first frame outside torch, torchdevice and the
    standard library (core/sites.py). Call this only on the path that needs the
    warning: it inspects the stack.
    """
    import sys

    from . import sites

    frame, _ = sites.user_site(sys._getframe(1))
    if frame is None:
        warn_once(key, message)
        return
    code = frame.f_code
    site = (key, code.co_filename, frame.f_lineno)
    if site in _warned_sites:
        return
    _warned_sites.add(site)
    module = frame.f_globals.get("__name__", "__main__")
    warnings.warn_explicit(_prefixed(message), TorchDeviceWarning, code.co_filename, frame.f_lineno, module=module,
                           registry=frame.f_globals.setdefault("__warningregistry__", {}),
                           module_globals=frame.f_globals)
