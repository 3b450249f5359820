"""Stored answers of ``torchdevice coverage`` and ``info``, for torch builds where they cannot change.

Both commands spend nearly all their time in ``import torch`` (about 1.2 s of
1.3 s on the 2-core machines of docs/performance.md), yet what they print about
torch is fixed by things that can be read without importing it:

* the torch installation: its directory, the text of ``torch/version.py``
  (version, git revision, CUDA/ROCm versions) and the size and modification
  time of its compiled extension ``torch._C``;
* torchdevice's own code: its version, directory, and the size and
  modification time of every ``.py`` file of the package;
* the interpreter (``sys.executable``, ``sys.version``, ``sys.prefix``);
* every environment variable whose name contains ``TORCHDEVICE`` (the whole
  configuration), and whether torchdevice's import hook is armed in this
  process (it then activates at ``import torch``);
* the hardware, except for a torch build without CUDA and ROCm on a platform
  other than macOS (no MPS): there the target is the CPU whatever the machine.

So answers are stored only for such CPU-only builds, in the device-function
cache directory (``core/cache.py``), in a file named after a hash of all of
the above and of the command and output form. A later run whose hash matches
prints the stored answer without importing torch; any change to one of these
inputs gives another file name, so a stored answer is never read for another
torch, torchdevice or configuration. Nothing is stored or read when torch is
already imported in the process (its live state is then the answer), when
torch cannot be located without importing it, or when there is no cache
directory; a missing, unreadable or unwritable file only means the answer is
computed as before. A stored file is used only if it is exactly what this code
wrote: the format number, the key, a SHA-256 checksum of the answer, and an
answer of the shape the command expects, with no terminal control characters
in any string (``load(name, shape)``); anything else (an edited, truncated or
foreign file) means "compute again". There is no switch: a stored answer cannot be stale, and
deleting the directory is always safe. What a cached run does not repeat is
what activation logs on stderr (warnings about an area that failed to apply);
``info`` shows such failures in its areas section either way.
"""
import hashlib
import importlib.machinery
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Optional

FORMAT = 2  # bump when the meaning of a stored answer changes (2: checksum and format stored)
_NAME = "cli"
_UNSET = re.compile(r"^(cuda|hip)\s*(:[^=]*)?=\s*None\s*$", re.M)


def _torch_dir() -> Optional[Path]:
    """Where ``import torch`` would load torch from, found as the import system would, without importing it."""
    for finder in sys.meta_path:
        if getattr(finder, "_torchdevice_finder", False):
            continue  # our own hook: it only wraps the loader the other finders give
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is None:
            continue
        try:
            spec = find_spec("torch", None)
        except Exception:
            return None
        if spec is not None:
            locations = list(spec.submodule_search_locations or [])
            return Path(locations[0]) if len(locations) == 1 else None
    return None


def _extension(torch_dir: Path) -> Optional[Path]:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = torch_dir / f"_C{suffix}"
        if candidate.is_file():
            return candidate
    return None


_CODE_SUFFIXES = (".py", ".so", ".pyd")  # the sources and the optional C accelerator


def _package_files():
    here = Path(__file__).resolve().parent
    files = []
    for path in sorted(here.rglob("*")):
        if path.suffix in _CODE_SUFFIXES:
            stat = path.stat()
            files.append([str(path.relative_to(here)), stat.st_size, stat.st_mtime_ns])
    return str(here), files


def key(command: str) -> Optional[str]:
    """The name of the stored answer for ``command`` in this environment, or None if none may be used."""
    if "torch" in sys.modules or sys.platform == "darwin":
        return None
    armed = any(getattr(finder, "_torchdevice_finder", False) for finder in sys.meta_path)
    try:
        torch_dir = _torch_dir()
        if torch_dir is None:
            return None
        version_text = (torch_dir / "version.py").read_text()
        if len(_UNSET.findall(version_text)) != 2:
            return None  # a CUDA or ROCm build: the answer depends on the hardware
        extension = _extension(torch_dir)
        if extension is None:
            return None
        ext_stat = extension.stat()
        from . import __version__

        package, files = _package_files()
        environment = sorted((k, v) for k, v in os.environ.items() if "TORCHDEVICE" in k)
        parts = [FORMAT, command, armed, sys.executable, sys.version, sys.prefix, __version__,
                 package, files, str(torch_dir), version_text, str(extension), ext_stat.st_size,
                 ext_stat.st_mtime_ns, environment]
    except (OSError, ValueError):
        return None
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def _path(name: str) -> Optional[Path]:
    from .core import cache

    folder = cache.directory()
    return None if folder is None else folder / f"{_NAME}-{name}.json"


def _digest(name: str, answer) -> str:
    """The checksum stored with an answer: of the format, the key and the answer's canonical JSON."""
    text = json.dumps([FORMAT, name, answer], sort_keys=True, ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


# Control characters that a terminal may act on (ESC, CSI, BEL, ...); a stored answer holding
# one was not written by this code (what it prints is plain text): it is computed again.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def matches(value, shape) -> bool:
    """Whether ``value`` has exactly ``shape``.

    ``shape`` is a type or tuple of types (``bool`` is not an ``int`` here),
    ``[item]`` (a list of items), ``{key: shape, ...}`` (a dict with exactly
    these keys) or ``{str: shape}`` (a dict from strings to shapes). No string
    anywhere may hold a terminal control character.
    """
    if isinstance(shape, list):
        return isinstance(value, list) and all(matches(item, shape[0]) for item in value)
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return False
        if set(shape) == {str}:
            return all(isinstance(k, str) and not _CONTROL.search(k) and matches(v, shape[str])
                       for k, v in value.items())
        return set(value) == set(shape) and all(matches(value[k], shape[k]) for k in shape)
    kinds = shape if isinstance(shape, tuple) else (shape,)
    if isinstance(value, bool) and bool not in kinds:
        return False
    if isinstance(value, str) and _CONTROL.search(value):
        return False
    return isinstance(value, kinds)


def load(name: Optional[str], shape=str):
    """The answer stored under ``name`` (a ``key()``), or None.

    None unless the file is exactly what ``store`` wrote for ``name``: this
    format, this key, the checksum of the answer, and an answer of ``shape``
    (see ``matches``). Anything else means the answer is computed again.
    """
    path = None if name is None else _path(name)
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not (isinstance(data, dict) and set(data) == {"format", "key", "sha256", "answer"}
            and data["format"] == FORMAT and data["key"] == name):
        return None
    answer = data["answer"]
    try:
        if data["sha256"] != _digest(name, answer) or not matches(answer, shape):
            return None
    except (ValueError, TypeError, RecursionError):
        return None
    return answer


def store(name: Optional[str], answer) -> None:
    """Store ``answer`` (JSON-able) under ``name``; failures are ignored (it is only a cache)."""
    path = None if name is None else _path(name)
    if path is None:
        return
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{_NAME}-", suffix=".tmp", dir=str(path.parent))
        with os.fdopen(fd, "w") as f:
            json.dump({"format": FORMAT, "key": name, "sha256": _digest(name, answer), "answer": answer}, f)
        os.replace(tmp, path)
    except (OSError, ValueError, TypeError):
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
