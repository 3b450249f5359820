"""The distribution torchdevice is published as, and the unrelated one that clashes with it.

The package index name ``torchdevice`` belongs to an unrelated project ("Setup
CUDA_VISIBLE_DEVICES") that also installs a top-level ``torchdevice/``
package, so this project is published as ``torchdevice-autoload``; the import
package, the command and the ``.pth`` keep the name ``torchdevice``. Both
cannot live in one environment: whichever pip installed last overwrote the
other's files. ``torchdevice info`` and ``torchdevice check`` name the
distribution and say when the other one is installed too (an older install of
this project under its first name ``torchdevice`` shows the same way).

Standard library only; every ``importlib.metadata`` lookup of the project goes
through here.
"""
from importlib import metadata

DISTRIBUTION = "torchdevice-autoload"
CLASHING = "torchdevice"


def installed_version():
    """The installed version of ``torchdevice-autoload``, or None (running from a checkout)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None


def clash():
    """A description of an installed distribution named ``torchdevice``, or None.

    Its files and ours share the ``torchdevice/`` folder; the user must keep
    only one (``pip uninstall torchdevice``, then reinstall ``torchdevice-autoload``).
    """
    try:
        other = metadata.distribution(CLASHING)
    except metadata.PackageNotFoundError:
        return None
    summary = (other.metadata.get("Summary") or "").strip()
    return (f"the distribution {CLASHING!r} {other.version}" + (f" ({summary})" if summary else "")
            + f" is installed too and shares the torchdevice/ folder with {DISTRIBUTION}: "
            f"run `pip uninstall {CLASHING}`, then `pip install --force-reinstall {DISTRIBUTION}`")


def describe():
    """``{"name", "version", "clash"}`` for ``info`` and ``check``."""
    return {"name": DISTRIBUTION, "version": installed_version(), "clash": clash()}
