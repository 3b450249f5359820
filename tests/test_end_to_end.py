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


def test_example_runs(wheel_python, tmp_path):
    """The README's example: its checkpoint goes to --out, else to a temporary directory it removes."""
    import subprocess

    example = Path(__file__).parents[1] / "examples" / "train_cuda.py"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    for args in ([], ["--out", str(tmp_path / "out")]):
        result = subprocess.run([str(wheel_python), str(example), *args], env=clean_env(TMPDIR=str(scratch)),
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert "tensors on cpu" in result.stdout
        assert without_native_notices(result.stderr) == ""
        left = [p.name for p in scratch.iterdir() if not p.name.startswith("torchinductor_")]  # torch's own
        assert left == [], "the temporary directory is removed"
    assert (tmp_path / "out" / "train_cuda_checkpoint.pt").is_file()
