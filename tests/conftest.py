"""Shared fixtures.

The test process runs with TORCHDEVICE_DISABLE=1 (tox sets it), so importing
torch here patches nothing by itself; tests activate explicitly and strictly
with the ``patched`` fixture, and check the autoload path in subprocesses and
fresh virtual environments (tests/test_autoload.py).
"""
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

# Keep the on-disk cache of torch facts (core/cache.py) out of the user's home; child
# processes inherit it through clean_env().
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="torchdevice-test-cache-")

import torch  # noqa: F401,E402
import torchdevice  # noqa: E402


@contextlib.contextmanager
def report_on(path, pure_python):
    """torchdevice active (strict, CPU target) with the migration report writing to ``path``,
    from a fresh report state; yields core.report. Undone on exit, environment included."""
    from torchdevice.core import report

    torchdevice.unpatch()
    report._state = None
    report._apis.clear()
    saved = dict(os.environ)
    os.environ.pop(report.SPOOL_ENV, None)
    torchdevice.patch(strict=True, device="cpu", device_count=8, report=str(path), pure_python=pure_python)
    report.discard()
    try:
        yield report
    finally:
        torchdevice.unpatch()
        spool = report._state.spool if report._state else None
        report._state = None
        report._apis.clear()
        os.environ.clear()
        os.environ.update(saved)
        if spool:
            shutil.rmtree(spool, ignore_errors=True)


@pytest.fixture
def patched():
    """torchdevice active (strict) for one test, then fully undone."""
    torchdevice.unpatch()
    status = torchdevice.patch(strict=True, device="cpu")
    yield status
    torchdevice.unpatch()


@pytest.fixture
def unpatched():
    torchdevice.unpatch()
    yield
    torchdevice.unpatch()


def clean_env(**overrides):
    """os.environ without TORCHDEVICE_* variables, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHDEVICE_")}
    env.update(overrides)
    return env


def run_python(code, python=sys.executable, env=None, args=(), cwd=None, timeout=300):
    """Run ``code`` (dedented) in a fresh interpreter; return the CompletedProcess."""
    return subprocess.run([python, "-c", textwrap.dedent(code), *args], env=env if env is not None else clean_env(),
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


def cuda_tagged_checkpoint(obj, zipfile=True, location="cuda:1"):
    """A real torch.save file whose storages carry the location tag ``location``,
    as a checkpoint saved from that GPU does."""
    import torch.serialization as serialization

    buffer = io.BytesIO()
    original = serialization.location_tag
    serialization.location_tag = lambda storage: location
    try:
        torch.save(obj, buffer, _use_new_zipfile_serialization=zipfile)
    finally:
        serialization.location_tag = original
    return buffer.getvalue()


@pytest.fixture(scope="session")
def wheel_python(tmp_path_factory):
    """python of a fresh venv with torchdevice pip-installed from this checkout (autoload active)."""
    import venvs

    return venvs.create(tmp_path_factory.mktemp("wheel") / "venv", editable=False)


@pytest.fixture(scope="session")
def editable_python(tmp_path_factory):
    """python of a fresh venv with torchdevice installed with ``pip install -e``."""
    import venvs

    return venvs.create(tmp_path_factory.mktemp("editable") / "venv", editable=True)


def pytest_collection_modifyitems(config, items):
    """Library integration tests run only when asked for (``-m integration``, as
    ``tox -e integration`` does): they take minutes even where the libraries are installed."""
    if "integration" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="library integration test: run with -m integration (tox -e integration)")
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)
