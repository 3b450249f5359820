"""Logging: quiet by default, one INFO line when asked, per-area loggers, per-site warnings."""
import logging
import warnings

from conftest import clean_env, run_python
from torchdevice.core import logger

CUDA_SCRIPT = """
import torch, torch.nn as nn
assert torch.cuda.is_available()
torch.cuda.set_device(0)
model = nn.Linear(4, 2).cuda()
x = torch.randn(8, 4, device="cuda")
loss = model(x.to("cuda:0")).sum()
loss.backward()
torch.cuda.synchronize()
state = {k: v.cpu() for k, v in model.state_dict().items()}
print("ok", x.device.type)
"""


def test_cuda_script_prints_nothing_on_stderr_by_default():
    done = run_python(CUDA_SCRIPT, env=clean_env())  # autoload, defaults
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok cpu\n"
    assert done.stderr == ""


def test_info_level_gives_exactly_one_line():
    done = run_python(CUDA_SCRIPT, env=clean_env(TORCHDEVICE_LOG_LEVEL="INFO"))
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "torchdevice INFO [torchdevice.patch]: CUDA calls run on cpu (no CUDA and no MPS: using the CPU)"]


def test_level_applies_to_area_loggers():
    probe = CUDA_SCRIPT + "\nimport logging\nlogging.getLogger('torchdevice.device').debug('probe %d', 1)\n"
    done = run_python(probe, env=clean_env(TORCHDEVICE_LOG_LEVEL="DEBUG"))
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert "torchdevice DEBUG [torchdevice.device]: probe 1" in lines
    assert all(line.startswith("torchdevice ") for line in lines)
    quiet = run_python(probe, env=clean_env())
    assert quiet.stderr == ""


def test_area_loggers_are_children_of_torchdevice():
    assert logger.get_logger("device").name == "torchdevice.device"
    root = logging.getLogger("torchdevice")
    assert logger.get_logger("device").parent is root
    assert logger.get_logger().name == "torchdevice"


def _warn_from(line_tag):
    logger.warn_once_per_site("test-key", f"notice {line_tag}")


def test_warn_once_per_site_points_at_the_user_line():
    logger._warned_sites.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            _warn_from("a")
        _warn_from("b")
    assert len(caught) == 1, "same site (the line inside _warn_from) warns once"
    assert caught[0].category is logger.TorchDeviceWarning
    assert caught[0].filename == __file__
    assert str(caught[0].message) == "torchdevice: notice a"


def test_warn_once_per_site_distinguishes_sites():
    logger._warned_sites.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            logger.warn_once_per_site("k2", "first site")
            logger.warn_once_per_site("k2", "second site")
    assert [str(w.message) for w in caught] == ["torchdevice: first site", "torchdevice: second site"]
    assert caught[0].lineno != caught[1].lineno


WARNS = """
import warnings, torchdevice
from torchdevice.core import logger
def f():
    logger.warn_once("k", "float64 tensors are stored as float32 on mps")
f()
print("done")
"""


def test_warnings_show_once_with_the_prefix_and_can_be_silenced():
    shown = run_python(WARNS, env=clean_env())
    assert shown.returncode == 0 and shown.stdout == "done\n"
    assert "TorchDeviceWarning: torchdevice: float64 tensors are stored as float32 on mps" in shown.stderr
    for env in (clean_env(PYTHONWARNINGS="ignore:torchdevice"),):
        done = run_python(WARNS, env=env)
        assert done.returncode == 0 and done.stdout == "done\n"
        assert done.stderr == ""
    in_code = run_python("import warnings, torchdevice\n"
                         "warnings.filterwarnings('ignore', category=torchdevice.TorchDeviceWarning)\n" + WARNS)
    assert in_code.stderr == "" and in_code.stdout == "done\n"
