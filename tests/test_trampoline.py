"""The start-up hook: torchdevice_autoload.pth and the _torchdevice_trampoline module it imports.

Python runs the .pth line in every process of the environment, so the line only
imports a small module that arms a finder; torchdevice itself is imported at the
first ``import torch``. Behaviour in real environments: tests/test_autoload.py.
"""
import builtins
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import clean_env

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def trampoline(monkeypatch):
    """A private copy of the module, loaded with the hook switched off for the real sys.meta_path."""
    monkeypatch.setenv("TORCHDEVICE_DISABLE", "1")
    spec = importlib.util.spec_from_file_location("_trampoline_under_test", SRC / "_torchdevice_trampoline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pth_is_one_import_line():
    assert (SRC / "torchdevice_autoload.pth").read_text() == "import _torchdevice_trampoline\n"


def test_arms_one_finder_that_ignores_other_imports(trampoline):
    meta = []
    trampoline.arm(environ={}, meta_path=meta, modules={})
    assert len(meta) == 1 and type(meta[0]).__name__ == "TorchdeviceTrampoline"
    assert meta[0]._torchdevice_finder and meta[0]._torchdevice_trampoline
    assert meta[0].find_spec("json") is None and meta[0].find_spec("torchvision", None, None) is None


@pytest.mark.parametrize("word", ["1", "true", "YES", " on "])
def test_disabled_arms_nothing(trampoline, word):
    meta = []
    trampoline.arm(environ={"TORCHDEVICE_DISABLE": word}, meta_path=meta, modules={})
    assert meta == []


def test_second_run_keeps_one_finder(trampoline):
    meta = []
    trampoline.arm(environ={}, meta_path=meta, modules={})
    trampoline.arm(environ={}, meta_path=meta, modules={})
    assert len(meta) == 1


def test_torch_already_imported_imports_torchdevice_at_once(trampoline, monkeypatch):
    imported = []
    real_import = builtins.__import__

    def spy(name, *args, **kwargs):
        imported.append(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", spy)
    meta = []
    trampoline.arm(environ={}, meta_path=meta, modules={"torch": object()})
    assert meta == [] and imported == ["torchdevice"]


def test_failure_to_import_torchdevice_is_silent_unless_debug(trampoline, monkeypatch, capsys):
    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name.startswith("torchdevice"):
            raise ImportError("broken install")
        return real_import(name, *args, **kwargs)

    meta = []
    trampoline.arm(environ={}, meta_path=meta, modules={})
    monkeypatch.setattr(builtins, "__import__", broken)
    monkeypatch.delenv("TORCHDEVICE_LOG_LEVEL", raising=False)
    assert meta[0].find_spec("torch") is None
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("TORCHDEVICE_LOG_LEVEL", "debug")
    assert meta[0].find_spec("torch") is None
    assert capsys.readouterr().err == "torchdevice: autoload hook failed: ImportError('broken install')\n"


def test_errors_while_arming_never_escape(trampoline):
    class Exploding(list):
        def insert(self, index, item):
            raise RuntimeError("boom")

    trampoline.arm(environ={}, meta_path=Exploding(), modules={})  # must not raise


def test_true_words_agree_with_config(trampoline):
    from torchdevice.core import config

    assert set(trampoline._TRUE_WORDS) == set(config.TRUE_WORDS)


def test_importing_the_module_imports_neither_torch_nor_torchdevice():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import _torchdevice_trampoline; "
            "print(sorted(m for m in ('torch', 'torchdevice') if m in sys.modules), "
            "[type(f).__name__ for f in sys.meta_path][:1])")
    out = subprocess.run([sys.executable, "-S", "-c", code, str(SRC)], env=clean_env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[] ['TorchdeviceTrampoline']"
