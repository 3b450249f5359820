"""``torchdevice run`` against real ``python script.py`` / ``python -m module`` runs.

The reference run is plain python with torchdevice active through its autoload
.pth (as installed in the test environment); the ``run`` side has
TORCHDEVICE_DISABLE=1, so only ``torchdevice run`` can activate it.
"""
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import clean_env

CONSOLE = shutil.which("torchdevice", path=os.path.dirname(sys.executable))

PROGRAM = '''
import pickle, sys, torch

class Point:
    def __init__(self, x):
        self.x = x

def fail():
    raise ValueError("bad value " + sys.argv[-1])

print("argv", sys.argv)
print("name", __name__, "file", __file__, "spec", getattr(__spec__, "name", None), "package", __package__)
print("path0", sys.path[0])
print("main is module", sys.modules["__main__"].__dict__ is globals())
print("pickle", pickle.loads(pickle.dumps(Point(7))).x, type(pickle.loads(pickle.dumps(Point(1)))).__module__)
print("cuda", torch.cuda.is_available(), torch.zeros(1, device="cuda").device.type)

if __name__ == "__main__":
    print("main block ran")
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "exit3":
        sys.exit(3)
    if mode == "exitmsg":
        sys.exit("a message from the program")
    if mode == "raise":
        fail()
    if mode == "interrupt":
        raise KeyboardInterrupt
    if mode == "chained":
        try:
            fail()
        except ValueError as exc:
            raise RuntimeError("while handling") from exc
'''


def reference_env():
    return clean_env()  # autoload active


def run_env():
    return clean_env(TORCHDEVICE_DISABLE="1")


def python(args, env, cwd):
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture
def program(tmp_path):
    (tmp_path / "prog.py").write_text(PROGRAM)
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tool.py").write_text(PROGRAM)
    return tmp_path


def traceback_tail(stderr):
    """From the 'Traceback' header (or a SyntaxError's file line) to the end."""
    lines = stderr.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last):"):
            return lines[i:]
    return lines


def user_frames(lines):
    return [line for line in lines if not line.strip().startswith('File "<frozen runpy>"')]


@pytest.mark.parametrize("mode", ["", "exit3", "exitmsg", "raise", "chained"])
def test_script_matches_python(program, mode):
    args = ["prog.py", mode, "--flag", "x y"]
    expected = python(args, reference_env(), program)
    got = python(["-m", "torchdevice", "run", *args], run_env(), program)
    assert got.stdout == expected.stdout
    assert got.returncode == expected.returncode
    assert got.stderr == expected.stderr
    assert "cuda True cpu" in got.stdout and "main block ran" in got.stdout
    assert {"": 0, "exit3": 3, "exitmsg": 1, "raise": 1, "chained": 1}[mode] == got.returncode


def test_script_exception_traceback_has_only_the_programs_frames(program):
    got = python(["-m", "torchdevice", "run", "prog.py", "raise"], run_env(), program)
    tail = traceback_tail(got.stderr)
    assert tail[0] == "Traceback (most recent call last):"
    line = PROGRAM.splitlines().index("        fail()") + 1
    assert f'File "{program / "prog.py"}", line {line}, in <module>' in tail[1]
    assert tail[-1] == "ValueError: bad value raise"
    assert "torchdevice" not in got.stderr and "runpy" not in got.stderr


@pytest.mark.parametrize("mode", ["", "exit3", "raise"])
def test_module_matches_python_dash_m(program, mode):
    args = ["-m", "pkg.tool", mode, "extra"]
    expected = python(args, reference_env(), program)
    got = python(["-m", "torchdevice", "run", *args], run_env(), program)
    assert got.stdout == expected.stdout
    assert got.returncode == expected.returncode
    if mode == "raise":
        # python -m shows two frames of its own runpy before the program's; the rest is identical
        assert user_frames(traceback_tail(got.stderr)) == user_frames(traceback_tail(expected.stderr))
    else:
        assert got.stderr == expected.stderr


def test_argv_and_main_details(program):
    got = python(["-m", "torchdevice", "run", "prog.py", "a", "--help", "-m", "z"], run_env(), program)
    lines = got.stdout.splitlines()
    assert lines[0] == "argv ['prog.py', 'a', '--help', '-m', 'z']"
    assert lines[1] == f"name __main__ file {program / 'prog.py'} spec None package None"
    assert lines[2] == f"path0 {program}"
    assert lines[3] == "main is module True"
    assert lines[4] == "pickle 7 __main__"


def test_script_in_another_directory_gets_its_directory_on_sys_path(program, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("cwd")
    expected = python([str(program / "prog.py")], reference_env(), elsewhere)
    got = python(["-m", "torchdevice", "run", str(program / "prog.py")], run_env(), elsewhere)
    assert got.stdout == expected.stdout and f"path0 {program}" in got.stdout


def test_keyboard_interrupt_ends_like_python(program):
    expected = python(["prog.py", "interrupt"], reference_env(), program)
    got = python(["-m", "torchdevice", "run", "prog.py", "interrupt"], run_env(), program)
    assert expected.returncode == got.returncode == -signal.SIGINT
    assert traceback_tail(got.stderr) == traceback_tail(expected.stderr)


def test_syntax_error_matches_python(tmp_path):
    (tmp_path / "bad.py").write_text("x = 1\ndef broken(:\n    pass\n")
    expected = python(["bad.py"], reference_env(), tmp_path)
    got = python(["-m", "torchdevice", "run", "bad.py"], run_env(), tmp_path)
    assert got.returncode == expected.returncode == 1
    assert got.stderr == expected.stderr


def test_missing_script_and_module(tmp_path):
    got = python(["-m", "torchdevice", "run", "nope.py"], run_env(), tmp_path)
    assert got.returncode == 2
    assert got.stderr == f"torchdevice run: can't open file {str(tmp_path / 'nope.py')!r}: [Errno 2] No such file or directory\n"
    got = python(["-m", "torchdevice", "run", "-m", "no_such_module_xyz"], run_env(), tmp_path)
    assert got.returncode == 1
    assert got.stderr == "torchdevice run: No module named no_such_module_xyz\n"


@pytest.mark.parametrize("argv,message", [
    (["run"], "a script or -m module is required"),
    (["run", "--bogus", "x.py"], "unrecognized option '--bogus'"),
    (["run", "--report"], "argument --report: expected one argument"),
    (["run", "--report", "out.txt", "x.py"], "--report 'out.txt' is not valid"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_usage_errors_exit_2(tmp_path, argv, message):
    got = python(["-m", "torchdevice", *argv], run_env(), tmp_path)
    assert got.returncode == 2
    assert message in got.stderr
    assert got.stdout == ""


def test_bad_configuration_is_a_usage_error(program):
    env = run_env()
    env["TORCHDEVICE_DEVICE"] = "tpu"
    got = python(["-m", "torchdevice", "run", "prog.py"], env, program)
    assert got.returncode == 2
    assert got.stderr == ("torchdevice run: torchdevice: TORCHDEVICE_DEVICE='tpu' is not valid; "
                          "accepted values: auto, cpu, mps, cuda.\n")


def test_help_for_every_subcommand(tmp_path):
    for argv in ([], ["info"], ["run"], ["coverage"]):
        got = python(["-m", "torchdevice", *argv, "--help"], run_env(), tmp_path)
        assert got.returncode == 0, argv
        assert got.stdout.startswith(f"usage: torchdevice {' '.join(argv)}".rstrip()), got.stdout


def test_run_without_autoload_installed(program):
    """python -S: no .pth is read at all; run still patches (import torchdevice from the path)."""
    import torchdevice

    src = os.path.dirname(os.path.dirname(torchdevice.__file__))
    import torch

    site_dir = os.path.dirname(os.path.dirname(torch.__file__))
    env = clean_env(PYTHONPATH=os.pathsep.join([src, site_dir]))
    got = subprocess.run([sys.executable, "-S", "-m", "torchdevice", "run", "prog.py"], env=env, cwd=program,
                         capture_output=True, text=True, timeout=300)
    assert got.returncode == 0, got.stderr
    assert "cuda True cpu" in got.stdout


@pytest.mark.skipif(CONSOLE is None, reason="the torchdevice console script is not installed next to this python")
def test_console_script_runs_the_same(program):
    expected = python(["prog.py", "exit3"], reference_env(), program)
    got = subprocess.run([CONSOLE, "run", "prog.py", "exit3"], env=run_env(), cwd=program, capture_output=True,
                         text=True, timeout=300)
    assert (got.stdout, got.stderr, got.returncode) == (expected.stdout, expected.stderr, 3)


def test_report_option_and_children_patched(program, tmp_path):
    out = tmp_path / "r.json"
    child = textwrap.dedent("""
        import subprocess, sys
        import torch
        torch.zeros(1, device="cuda")
        done = subprocess.run([sys.executable, "-c", "import torch; print(torch.ones(1, device='cuda:0').device)"])
        sys.exit(done.returncode)
    """)
    (program / "parent.py").write_text(child)
    got = python(["-m", "torchdevice", "run", "--report", str(out), "parent.py"], run_env(), program)
    assert got.returncode == 0, got.stderr
    assert got.stdout == "cpu\n"
    import json

    data = json.loads(out.read_text())
    asked = sorted((r["asked"], r["file"]) for r in data["calls"])
    assert asked == [("cuda", str(program / "parent.py")), ("cuda:0", "<string>")]
    assert len(data["processes"]) == 2


def test_report_dash_goes_to_stderr(program):
    got = python(["-m", "torchdevice", "run", "--report", "-", "prog.py"], run_env(), program)
    assert got.returncode == 0
    assert got.stderr.startswith("torchdevice migration report: 2 call site(s) ran on cpu")
    rows = [line.split() for line in got.stderr.splitlines()[2:]]
    assert sorted(rows) == [["1", "prog.py:16", "torch.cuda.is_available", "emulated", "-", "cpu"],
                            ["1", "prog.py:16", "torch.zeros", "redirected", "cuda", "cpu"]]
