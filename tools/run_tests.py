#!/usr/bin/env python3
"""The README's test command: ``python3 tools/run_tests.py [tox arguments]``.

Self-sufficient on any Linux, macOS or Windows machine with Python 3.9+ (and on
the project's own machines), where ``pip install tox && tox`` is not:

* tox goes into a private venv (``.venv-tox/``, made once), because
  Debian/Ubuntu refuse ``pip install`` into the system Python (PEP 668); it is
  pinned to ``tox>=4`` (tox.ini uses ``labels``).
* tox's envs run on an interpreter for which both default torch releases
  publish wheels (CPython 3.10-3.12: torch 2.2 stops at 3.12, torch 2.13 starts
  at 3.10): the running Python if it is one, else the first of ``python3.12``,
  ``python3.11``, ``python3.10`` on PATH, else ``uv python find`` (uv can fetch
  one). The choice is passed to tox as ``TOX_RUNNER_PYTHON`` (tox.ini's
  ``basepython``).
* The ``torch213cpu`` env gets the CPU build of torch 2.13 from wherever it is
  served for the platform, passed to tox as ``TORCH_CPU_SPEC`` and pip's
  ``PIP_EXTRA_INDEX_URL``:

  - macOS: PyPI's ``torch==2.13.0`` (it is the CPU/MPS build there);
  - Linux and Windows: ``torch==2.13.0+cpu`` from PyTorch's CPU index
    (https://download.pytorch.org/whl/cpu), added to pip's own extra indexes
    when the index answers; when it does not (a machine with only PyPI), the
    ``+cpu`` pin is kept if pip can already resolve it (a wheel folder or index
    of pip's configuration, as on the project's machines), else PyPI's default
    build is used, with a warning (on Linux that is the CUDA build: about
    2.5 GB).

``--plan`` prints the decisions as JSON and runs nothing (tests/test_shipping.py).
Everything else on the command line goes to tox unchanged (``-e torch27``,
``-m matrix``, ``-- -k name``). Standard library only.
"""
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-tox"
TOX_REQUIREMENT = "tox>=4,<5"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_VERSION = "2.13.0"
PYTHONS = ((3, 12), (3, 11), (3, 10))  # where torch 2.2 and torch 2.13 both have wheels


def _say(message):
    print(f"run_tests: {message}", file=sys.stderr, flush=True)


def index_reachable(url=CPU_INDEX, timeout=5.0):
    """Whether PyTorch's CPU index answers (a machine may have PyPI only)."""
    try:
        with urllib.request.urlopen(f"{url}/torch/", timeout=timeout) as response:
            return response.status == 200
    except Exception:
        return False


def pip_resolves(requirement, python=sys.executable, timeout=120):
    """Whether pip, with this machine's own configuration, resolves ``requirement`` (nothing installed)."""
    try:
        done = subprocess.run([python, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed",
                               "--quiet", "--disable-pip-version-check", requirement],
                              capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PIP_CONSTRAINT": ""})
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def configured_extra_indexes(python=sys.executable):
    """pip's extra index URLs from its configuration and environment (kept when one is added)."""
    urls = os.environ.get("PIP_EXTRA_INDEX_URL", "").split()
    try:
        done = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60)
        for line in done.stdout.splitlines():
            key, _, value = line.partition("=")
            if key.endswith("extra-index-url") and not key.startswith(":env:"):
                urls += value.strip().strip("'\"").split()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return list(dict.fromkeys(urls))


def torch_source(platform=sys.platform, reachable=index_reachable, resolves=pip_resolves, extras=configured_extra_indexes):
    """{"spec", "extra_index_urls", "why"}: where the torch213cpu env gets its CPU torch."""
    if platform == "darwin":
        return {"spec": f"torch=={TORCH_VERSION}", "extra_index_urls": None,
                "why": "macOS: PyPI's build is the CPU/MPS build"}
    cpu_spec = f"torch=={TORCH_VERSION}+cpu"
    if reachable():
        return {"spec": cpu_spec, "extra_index_urls": extras() + [CPU_INDEX], "why": f"PyTorch's CPU index {CPU_INDEX}"}
    if resolves(cpu_spec):
        return {"spec": cpu_spec, "extra_index_urls": None,
                "why": f"{CPU_INDEX} unreachable; pip's own configuration serves {cpu_spec}"}
    return {"spec": f"torch=={TORCH_VERSION}", "extra_index_urls": None,
            "why": f"{CPU_INDEX} unreachable and pip cannot resolve {cpu_spec}: PyPI's default build "
                   "(on Linux the CUDA build, about 2.5 GB)"}


def _version_of(python):
    try:
        done = subprocess.run([python, "-c", "import sys; print(sys.version_info[0], sys.version_info[1])"],
                              capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    parts = done.stdout.split()
    return (int(parts[0]), int(parts[1])) if done.returncode == 0 and len(parts) == 2 else None


def env_python(current=sys.executable, which=shutil.which, version_of=_version_of):
    """An interpreter for tox's envs (CPython 3.10-3.12), or None."""
    if version_of(current) in PYTHONS:
        return current
    for major, minor in PYTHONS:
        found = which(f"python{major}.{minor}")
        if found and version_of(found) == (major, minor):
            return found
    uv = which("uv")
    if uv:
        for major, minor in PYTHONS:
            done = subprocess.run([uv, "python", "find", f"{major}.{minor}"], capture_output=True, text=True)
            if done.returncode == 0 and done.stdout.strip():
                return done.stdout.strip()
    return None


def plan():
    python = env_python()
    return {"tox": TOX_REQUIREMENT, "venv": str(VENV), "env_python": python, "torch": torch_source()}


def _venv_python():
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_tox():
    """The venv's python, with tox >= 4 installed (made on first use)."""
    python = _venv_python()
    if python.exists():
        done = subprocess.run([str(python), "-c", "import tox, sys; sys.exit(int(tox.__version__.split('.')[0]) < 4)"],
                              capture_output=True)
        if done.returncode == 0:
            return python
    _say(f"installing {TOX_REQUIREMENT} into {VENV}")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", TOX_REQUIREMENT],
                   check=True)
    return python


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--plan"]:
        print(json.dumps(plan(), indent=2))
        return 0
    decided = plan()
    if decided["env_python"] is None:
        _say("no CPython 3.10, 3.11 or 3.12 found (torch 2.2 and 2.13 both publish wheels only for those): "
             "install one (or uv), then rerun")
        return 2
    source = decided["torch"]
    env = dict(os.environ, TORCH_CPU_SPEC=source["spec"], TOX_RUNNER_PYTHON=decided["env_python"])
    if source["extra_index_urls"]:
        env["PIP_EXTRA_INDEX_URL"] = " ".join(source["extra_index_urls"])
    _say(f"torch for torch213cpu: {source['spec']} ({source['why']}); envs run on {decided['env_python']}")
    python = ensure_tox()
    return subprocess.call([str(python), "-m", "tox", *argv], cwd=str(ROOT), env=env)


if __name__ == "__main__":
    sys.exit(main())
