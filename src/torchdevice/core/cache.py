"""A small on-disk cache for facts derived from one torch installation.

Some facts cost milliseconds to derive at every ``import torch`` but depend
only on the installed torch build, such as which functions take a ``device``
argument (read from about 4,000 operator schemas). They are stored as JSON
under ``$XDG_CACHE_HOME/torchdevice`` (default ``~/.cache/torchdevice``), in a
file named after the fact and a key built from the torch version, its build
and the path, size and modification time of torch's compiled extension (and of
torchdevice's module that derives the facts), so that a reinstalled or upgraded
torch, or an edited torchdevice, gets a new file.

The cache is an optimisation only: an unreadable, unwritable or corrupt file
means the fact is derived again, silently. Files are written atomically
(temporary file + rename), so concurrent processes never read half a file.
"""
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

FORMAT = 1  # bump when the meaning of a cached fact changes


def directory() -> Optional[Path]:
    """Where cached facts live; None when there is no absolute cache or home directory.

    A relative XDG_CACHE_HOME is ignored, as the XDG specification says.
    """
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "torchdevice" if os.path.isabs(base) else None


def torch_key() -> Optional[str]:
    """A key naming this torch build, or None if it cannot be told apart."""
    try:
        import torch

        from .. import __version__

        extension = os.path.realpath(torch._C.__file__)
        stat = os.stat(extension)
        # The code that derives the facts counts too: an edited checkout (editable
        # install, same version number) must not read facts its old code derived.
        deriving = os.stat(Path(__file__).resolve().parents[1] / "ops" / "device" / "redirect.py")
        parts = [FORMAT, __version__, torch.__version__, getattr(torch.version, "git_version", ""), extension,
                 stat.st_size, stat.st_mtime_ns, deriving.st_size, deriving.st_mtime_ns]
    except Exception:
        return None
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]


def cached(name: str, derive: Callable[[], Any], folder: Optional[Path] = None) -> Any:
    """``derive()``'s JSON-able result, read from the cache when present.

    The value is validated by a JSON round trip only; callers check its shape.
    """
    key = torch_key()
    folder = folder or directory()
    if key is None or folder is None:
        return derive()
    path = folder / f"{name}-{key}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    value = derive()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".tmp", dir=str(path.parent))
        with os.fdopen(fd, "w") as f:
            json.dump(value, f)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except (OSError, UnboundLocalError):
            pass
    return value
