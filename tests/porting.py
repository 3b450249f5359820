"""Helpers for the whole-program tests (tests/test_end_to_end.py, tests/test_corpus.py).

``cpu_version(source)`` ports a CUDA program to the CPU the way a person would
by hand, to get the native reference run: device strings and ``.cuda(...)`` say
cpu, CUDA-only calls that have no CPU meaning are dropped, legacy
``torch.cuda.<Type>Tensor`` names become the CPU types, NCCL becomes gloo.
``torch.cuda`` seeding calls stay (they are harmless no-ops in a CPU-only torch).
Program-specific edits are passed as ``extra`` (old, new) pairs, and each must
match, so a reference can never silently drift from its program.

``run_program`` runs a program *file* (not ``-c``: spawned DataLoader workers and
torchrun re-import the main module by path) in a fresh interpreter, by default
in ``program_env()``: no TORCHDEVICE_* variables and OMP_NUM_THREADS=1, for the
redirected and the native run alike. One intra-op thread is what torchrun sets
by default; on a shared, oversubscribed CI machine two spinning OpenMP threads
made the same program 2-4x slower.
"""
import os
import re
import signal
import socket
import subprocess
from pathlib import Path

from conftest import clean_env

PROGRAMS = Path(__file__).parent / "programs"

_CUDA_STRING = re.compile(r"""(["'])cuda(:\d+)?\1""")
_CUDA_FSTRING = re.compile(r"""f(["'])cuda:\{[^}]*\}\1""")
_CUDA_CALL = re.compile(r"\.cuda\([^()]*\)")
_DROPPED_CALL = re.compile(r"torch\.cuda\.(set_device|synchronize)\([^()]*\)")
_LEGACY_TYPE = re.compile(r"torch\.cuda\.(\w+Tensor)\b")


def cpu_version(source: str, extra=()) -> str:
    """``source`` ported to the CPU (see the module docstring)."""
    ported = _CUDA_STRING.sub(r"\1cpu\1", source)
    ported = _CUDA_FSTRING.sub('"cpu"', ported)
    ported = _CUDA_CALL.sub(".cpu()", ported)
    ported = _DROPPED_CALL.sub("None", ported)
    ported = _LEGACY_TYPE.sub(r"torch.\1", ported)
    ported = ported.replace("torch.cuda.is_available()", "True")
    ported = ported.replace("pin_memory=True", "pin_memory=False")
    ported = ported.replace('"nccl"', '"gloo"')
    for old, new in extra:
        assert old in ported, f"cpu_version: {old!r} does not occur in the program"
        ported = ported.replace(old, new)
    assert ported != source, "cpu_version changed nothing: the program does not look like CUDA code"
    return ported


def write_cpu_version(name: str, directory: Path, extra=()) -> Path:
    """tests/programs/<name> ported to the CPU, written under ``directory`` with the same file name."""
    path = Path(directory) / name
    path.write_text(cpu_version((PROGRAMS / name).read_text(), extra))
    return path


def program_env(**overrides):
    """Environment of a program run: no TORCHDEVICE_* variables, one OpenMP thread, plus ``overrides``."""
    return clean_env(**{"OMP_NUM_THREADS": "1", **overrides})


def native_env(**overrides):
    """Environment of a native reference run: torchdevice switched off."""
    return program_env(TORCHDEVICE_DISABLE="1", **overrides)


def run_program(python, program, *args, env=None, cwd=None, timeout=180):
    """Run a program file with ``python``; ``program`` is a path or a file name in tests/programs/."""
    path = Path(program) if os.path.isabs(str(program)) else PROGRAMS / program
    return subprocess.run([str(python), str(path), *map(str, args)], env=env if env is not None else program_env(),
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TEARDOWN_CRASH = "terminate called without an active exception"


def _descendants(pid):
    """Processes below ``pid`` (Linux /proc; empty elsewhere)."""
    children = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def _torchrun_once(python, path, nproc, args, env, cwd, timeout):
    """One job on a port of its own. On timeout the launcher and its ranks are killed (the ranks
    run in sessions of their own and would outlive the launcher) and TimeoutExpired is raised."""
    command = [str(python), "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(path), *map(str, args)]
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in [*_descendants(process.pid), process.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        stdout, stderr = process.communicate()
        raise subprocess.TimeoutExpired(command, timeout, stdout, stderr) from None
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def torchrun(python, program, nproc, *args, env=None, cwd=None, timeout=180):
    """``torchrun --nproc_per_node=nproc program args`` on loopback with a free port."""
    path = Path(program) if os.path.isabs(str(program)) else PROGRAMS / program
    env = env if env is not None else program_env()
    try:
        result = _torchrun_once(python, path, nproc, args, env, cwd, timeout)
    except subprocess.TimeoutExpired:
        # Seen twice in three matrix runs with two torch envs testing side by side on 2 cores
        # (torch 2.2 and 2.3, a 6-second program) and once in a CI run alone (torch 2.2): one
        # rank waited in dist.barrier() for good after its peer had exited (gloo, also with
        # torchdevice disabled). One more run on a new port.
        result = _torchrun_once(python, path, nproc, args, env, cwd, timeout)
    # The only traceback allowed is the launcher's own report of the aborted rank.
    program_traceback = result.stderr.count("Traceback") > result.stderr.count("ChildFailedError:")
    if result.returncode != 0 and TEARDOWN_CRASH in result.stderr and not program_traceback:
        # torch's gloo process group sometimes aborts a rank at exit, after the program
        # finished (also without torchdevice; docs/amp-nn-distributed.md): run it once more,
        # on a new port (ranks of the aborted job may still hold the old one).
        result = _torchrun_once(python, path, nproc, args, env, cwd, timeout)
    return result


# What a run may print on stderr natively, with or without torchdevice:
_NATIVE_NOTICES = re.compile("|".join([
    # CPython's multiprocessing resource tracker sometimes reports a semaphore of a spawn-context
    # DataLoader as leaked at shutdown (a race in the standard library).
    r"^\S*multiprocessing/resource_tracker\.py:\d+: UserWarning: resource_tracker: .*\n^\s+warnings\.warn\(.*\n",
    # torch's CUDA builds, from torch.utils.cpp_extension (imported by torch.compile), when a CUDA
    # toolkit is installed but no GPU runs.
    # (torch >= 2.8 logs it with a glog-style prefix: "W1125 01:14:37.730000 28796 torch/...:118] [0/0] ")
    r"^(?:[IWE]\d{4} [\d:.]+ \d+ \S+\] (?:\[[\d/]+\] )?)?No CUDA runtime is found, using CUDA_HOME=.*\n",
    # torch 2.4 and 2.5 on torch.load without weights_only, shown at the program's own line (a line
    # naming torchdevice would mean the wrapper hid the caller: not removed).
    r"^(?!.*torchdevice)\S+:\d+: FutureWarning: You are using `torch\.load` with `weights_only=False`.*\n"
    r"(?:^\s+\S.*\n)?",
]), re.M)


def without_native_notices(stderr: str) -> str:
    """``stderr`` without the notices torch or CPython print natively (see _NATIVE_NOTICES)."""
    return _NATIVE_NOTICES.sub("", stderr)


def failure(result) -> str:
    """The tail of a failed run, for assertion messages."""
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-2000:]}\n--- stderr\n{result.stderr[-4000:]}"


__all__ = ["PROGRAMS", "cpu_version", "write_cpu_version", "program_env", "native_env", "run_program", "torchrun",
           "free_port", "failure", "without_native_notices"]
