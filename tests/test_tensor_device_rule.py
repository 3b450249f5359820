"""Tensors report where they really live (docs/device-policy.md, "Tensors answer the truth").

Issue 19 §4 measured the alternative (``x.is_cuda`` True and ``x.device`` a CUDA
device for user code) with bench/is_cuda_rule.py and did not adopt it. These
tests pin the documented rule, including the DCGAN idiom's outcome under it,
and keep the measurement tool runnable (its rules install and undo exactly).
"""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import clean_env

ROOT = Path(__file__).resolve().parents[1]
DCGAN = ROOT / "bench" / "is_cuda_idioms" / "dcgan.py"
TARGET = torch._C.device("cpu")


def load_rule_tool():
    spec = importlib.util.spec_from_file_location("is_cuda_rule", ROOT / "bench" / "is_cuda_rule.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Every way a program puts a tensor on "the GPU".
PLACEMENTS = {
    "factory device='cuda'": lambda: torch.ones(2, device="cuda"),
    "factory device=0": lambda: torch.ones(2, device=0),
    ".cuda()": lambda: torch.ones(2).cuda(),
    ".to('cuda:0')": lambda: torch.ones(2).to("cuda:0"),
    ".to(torch.device('cuda', 0))": lambda: torch.ones(2).to(torch.device("cuda", 0)),
    "module parameter after .cuda()": lambda: next(torch.nn.Linear(2, 2).cuda().parameters()),
}


@pytest.mark.parametrize("how", sorted(PLACEMENTS))
def test_tensors_report_their_real_device(patched, how):
    x = PLACEMENTS[how]()
    assert x.is_cuda is False
    assert x.device == TARGET and x.device.type == "cpu"
    assert x.device != torch.device("cuda", 0) and x.device != torch.device("cuda")
    assert x.get_device() == -1, "the CPU's answer, which every torch.cuda API reads as the selected index"
    assert isinstance(x.data, torch.cuda.FloatTensor), "the legacy type check accepts a float32 target tensor"
    # Device objects themselves keep their CUDA identity.
    assert torch.device("cuda", 0).type == "cuda" and str(torch.device("cuda", 0)) == "cuda:0"


def test_no_python_level_tensor_attribute_is_installed(patched):
    """The C attributes stay: reading x.is_cuda / x.device costs what it costs natively."""
    assert "is_cuda" not in vars(torch.Tensor) and "device" not in vars(torch.Tensor)
    assert type(vars(torch._C.TensorBase)["is_cuda"]).__name__ == "getset_descriptor"


def test_dcgan_idiom_takes_its_plain_path_and_trains(tmp_path):
    """`if input.is_cuda and self.ngpu > 1: data_parallel(...)`: the plain path, as a native CPU run."""
    env = clean_env(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"), TORCHDEVICE_DISABLE="1")
    code = ("import sys, runpy, torchdevice; torchdevice.patch(device='cpu', strict=True); "
            f"sys.argv = ['dcgan.py', '--ngpu', '2']; runpy.run_path({str(DCGAN)!r}, run_name='__main__')")
    redirected = subprocess.run([sys.executable, "-c", code], env=dict(env, TORCHDEVICE_DEVICE_COUNT="2"),
                                capture_output=True, text=True, timeout=120, cwd=tmp_path)
    native = subprocess.run([sys.executable, str(DCGAN), "--ngpu", "2"], env=env, capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert redirected.returncode == 0 and native.returncode == 0, redirected.stderr + native.stderr
    assert redirected.stdout.startswith("path plain ")
    assert redirected.stdout == native.stdout, "the same losses as the native CPU run"


@pytest.mark.parametrize("rule", ["is_cuda", "device"])
def test_measured_alternative_installs_and_undoes_exactly(patched, rule):
    tool = load_rule_tool()
    before = dict(vars(torch.Tensor))
    x = torch.ones(2, device="cuda")
    undo = tool.install(rule)
    try:
        assert x.is_cuda is True, "user code sees a GPU tensor under the alternative"
        assert (x.device == torch.device("cuda", 0)) is (rule == "device")
        namespace = {"__name__": "torch.fake", "x": x}
        assert eval("x.is_cuda", namespace) is False, "torch's own code keeps the truth"
    finally:
        undo()
    assert dict(vars(torch.Tensor)) == before and x.is_cuda is False
