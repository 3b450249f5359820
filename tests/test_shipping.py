"""The README's commands work on an ordinary machine (tools/run_tests.py, .ci/run, tox.ini, .gitignore)."""
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _runner():
    spec = importlib.util.spec_from_file_location("run_tests", ROOT / "tools" / "run_tests.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def readme_block(heading):
    """The first fenced block of the README section ``heading``."""
    text = (ROOT / "README.md").read_text()
    section = text.split(f"## {heading}\n", 1)[1]
    return section.split("```\n", 2)[1].strip()


def test_ci_runs_exactly_the_readme_test_command():
    command = readme_block("Running the tests")
    assert command == "python3 tools/run_tests.py"
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
             if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))]
    assert lines == [command]


def test_gitignore_covers_the_venvs_the_readme_makes():
    ignored = (ROOT / ".gitignore").read_text().split()
    assert ".venv/" in ignored and ".venv-tox/" in ignored
    assert "python3 -m venv .venv" in readme_block("Quick start (fresh machine, from a checkout)")


def test_quick_start_says_what_to_install_per_platform():
    text = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    for platform in ("macOS", "Linux", "Windows"):
        assert re.search(rf"^\| {platform}\b.*\| `.*pip install torch", text, re.M), platform
    assert "https://download.pytorch.org/whl/cpu" in text


@pytest.mark.parametrize("platform,reachable,resolves,spec,index", [
    ("darwin", True, True, "torch==2.13.0", False),
    ("linux", True, False, "torch==2.13.0+cpu", True),
    ("win32", True, False, "torch==2.13.0+cpu", True),
    ("linux", False, True, "torch==2.13.0+cpu", False),
    ("linux", False, False, "torch==2.13.0", False),
])
def test_torch_source_per_platform_and_network(platform, reachable, resolves, spec, index):
    runner = _runner()
    asked = []
    source = runner.torch_source(platform, reachable=lambda: reachable,
                                 resolves=lambda r: asked.append(r) or resolves,
                                 extras=lambda: ["file:///local/simple"])
    assert source["spec"] == spec
    if index:  # the CPU index is added to pip's own extra indexes, never replacing them
        assert source["extra_index_urls"] == ["file:///local/simple", runner.CPU_INDEX]
    else:
        assert source["extra_index_urls"] is None
    assert asked == ([] if platform == "darwin" or reachable else ["torch==2.13.0+cpu"])


def test_env_python_prefers_the_running_one_then_path_then_none():
    runner = _runner()
    versions = {"/cur": (3, 9), "/p311": (3, 11), "/p312": (3, 12)}
    which = {"python3.11": "/p311"}.get
    assert runner.env_python("/p312", which=which, version_of=versions.get) == "/p312"
    assert runner.env_python("/cur", which=which, version_of=versions.get) == "/p311"
    assert runner.env_python("/cur", which=lambda name: None, version_of=versions.get) is None


def test_plan_on_this_machine_matches_its_probes():
    """The real decision here (no tox run): a CPU torch pip can resolve, and a usable interpreter."""
    runner = _runner()
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "run_tests.py"), "--plan"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["tox"] == "tox>=4,<5" and plan["env_python"]
    if sys.platform == "darwin":
        assert plan["torch"]["spec"] == "torch==2.13.0"
    elif runner.index_reachable():
        assert plan["torch"]["extra_index_urls"][-1] == runner.CPU_INDEX
    else:
        local = runner.pip_resolves("torch==2.13.0+cpu")
        assert plan["torch"]["spec"] == ("torch==2.13.0+cpu" if local else "torch==2.13.0")


def test_tox_ini_takes_the_runners_decisions():
    tox = (ROOT / "tox.ini").read_text()
    assert "torch213cpu: {env:TORCH_CPU_SPEC:torch==2.13.0+cpu}" in tox
    assert "base_python = {env:TOX_RUNNER_PYTHON:python3}" in tox
    assert "PIP_CONSTRAINT = {toxinidir}{/}tools{/}no-constraints.txt" in tox
    assert "    TORCH_CPU_SPEC\n" in tox.split("passenv =", 1)[1]
    lines = [line for line in (ROOT / "tools" / "no-constraints.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines == [], "the constraints file constrains nothing"
