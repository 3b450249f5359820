"""Throw-away virtual environments for the start-up rows.

Two environments built from the same interpreter and the same torch:

* ``installed``: torchdevice laid out exactly as its wheel installs it
  (``torchdevice/``, ``torchdevice_autoload.pth`` and ``_torchdevice_trampoline.py``
  at the site-packages root, byte-compiled as pip does),
  copied from this checkout, so the start-up figures are those of a real
  install and not of an editable one (whose extra path entry costs time of its
  own);
* ``bare``: the same venv without torchdevice;
* ``null_pth``: ``bare`` plus a .pth whose line is ``import sys``: the least any
  start-up hook written as a .pth line can cost.

Both see torch through one path entry (a ``.pth`` naming the site-packages
directory that holds the running torch), so neither copies torch. The
environments are cached under ``bench/results/venvs/<hash of the sources>``.
"""
import compileall
import hashlib
import shutil
import sysconfig
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PTH = "torchdevice_autoload.pth"
TRAMPOLINE = "_torchdevice_trampoline.py"


def _site_packages(prefix):
    paths = sysconfig.get_paths(vars={"base": str(prefix), "platbase": str(prefix)})
    return Path(paths["purelib"])


def _python(prefix):
    return prefix / "bin" / "python"


def _sources_key():
    digest = hashlib.sha256()
    for path in sorted((SRC / "torchdevice").rglob("*.py")) + [SRC / PTH, SRC / TRAMPOLINE]:
        digest.update(str(path.relative_to(SRC)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _torch_site():
    import torch

    return str(Path(torch.__file__).resolve().parents[1])


def _make(prefix, installed, null_pth=False):
    if prefix.exists():
        shutil.rmtree(prefix)
    venv.EnvBuilder(with_pip=False, clear=True, symlinks=True).create(prefix)
    site = _site_packages(prefix)
    site.mkdir(parents=True, exist_ok=True)
    (site / "zz_bench_torch_path.pth").write_text(_torch_site() + "\n")
    if installed:
        shutil.copytree(SRC / "torchdevice", site / "torchdevice", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(SRC / PTH, site / PTH)
        shutil.copy2(SRC / TRAMPOLINE, site / TRAMPOLINE)
        # pip compiles byte code at install time; do the same (this also matters where
        # PYTHONDONTWRITEBYTECODE is set, which would make every start compile from source).
        compileall.compile_dir(str(site / "torchdevice"), quiet=1)
        compileall.compile_file(str(site / TRAMPOLINE), quiet=1)
    if null_pth:  # the floor of any start-up hook: a .pth whose one line imports an already loaded module
        (site / "null_hook.pth").write_text("import sys\n")
    (prefix / ".complete").write_text("ok\n")


def environments(cache_dir):
    """{"installed", "bare", "null_pth": python executables, "site_installed": site-packages dir}."""
    base = Path(cache_dir) / _sources_key()
    out = {}
    for name, installed, null_pth in (("installed", True, False), ("bare", False, False), ("null_pth", False, True)):
        prefix = base / name
        if not (prefix / ".complete").exists():
            _make(prefix, installed, null_pth)
        out[name] = str(_python(prefix))
    out["site_installed"] = str(_site_packages(base / "installed"))
    for old in Path(cache_dir).iterdir():
        if old.is_dir() and old != base:
            shutil.rmtree(old, ignore_errors=True)  # environments of older sources
    return out
