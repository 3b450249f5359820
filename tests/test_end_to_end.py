"""Unmodified CUDA-style scripts, run under the installed autoload, match native CPU runs."""
import re
from pathlib import Path

import pytest

from conftest import clean_env, run_python

pytestmark = pytest.mark.venv
PROGRAMS = Path(__file__).parent / "programs"


def cpu_version(source: str) -> str:
    """The same program as one would write it for the CPU: device strings and .cuda() say cpu,
    and the CUDA availability check is dropped (torch.cuda's seeding calls stay: they are
    harmless no-ops in a CPU-only torch)."""
    source = re.sub(r"([\"'])cuda(:\d+)?\1", r"\1cpu\1", source)
    return source.replace(".cuda()", ".cpu()").replace("torch.cuda.is_available()", "True")


def test_tiny_train_matches_native_cpu(wheel_python, tmp_path):
    source = (PROGRAMS / "tiny_train.py").read_text()
    redirected = run_python(source, python=wheel_python, args=[str(tmp_path)])
    assert redirected.returncode == 0, redirected.stderr
    assert redirected.stderr == ""
    native = run_python(cpu_version(source), python=wheel_python, args=[str(tmp_path)],
                        env=clean_env(TORCHDEVICE_DISABLE="1"))
    assert native.returncode == 0, native.stderr
    losses = redirected.stdout.split()
    assert len(losses) == 20 and losses == native.stdout.split()
    assert float(losses[-1]) < float(losses[0])


def test_example_runs(wheel_python):
    example = Path(__file__).parents[1] / "examples" / "train_cuda.py"
    result = run_python(example.read_text(), python=wheel_python)
    assert result.returncode == 0, result.stderr
    assert "tensors on cpu" in result.stdout
    assert result.stderr == ""
