"""Unmodified CUDA-style scripts, run under the installed autoload, match native CPU runs."""
from pathlib import Path

import pytest

from conftest import clean_env, run_python
from porting import PROGRAMS, cpu_version, without_native_notices

pytestmark = pytest.mark.venv


def test_tiny_train_matches_native_cpu(wheel_python, tmp_path):
    source = (PROGRAMS / "tiny_train.py").read_text()
    redirected = run_python(source, python=wheel_python, args=[str(tmp_path)])
    assert redirected.returncode == 0, redirected.stderr
    native = run_python(cpu_version(source), python=wheel_python, args=[str(tmp_path)],
                        env=clean_env(TORCHDEVICE_DISABLE="1"))
    assert native.returncode == 0, native.stderr
    assert redirected.stderr == native.stderr, "torchdevice printed nothing of its own"
    losses = redirected.stdout.split()
    assert len(losses) == 20 and losses == native.stdout.split()
    assert float(losses[-1]) < float(losses[0])


def test_example_runs(wheel_python):
    example = Path(__file__).parents[1] / "examples" / "train_cuda.py"
    result = run_python(example.read_text(), python=wheel_python)
    assert result.returncode == 0, result.stderr
    assert "tensors on cpu" in result.stdout
    assert without_native_notices(result.stderr) == ""
