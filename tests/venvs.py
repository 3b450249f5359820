"""Fresh virtual environments with torchdevice really installed by pip.

torch itself comes from the environment running the tests (a path entry in the
fresh venv points at that environment's site-packages, after the venv's own),
so each venv costs seconds whatever torch build is under test. torchdevice is
built and installed into the fresh venv by pip, exactly as a user would, so its
``torchdevice_autoload.pth`` sits in the venv's own site-packages.
"""
import os
import subprocess
import sysconfig
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def site_packages(prefix: Path) -> Path:
    paths = sysconfig.get_paths(vars={"base": str(prefix), "platbase": str(prefix)})
    return Path(paths["purelib"])


def python_of(prefix: Path) -> Path:
    return prefix / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def parent_site_packages():
    """Site dirs of the running environment that hold torch."""
    import torch

    return str(Path(torch.__file__).resolve().parents[1])


def create(prefix: Path, *, editable: bool) -> Path:
    """Create a venv at ``prefix`` and pip-install torchdevice into it."""
    venv.EnvBuilder(with_pip=True, clear=True).create(prefix)
    (site_packages(prefix) / "zz_torch_from_test_env.pth").write_text(parent_site_packages() + "\n")
    args = [str(python_of(prefix)), "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check"]
    args += ["-e", str(ROOT)] if editable else [str(ROOT)]
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=600)
    return python_of(prefix)


def uninstall(prefix: Path) -> None:
    subprocess.run([str(python_of(prefix)), "-m", "pip", "uninstall", "-y", "-q", "torchdevice-autoload"],
                   check=True, capture_output=True, text=True, timeout=300)


__all__ = ["create", "uninstall", "site_packages", "python_of", "parent_site_packages"]
