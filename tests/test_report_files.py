"""The migration report's files and their truth (issue 18 §10, §11, §14, §16, §17), by fault injection.

Each test runs a real program in a subprocess (``torchdevice run``, or ``import torchdevice``
before ``import torch`` as autoload does) and asserts the exact outcome: the report written
where it was asked for and nowhere else, or a clear error naming TORCHDEVICE_REPORT before the
program runs, and never a temporary file left behind.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import clean_env

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
POSIX = pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals, symlinks and resource limits")


def env(**overrides):
    """The test environment with this checkout importable (the tests may run from any directory)."""
    path = os.environ.get("PYTHONPATH")
    return clean_env(PYTHONPATH=SRC + (os.pathsep + path if path else ""), TORCHDEVICE_DEVICE="cpu", **overrides)


def run(args, cwd, timeout=300, **overrides):
    return subprocess.run([sys.executable, *args], env=env(**overrides), cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def program(tmp_path, text, name="prog.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def leftovers(directory):
    """Temporary files of a report write left in ``directory`` (there must be none)."""
    return sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))


PROGRAM = """
import sys, torch
torch.zeros(2, device="cuda")  # line 3
print("ran", *sys.argv[1:])
"""


# -- §10: the report file is written securely and atomically ----------------------------------------
@POSIX
def test_planted_symlinks_never_redirect_the_report_write(tmp_path):
    """A symlink at the old temporary name (<path>.<pid>.tmp) made the report overwrite its
    target; a symlink at the report path itself is replaced, not followed."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "report.json"
    script = program(tmp_path, f"""
        import os, torch
        out = {str(out)!r}
        os.symlink({str(victim)!r}, f"{{out}}.{{os.getpid()}}.tmp")  # the name the old code used
        torch.zeros(1, device="cuda")
    """)
    done = run(["-m", "torchdevice", "run", "--report", str(out), str(script)], tmp_path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert victim.read_text() == "precious\n"
    assert json.loads(out.read_text())["calls"][0]["api"] == "torch.zeros"

    out.unlink()
    os.symlink(victim, out)  # the report path is a symlink to the victim
    script.write_text("import torch\ntorch.zeros(1, device='cuda')\n")
    done = run(["-m", "torchdevice", "run", "--report", str(out), str(script)], tmp_path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert victim.read_text() == "precious\n" and not out.is_symlink()
    assert json.loads(out.read_text())["schema"] == "torchdevice.report/1"
    planted = [p for p in os.listdir(tmp_path) if p.endswith(".tmp") or ".json." in p]
    assert len(planted) == 1 and os.readlink(tmp_path / planted[0]) == str(victim), "only the planted link"


@POSIX
def test_report_file_mode_follows_the_umask_as_open_would(tmp_path):
    out = tmp_path / "report.json"
    script = program(tmp_path, PROGRAM)
    done = subprocess.run(["sh", "-c", f"umask 027 && exec {sys.executable} -m torchdevice run --report {out} {script}"],
                          env=env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert oct(out.stat().st_mode & 0o777) == oct(0o640)


def test_a_directory_made_at_the_report_path_during_the_run_leaves_no_temporary_file(tmp_path):
    out = tmp_path / "report.json"
    script = program(tmp_path, f"""
        import os, torch
        torch.zeros(1, device="cuda")
        os.mkdir({str(out)!r})  # after the start-up check: the write at exit fails
        print("done")
    """)
    done = run(["-m", "torchdevice", "run", "--report", str(out), str(script)], tmp_path)
    assert done.returncode == 0 and done.stdout == "done\n"
    assert done.stderr.startswith("torchdevice: could not write the migration report: IsADirectoryError: ")
    assert done.stderr.count("\n") == 1
    assert out.is_dir() and os.listdir(out) == []
    assert leftovers(tmp_path) == []


@POSIX
def test_a_failing_write_leaves_no_temporary_file_and_keeps_the_exit_code(tmp_path):
    """A full disk, injected as a file size limit (EFBIG) that the report write exceeds."""
    out = tmp_path / "report.json"
    script = program(tmp_path, """
        import resource, signal, sys, torch
        for i in range(50):
            exec(f"torch.zeros(1, device='cuda:{i % 4}')  # site {i}")
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (200, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        sys.exit(3)
    """)
    done = run(["-m", "torchdevice", "run", "--report", str(out), str(script)], tmp_path,
               TORCHDEVICE_DEVICE_COUNT="4")
    assert done.returncode == 3
    assert done.stderr == ("torchdevice: could not write the migration report: OSError: "
                           "[Errno 27] File too large\n")
    assert not out.exists() and leftovers(tmp_path) == []


# -- §11: the path is checked when the program starts ----------------------------------------------
def test_tilde_is_expanded(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    program(work, PROGRAM)
    done = run(["-c", "import torchdevice, runpy; runpy.run_path('prog.py', run_name='__main__')"], work,
               HOME=str(home), TORCHDEVICE_REPORT="~/reports/r.json")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert os.listdir(work) == ["prog.py"], "no literal ./~ directory"
    assert json.loads((home / "reports" / "r.json").read_text())["calls"][0]["line"] == 3


def bad_paths(tmp_path):
    """(value of TORCHDEVICE_REPORT, reason the error gives) for every path that cannot be written."""
    (tmp_path / "dir.json").mkdir()
    (tmp_path / "file").write_text("")
    cases = [
        ("dir.json", f"{tmp_path / 'dir.json'} is a directory"),
        ("file/r.json", f"{tmp_path / 'file'} is not a directory"),
        ("file/deeper/r.json", f"{tmp_path / 'file'} is not a directory"),
    ]
    if os.name == "posix" and os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        cases.append(("locked/sub/r.json", f"the directory {locked} is not writable"))
    return cases


def test_a_bad_path_is_a_config_error_before_torch_loads(tmp_path):
    script = program(tmp_path, PROGRAM)
    for value, reason in bad_paths(tmp_path):
        done = run(["-c", "import sys, torchdevice\nprint('start', flush=True)\n"
                    "try:\n    import torch\nexcept torchdevice.ConfigError as exc:\n"
                    "    print(exc)\n    print('torch loaded:', 'torch._C' in sys.modules)\n"], tmp_path,
                   TORCHDEVICE_REPORT=value)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [
            "start",
            f"torchdevice: TORCHDEVICE_REPORT={value!r} cannot be written: {reason}; give a .json path in a "
            "writable directory (missing directories are created), or 1 for a table on stderr.",
            "torch loaded: False"], value
        # torchdevice run refuses before running the program (usage error, exit 2)
        done = run(["-m", "torchdevice", "run", "--report", value, str(script)], tmp_path)
        assert (done.returncode, done.stdout) == (2, ""), value
        assert done.stderr == (f"torchdevice run: --report {value!r} cannot be written: {reason}; give a .json "
                               "path in a writable directory (missing directories are created), or '-' for a "
                               "table on stderr.\n")
    assert sorted(os.listdir(tmp_path)) == sorted(["prog.py", "dir.json", "file"] + (
        ["locked"] if (tmp_path / "locked").exists() else []))
    assert os.listdir(tmp_path / "dir.json") == []


def test_missing_directories_are_accepted_and_created_at_exit(tmp_path):
    script = program(tmp_path, PROGRAM)
    done = run(["-m", "torchdevice", "run", "--report", "a/b/r.json", str(script)], tmp_path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert json.loads((tmp_path / "a" / "b" / "r.json").read_text())["calls"][0]["line"] == 3


# -- §16: an explicit path below a reporting program starts its own report ---------------------------
def test_a_nested_run_with_its_own_path_starts_its_own_report(tmp_path):
    (tmp_path / "sub").mkdir()
    program(tmp_path, """
        import torch
        torch.ones(1, device="cuda")  # line 3: the nested program's own call
    """, name="nested.py")
    program(tmp_path, """
        import torch
        torch.full((1,), 2.0, device="cuda")  # line 3: a plain child's call
    """, name="child.py")
    parent = program(tmp_path, f"""
        import subprocess, sys, torch
        torch.zeros(1, device="cuda")  # line 3
        run = lambda args, **kw: subprocess.run([sys.executable, *args], check=True, **kw)
        run(["-m", "torchdevice", "run", "--report", "nested.json", "nested.py"])
        run(["-m", "torchdevice", "run", "--report", "parent.json", "child.py"])  # the same report: joins
        run([{str(tmp_path / "child.py")!r}], cwd="sub")  # inherits the report; another working directory
    """, name="parent.py")
    done = run(["-m", "torchdevice", "run", "--report", "parent.json", str(parent)], tmp_path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    outer = json.loads((tmp_path / "parent.json").read_text())
    inner = json.loads((tmp_path / "nested.json").read_text())
    assert sorted((r["api"], os.path.basename(r["file"]), r["count"], r["processes"]) for r in outer["calls"]) == [
        ("torch.full", "child.py", 2, 2), ("torch.zeros", "parent.py", 1, 1)]
    assert sorted(p["role"] for p in outer["processes"]) == ["child", "child", "main"]
    assert [(r["api"], os.path.basename(r["file"]), r["count"]) for r in inner["calls"]] == [
        ("torch.ones", "nested.py", 1)]
    assert [p["role"] for p in inner["processes"]] == ["main"]
    assert not (tmp_path / "sub" / "parent.json").exists()


# -- §17: no arguments in the report ----------------------------------------------------------------
def test_processes_name_the_program_not_its_arguments(tmp_path):
    script = program(tmp_path, PROGRAM)
    package = tmp_path / "tool"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(PROGRAM)
    secret = "hunter2-token"
    out = tmp_path / "r.json"
    got = {}
    for args in (["-m", "torchdevice", "run", "--report", str(out), str(script), "--password", secret],
                 ["-m", "torchdevice", "run", "--report", str(out), "-m", "tool", "--token", secret, "x"],
                 ["-c", "import torchdevice, runpy, sys; sys.argv[1:] = ['--key', sys.argv.pop()]; "
                  "runpy.run_path('prog.py', run_name='__main__')", secret]):
        done = run(args, tmp_path, **({} if args[0] == "-m" else {"TORCHDEVICE_REPORT": str(out)}))
        assert done.returncode == 0 and secret in done.stdout, done.stderr
        text = out.read_text()
        assert secret not in text
        got[args[-1] if args[0] == "-c" else args[5]] = json.loads(text)["processes"]
    assert got[str(script)] == [{"pid": got[str(script)][0]["pid"], "role": "main", "rank": None,
                                 "argv": [str(script)], "program": str(script), "argv_omitted": 2}]
    module = got["-m"][0]
    assert (module["program"], module["argv"], module["argv_omitted"]) == (
        "-m tool", [str(package / "__main__.py")], 3)
    # runpy.run_path sets argv[0] to the path it runs, as python prog.py would
    assert [(p["program"], p["argv"], p["argv_omitted"]) for p in got[secret]] == [("prog.py", ["prog.py"], 2)]


# -- §14: workers that are terminated ---------------------------------------------------------------
POOL = """
import multiprocessing, sys, torch

def work(i):
    return int(torch.zeros(2, device="cuda").sum().item()) + i  # line 5

if __name__ == "__main__":
    with multiprocessing.get_context(sys.argv[1]).Pool(2) as pool:
        print(sum(pool.map(work, range(8), chunksize=1)))
"""


@POSIX
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_pool_workers_terminated_by_the_with_block_are_counted(tmp_path, context):
    """``with Pool() as pool:`` ends with terminate(): the workers die of SIGTERM before their
    exit finalizers run. Each worker that recorded a call writes its records on SIGTERM."""
    script = program(tmp_path, POOL)
    out = tmp_path / "r.json"
    done = run(["-m", "torchdevice", "run", "--report", str(out), str(script), context], tmp_path)
    assert done.returncode == 0 and done.stdout == "28\n", done.stderr
    assert done.stderr == ""
    data = json.loads(out.read_text())
    rows = [(r["api"], r["line"], r["asked"], r["count"]) for r in data["calls"]]
    assert rows == [("torch.zeros", 5, "cuda", 8)]
    children = [p for p in data["processes"] if p["role"] == "child"]
    assert 1 <= len(children) <= 2 and data["calls"][0]["processes"] == len(children)
    assert data["lost"] == 0 and not any(p.get("lost") for p in data["processes"])


KILLED = """
import multiprocessing, os, signal, sys, torch

def record_then(how):
    torch.ones(1, device="cuda")  # line 5
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "term":
        os.kill(os.getpid(), signal.SIGTERM)

if __name__ == "__main__":
    torch.zeros(1, device="cuda")  # line 12
    for how in sys.argv[1:]:
        p = multiprocessing.get_context("fork").Process(target=record_then, args=(how,))
        p.start()
        p.join()
        print(how, p.exitcode)
"""


@POSIX
def test_a_killed_child_is_reported_as_lost_and_a_terminated_one_dies_of_sigterm(tmp_path):
    script = program(tmp_path, KILLED)
    out = tmp_path / "r.json"
    done = run(["-m", "torchdevice", "run", "--report", str(out), str(script), "kill", "term"], tmp_path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout == f"kill {-signal.SIGKILL}\nterm {-signal.SIGTERM}\n", "SIGTERM still ends the child"
    data = json.loads(out.read_text())
    assert data["lost"] == 1
    lost = [p for p in data["processes"] if p.get("lost")]
    assert len(lost) == 1 and lost[0]["role"] == "child" and lost[0]["program"] == str(script)
    rows = sorted((r["api"], r["line"], r["count"], r["processes"]) for r in data["calls"])
    assert rows == [("torch.ones", 5, 1, 1), ("torch.zeros", 12, 1, 1)], "the terminated child's call is there"
    # The table says that a process's records are missing.
    done = run(["-m", "torchdevice", "run", "--report", "-", str(script), "kill"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert ("  (1 process(es) recorded calls but ended without writing them (killed, or still running): "
            "their calls are missing above)\n") in done.stderr


@POSIX
def test_a_programs_own_sigterm_handler_is_left_alone(tmp_path):
    script = program(tmp_path, """
        import multiprocessing, os, signal, torch

        def child():
            signal.signal(signal.SIGTERM, lambda *a: print("own handler", flush=True) or os._exit(7))
            torch.ones(1, device="cuda")
            os.kill(os.getpid(), signal.SIGTERM)

        if __name__ == "__main__":
            p = multiprocessing.get_context("fork").Process(target=child)
            p.start()
            p.join()
            print("exit", p.exitcode)
    """)
    done = run(["-m", "torchdevice", "run", "--report", "r.json", str(script)], tmp_path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout == "own handler\nexit 7\n"
    assert json.loads((tmp_path / "r.json").read_text())["lost"] == 1, "its records are missing, and said so"
