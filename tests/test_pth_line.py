"""The autoload .pth line: generated from the readable source below, cheap, idempotent.

site.py executes the one line of ``src/torchdevice_autoload.pth`` at every
interpreter start, so the line does as little as possible: it reads
TORCHDEVICE_DISABLE, then defines and arms a trampoline finder that imports
torchdevice only when torch is imported (torchdevice/_autoload.py). The
readable source of the line is kept here; regenerate the file with
``python tests/test_pth_line.py > src/torchdevice_autoload.pth``.
Behaviour in real environments is tested in tests/test_autoload.py.
"""
import json
import sys
from pathlib import Path

PTH = Path(__file__).resolve().parents[1] / "src" / "torchdevice_autoload.pth"

_DEBUG = ('os.environ.get("TORCHDEVICE_LOG_LEVEL", "").strip().upper() == "DEBUG" '
          'and print("torchdevice: autoload hook failed:", repr(e), file=sys.stderr)')
# torch already imported when the .pth runs (a site dir added at run time): activate now.
NOW = f"""try: import torchdevice
except Exception as e: {_DEBUG}"""
# Otherwise: a finder that costs one string comparison per import until torch is imported.
TRAMPOLINE = f"""class TorchdeviceTrampoline:
 _torchdevice_finder = _torchdevice_trampoline = True
 def find_spec(self, name, path=None, target=None):
  if name == "torch":
   try: from torchdevice._autoload import find_spec_from_trampoline as find
   except Exception as e:
    {_DEBUG}
    return None
   return find(self, name, path, target)
sys.meta_path.insert(0, TorchdeviceTrampoline())"""
GUARDS = ('os.environ.get("TORCHDEVICE_DISABLE", "").strip().lower() in ("1", "true", "yes", "on")',
          # a site dir on sys.path twice runs the .pth twice: arm once
          'any(getattr(f, "_torchdevice_finder", False) for f in sys.meta_path)')


def pth_line():
    return (f"import os, sys; {' or '.join(GUARDS)} or exec({json.dumps(NOW)} if \"torch\" in sys.modules "
            f"else {json.dumps(TRAMPOLINE)})\n")


def run_line(modules=None, environ=None):
    """Execute the installed line as site.py does, against a private meta_path."""
    import types

    fake_sys = types.SimpleNamespace(meta_path=[], modules=modules or {}, stderr=sys.stderr)
    fake_os = types.SimpleNamespace(environ=environ or {})
    namespace = {"__name__": "site", "os": fake_os, "sys": fake_sys, "print": print}
    line = PTH.read_text().replace("import os, sys; ", "", 1)
    exec(line, namespace)
    return fake_sys.meta_path


def test_file_is_the_generated_line():
    assert PTH.read_text() == pth_line()
    assert PTH.read_text().count("\n") == 1 and PTH.read_text().startswith("import os, sys; ")


def test_arms_one_trampoline_that_ignores_other_imports():
    meta = run_line()
    assert [type(f).__name__ for f in meta] == ["TorchdeviceTrampoline"]
    finder = meta[0]
    assert finder._torchdevice_finder and finder._torchdevice_trampoline
    assert finder.find_spec("json") is None and finder.find_spec("torchvision") is None


def test_disabled_arms_nothing():
    for word in ("1", "true", "YES", " on "):
        assert run_line(environ={"TORCHDEVICE_DISABLE": word}) == []


def test_second_run_keeps_one_finder():
    import types

    fake_sys = types.SimpleNamespace(meta_path=[], modules={}, stderr=sys.stderr)
    namespace = {"os": types.SimpleNamespace(environ={}), "sys": fake_sys, "print": print}
    line = PTH.read_text().replace("import os, sys; ", "", 1)
    exec(line, dict(namespace))
    exec(line, dict(namespace))
    assert len(fake_sys.meta_path) == 1


def test_torch_already_imported_imports_torchdevice_instead(monkeypatch):
    imported = []
    real_import = __import__

    def spy(name, *args, **kwargs):
        if name == "torchdevice":
            imported.append(name)
            return types_module
        return real_import(name, *args, **kwargs)

    import builtins
    import types

    types_module = types.ModuleType("torchdevice")
    monkeypatch.setattr(builtins, "__import__", spy)
    assert run_line(modules={"torch": object()}) == []
    assert imported == ["torchdevice"]


def test_trampoline_failure_is_silent_unless_debug(monkeypatch, capsys):
    import builtins

    real_import = __import__

    def broken(name, *args, **kwargs):
        if name.startswith("torchdevice"):
            raise ImportError("broken install")
        return real_import(name, *args, **kwargs)

    finder = run_line()[0]
    monkeypatch.setattr(builtins, "__import__", broken)
    assert finder.find_spec("torch") is None
    assert capsys.readouterr().err == ""
    finder = run_line(environ={"TORCHDEVICE_LOG_LEVEL": "debug"})[0]
    assert finder.find_spec("torch") is None
    assert "torchdevice: autoload hook failed: ImportError('broken install')" in capsys.readouterr().err


if __name__ == "__main__":
    sys.stdout.write(pth_line())
