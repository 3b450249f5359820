"""Logging and warnings for torchdevice.

Loggers live under ``torchdevice`` with one child per area
(``torchdevice.device``, ``torchdevice.amp``, ...). torchdevice is quiet by
default: the ``torchdevice`` logger gets a stderr handler at WARNING unless
``TORCHDEVICE_LOG_LEVEL`` says otherwise, and it does not propagate records to
the root logger twice. Behaviour the user must know about is reported once with
``TorchDeviceWarning`` so that ``-W ignore::torchdevice.TorchDeviceWarning``
silences it.
"""
import logging
import warnings

ROOT = "torchdevice"


class TorchDeviceWarning(UserWarning):
    """A one-time notice about something torchdevice changed in your program."""


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
    """Emit ``message`` as a TorchDeviceWarning the first time ``key`` is seen."""
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(message, TorchDeviceWarning, stacklevel=stacklevel)
