"""``torchdevice run``: run a program as ``python script.py`` / ``python -m module`` would, patched.

Patching: ``TORCHDEVICE_DISABLE`` is removed from the environment (so that
child processes started by the program, such as spawn DataLoader workers and
subprocesses, are patched by the autoload ``.pth`` too), the configuration is
checked (a bad value is a usage error, exit 2), and the import hook is armed:
torch is patched when the program first imports it, not before, exactly as with
autoload. ``--report`` sets ``TORCHDEVICE_REPORT`` the same way.

Running a script follows CPython's ``python script.py``: a fresh ``__main__``
module whose ``__file__`` is the absolute path, ``__spec__`` None, a
``SourceFileLoader`` as ``__loader__``; ``sys.argv`` is the script path as typed
plus its arguments; ``sys.path[0]`` is the script's directory (unless
``-P``/``-I``). Directories and zip files with a ``__main__.py`` go through
``runpy.run_path``; ``-m`` goes through ``runpy.run_module(alter_sys=True)``,
as ``python -m`` does, with ``sys.path[0]`` the working directory.

Errors: ``SystemExit`` propagates untouched (same code and message). Any other
uncaught exception is printed by ``sys.excepthook`` with this module's and
runpy's frames cut off, so the traceback is the one ``python script.py``
prints, and the exit code is 1. ``KeyboardInterrupt`` ends the process with
SIGINT after the exit handlers ran, as CPython does.
"""
import atexit
import builtins
import io
import os
import runpy
import sys
import types

_HERE = os.path.normcase(os.path.abspath(__file__))
_RUNPY = os.path.normcase(os.path.abspath(runpy.__file__))
_sigint_at_exit = False


def _error(message: str) -> None:
    sys.stderr.write(f"torchdevice run: {message}\n")


def _prepare(report) -> int:
    from .core import config

    if report is not None:
        value = "1" if report == "-" else report
        try:
            config.load({config.REPORT: value})
        except config.ConfigError as exc:
            if "cannot be written" in str(exc):  # a .json path that cannot be written: say why
                reason = str(exc).split(" cannot be written: ", 1)[1].replace("or 1 for", "or '-' for")
                _error(f"--report {report!r} cannot be written: {reason}")
            else:
                _error(f"--report {report!r} is not valid: give '-' for a table on stderr or a path ending in .json")
            return 2
        os.environ[config.REPORT] = value
    os.environ.pop(config.DISABLE, None)
    try:
        config.load()
    except config.ConfigError as exc:
        _error(str(exc))
        return 2
    from . import _autoload

    _autoload.install()
    return 0


def _own_frame(code) -> bool:
    filename = code.co_filename
    if filename == "<frozen runpy>":
        return True
    path = os.path.normcase(os.path.abspath(filename)) if not filename.startswith("<") else filename
    return path in (_HERE, _RUNPY)


def _report_uncaught(exc: BaseException) -> None:
    """Print ``exc`` as the interpreter would for the program, without our frames."""
    tb = exc.__traceback__
    while tb is not None and _own_frame(tb.tb_frame.f_code):
        tb = tb.tb_next
    exc.__traceback__ = tb
    sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, tb
    if hasattr(sys, "last_exc"):
        sys.last_exc = exc
    sys.excepthook(type(exc), exc, tb)


def _exit_by_sigint() -> None:
    if not _sigint_at_exit:
        return
    import signal

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)


def _set_path0(directory: str) -> None:
    if getattr(sys.flags, "safe_path", False) or sys.flags.isolated:
        return
    if sys.path:
        sys.path[0] = directory
    else:
        sys.path.insert(0, directory)


def _exec_script(path: str, args) -> None:
    abspath = os.path.abspath(path)
    from importlib.machinery import SourceFileLoader

    with io.open_code(abspath) as f:
        source = f.read()
    sys.argv[:] = [path, *args]
    _set_path0(os.path.dirname(abspath))
    code = compile(source, abspath, "exec", dont_inherit=True)
    main = types.ModuleType("__main__")
    main.__dict__.update({
        "__file__": abspath,
        "__cached__": None,
        "__loader__": SourceFileLoader("__main__", abspath),
        "__package__": None,
        "__spec__": None,
        "__builtins__": builtins,
    })
    sys.modules["__main__"] = main
    exec(code, main.__dict__)


def _exec_runpy_path(path: str, args) -> None:
    sys.argv[:] = [path, *args]
    runpy.run_path(path, run_name="__main__")


def _exec_module(module: str, args) -> None:
    sys.argv[:] = ["-m", *args]
    _set_path0(os.getcwd())
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def run(script=None, module=None, args=(), report=None) -> int:
    """Run the program; return its exit code (SystemExit propagates as is)."""
    global _sigint_at_exit
    status = _prepare(report)
    if status:
        return status
    if script is not None:
        is_file = os.path.isfile(script)
        if not is_file and not os.path.isdir(script):
            try:
                open(os.path.abspath(script), "rb").close()
            except OSError as exc:
                _error(f"can't open file {os.path.abspath(script)!r}: [Errno {exc.errno}] {exc.strerror}")
                return 2
        runner, name = (_exec_script if is_file and not _is_zip(script) else _exec_runpy_path), script
    else:
        runner, name = _exec_module, module
    atexit.register(_exit_by_sigint)  # registered first, so it runs after the program's own handlers
    try:
        runner(name, list(args))
    except SystemExit:
        raise
    except BaseException as exc:
        if module is not None and isinstance(exc, ImportError) and _no_user_frames(exc):
            _error(str(exc))  # python -m: "No module named x"
            return 1
        _report_uncaught(exc)
        if isinstance(exc, KeyboardInterrupt):
            _sigint_at_exit = True
        return 1
    return 0


def _no_user_frames(exc) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if not _own_frame(tb.tb_frame.f_code) and not tb.tb_frame.f_code.co_filename.startswith("<frozen"):
            return False
        tb = tb.tb_next
    return True


def _is_zip(path: str) -> bool:
    import zipfile

    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False
