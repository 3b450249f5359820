"""The .pth autoload hook, in real virtual environments, in subprocesses."""
import json
import subprocess

import pytest

from conftest import clean_env, run_python
import venvs

pytestmark = pytest.mark.venv

PATCHED = """
import sys, json, torch
print(json.dumps({
    "patched": torch.device is not torch._C.device,
    "zeros": str(torch.zeros(1, device="cuda").device),
    "torchdevice": "torchdevice" in sys.modules,
    "finders": [type(f).__name__ for f in sys.meta_path if getattr(f, "_torchdevice_finder", False)],
}))
"""
# After `import torch` the finder stays only while deferred records wait for a
# torch submodule that is not imported yet (their post-import hooks).
WAITING = """
import json, torch, torchdevice
from torchdevice import _autoload
deferred = sorted({d["reason"].rsplit(" ", 3)[-3] for area in torchdevice.status()["areas"].values()
                   for d in area.get("deferred", [])})
print(json.dumps({"hooks": sorted(_autoload._hooks), "deferred": deferred,
                  "finder": _autoload.is_installed()}))
"""


def run_json(python, code=PATCHED, **env):
    result = run_python(code, python=python, env=clean_env(**env))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr


@pytest.mark.parametrize("kind", ["wheel", "editable"])
def test_pth_at_site_packages_root(kind, request):
    python = request.getfixturevalue(f"{kind}_python")
    prefix = python.parents[1]
    assert (venvs.site_packages(prefix) / "torchdevice_autoload.pth").is_file()
    assert (venvs.site_packages(prefix) / "_torchdevice_trampoline.py").is_file()


@pytest.mark.parametrize("kind", ["wheel", "editable"])
def test_plain_import_torch_is_patched(kind, request):
    python = request.getfixturevalue(f"{kind}_python")
    out, err = run_json(python)
    assert out["patched"] is True and out["zeros"] == "cpu" and out["torchdevice"] is True
    assert err == "", "quiet by default"
    waiting, _ = run_json(python, code=WAITING)
    assert waiting["hooks"] == waiting["deferred"], "no hook left but for deferred records"
    assert waiting["finder"] is bool(waiting["hooks"])
    assert out["finders"] == (["_TorchFinder"] if waiting["hooks"] else [])


@pytest.mark.parametrize("value", ["1", "true", "YES", "on"])
def test_disable(wheel_python, value):
    out, err = run_json(wheel_python, code=PATCHED.replace('"zeros": str(torch.zeros(1, device="cuda").device),', ""),
                        TORCHDEVICE_DISABLE=value)
    assert out == {"patched": False, "torchdevice": False, "finders": []}, "no finder at all when disabled"
    assert err == ""


def test_bad_disable_value_fails_at_import_torch(wheel_python):
    result = run_python("import torch", python=wheel_python, env=clean_env(TORCHDEVICE_DISABLE="maybe"))
    assert result.returncode != 0
    assert "TORCHDEVICE_DISABLE='maybe' is not valid" in result.stderr
    assert "accepted values" in result.stderr


def test_bad_device_fails_fast_before_torch_loads(wheel_python):
    code = """
    import sys
    try:
        import torch
    except ValueError as exc:
        print("ERR", exc)
    print("torch._C" in sys.modules)
    """
    result = run_python(code, python=wheel_python, env=clean_env(TORCHDEVICE_DEVICE="tpu"))
    assert result.returncode == 0, result.stderr
    assert "ERR torchdevice: TORCHDEVICE_DEVICE='tpu' is not valid; accepted values: auto, cpu, mps, cuda." in result.stdout
    assert result.stdout.strip().endswith("False"), "torch never started loading"


def test_python_c_pass_is_untouched(wheel_python):
    result = run_python("pass", python=wheel_python)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""
    result = run_python("import sys; print('torch' in sys.modules)", python=wheel_python)
    assert result.stdout.strip() == "False"


def test_same_torch_modules_loaded_with_and_without_hook(wheel_python):
    code = "import sys, torch; print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    on = run_python(code, python=wheel_python)
    off = run_python(code, python=wheel_python, env=clean_env(TORCHDEVICE_DISABLE="1"))
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    assert on.stdout == off.stdout


def test_threads_importing_torch_apply_once(wheel_python):
    code = """
    import threading, json
    errors = []
    def work():
        try:
            import torch
            assert torch.zeros(1, device="cuda").device.type == "cpu"
        except Exception as exc:
            errors.append(repr(exc))
    threads = [threading.Thread(target=work) for _ in range(8)]
    [t.start() for t in threads]; [t.join() for t in threads]
    import torch, torchdevice
    from torchdevice.core.patch import REGISTRY
    wrapped = torch.zeros.__wrapped__
    print(json.dumps({"errors": errors, "single": wrapped is torch._C._VariableFunctions.zeros,
                      "records": len(REGISTRY.applied_records()),
                      "unique": len({(id(a.owner), a.slot) for _, a in REGISTRY.applied_records()})}))
    """
    out, err = run_json(wheel_python, code=code)
    assert out["errors"] == [] and out["single"] is True
    assert out["records"] == out["unique"] > 50


def test_explicit_import_after_hook_applies_once(wheel_python):
    code = """
    import torch, torchdevice, json
    before = torch.zeros
    import torchdevice
    torchdevice.patch()
    print(json.dumps({"same": torch.zeros is before, "single": torch.zeros.__wrapped__ is torch._C._VariableFunctions.zeros}))
    """
    out, _ = run_json(wheel_python, code=code)
    assert out == {"same": True, "single": True}


def test_python_dash_S_with_explicit_import(wheel_python):
    site = str(venvs.site_packages(wheel_python.parents[1]))
    torch_dir = venvs.parent_site_packages()
    for order in ("import torchdevice\nimport torch", "import torch\nimport torchdevice"):
        code = f"import sys; sys.path[:0] = [{site!r}, {torch_dir!r}]\n{order}\nprint(torch.zeros(1, device='cuda:0').device)"
        result = subprocess.run([str(wheel_python), "-S", "-c", code], env=clean_env(), capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "cpu"


def test_pip_and_venv_still_work(wheel_python, tmp_path):
    result = subprocess.run([str(wheel_python), "-m", "pip", "--version"], env=clean_env(), capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == ""
    result = subprocess.run([str(wheel_python), "-m", "venv", "--without-pip", str(tmp_path / "inner")], env=clean_env(),
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == ""


def test_uninstalled_means_untouched(tmp_path):
    python = venvs.create(tmp_path / "venv", editable=False)
    venvs.uninstall(tmp_path / "venv")
    assert not (venvs.site_packages(tmp_path / "venv") / "torchdevice_autoload.pth").exists()
    code = "import torch; print(torch.device is torch._C.device)"
    result = run_python(code, python=python)
    assert result.returncode == 0 and result.stdout.strip() == "True" and result.stderr == ""


@pytest.mark.parametrize("kind", ["wheel", "editable"])
def test_installed_under_the_distribution_name(kind, request):
    """pip knows the install as torchdevice-autoload (never as the unrelated index package torchdevice)."""
    python = request.getfixturevalue(f"{kind}_python")
    code = """
    import json, importlib.metadata as md, torchdevice
    dist = md.distribution("torchdevice-autoload")
    try:
        md.distribution("torchdevice"); other = True
    except md.PackageNotFoundError:
        other = False
    print(json.dumps({"version": dist.version, "ours": torchdevice.__version__, "other": other,
                      "scripts": [e.name for e in dist.entry_points if e.group == "console_scripts"]}))
    """
    out, _ = run_json(python, code=code)
    assert out == {"version": out["ours"], "ours": out["ours"], "other": False, "scripts": ["torchdevice"]}
