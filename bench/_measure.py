"""Timing primitives of the benchmark: interleaved A/B blocks, timed subprocesses, statistics.

Two kinds of measurement, both interleaved so that a change of machine load
hits both sides alike:

* ``ab_calls`` times a statement per call in this process. Side A runs with
  torchdevice patched, side B with every patch undone (``torchdevice.unpatch()``
  restores the identical original objects), and the two alternate block by
  block (A B, B A, A B, ...). The clock is this thread's CPU time
  (``time.thread_time``): on a shared machine, time spent preempted by other
  processes would otherwise swamp differences of a few nanoseconds. The cost
  of the empty timing loop is measured the same way and subtracted, so that
  ratios compare the calls themselves.
* ``ab_loops`` times training steps the same way, by process CPU time and by
  wall time (both are kept).
* ``ab_processes`` runs whole interpreters round-robin (like hyperfine) and
  records wall time and the child's CPU time (user + sys, from ``wait4``),
  which is less sensitive to other processes on a shared machine.

Figures are medians over the repetitions; a ratio is median(A) / median(B).
"""
import gc
import os
import statistics
import subprocess
import sys
import time
import timeit


def median(values):
    return statistics.median(values) if values else None


def quartiles(values):
    if len(values) < 4:
        return min(values), max(values)
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


class Switch:
    """Turns torchdevice on (A) and off (B) in this process, remembering the state."""

    def __init__(self, **settings):
        import torchdevice

        self._td = torchdevice
        self._settings = settings
        self.state = None

    def set(self, on, **settings):
        wanted = (on, tuple(sorted(settings.items())))
        if self.state == wanted:
            return
        self._td.unpatch()
        if on:
            self._td.patch(strict=True, **{**self._settings, **settings})
        self.state = wanted


def _calibrate(timer, block_seconds):
    number = 1
    while True:
        elapsed = timer.timeit(number)
        if elapsed >= block_seconds / 10 or number >= 10_000_000:
            return max(1, int(number * block_seconds / max(elapsed, 1e-9)))
        number *= 10


CLOCK = time.thread_time
_EMPTY = timeit.Timer("pass", timer=CLOCK)
_loop_ns_cache = {}


def loop_overhead_ns(number, reps=5):
    """ns per iteration of timeit's empty loop (subtracted from per-call figures)."""
    key = number
    if key not in _loop_ns_cache:
        _loop_ns_cache[key] = min(_EMPTY.timeit(number) for _ in range(reps)) / number * 1e9
    return _loop_ns_cache[key]


def _timer(stmt, namespace, filename=None):
    """A timeit.Timer; with ``filename``, its loop is compiled as code of that file.

    timeit compiles its loop as ``<timeit-src>``, which call-site classification
    (core/sites.py) files with the standard library. The migration-report rows
    time calls made from the program's own lines, so they give a file name.
    """
    if filename is None:
        return timeit.Timer(stmt, globals=namespace, timer=CLOCK)
    saved = timeit.dummy_src_name
    timeit.dummy_src_name = filename
    try:
        return timeit.Timer(stmt, globals=namespace, timer=CLOCK)
    finally:
        timeit.dummy_src_name = saved


def ab_calls(switch, stmt_a, stmt_b, namespace, reps, block_seconds, setup=None, a_settings=None, b_on=False,
             b_settings=None, filename=None):
    """Per-call ns of ``stmt_a`` (torchdevice on) and ``stmt_b`` (off, unless ``b_on``), interleaved.

    ``setup(on)``, if given, runs after each switch (e.g. to rebuild objects
    that captured patched callables). ``filename``: compile the timing loops as
    code of that file (see ``_timer``). Returns (samples_a, samples_b) in ns.
    """
    a_settings = a_settings or {}
    b_settings = b_settings or {}
    timers = {True: _timer(stmt_a, namespace, filename), False: _timer(stmt_b, namespace, filename)}
    sides = {True: (True, a_settings), False: (b_on, b_settings)}
    numbers = {}
    for side in (True, False):
        on, settings = sides[side]
        switch.set(on, **settings)
        if setup is not None:
            setup(side)
        timers[side].timeit(max(1, 100))  # warm caches and lazy paths
        numbers[side] = _calibrate(timers[side], block_seconds)
    number = min(numbers.values())
    overhead = loop_overhead_ns(number)
    samples = {True: [], False: []}
    for rep in range(reps):
        for side in ((True, False) if rep % 2 == 0 else (False, True)):
            on, settings = sides[side]
            switch.set(on, **settings)
            if setup is not None:
                setup(side)
            elapsed = timers[side].timeit(number)
            samples[side].append(max(elapsed / number * 1e9 - overhead, 0.0))
    return samples[True], samples[False]


def ab_loops(switch, step_a, step_b, reps, steps, setup=None):
    """Steps per second of two training-step callables, interleaved (A on, B off).

    Returns (cpu_a, cpu_b, wall_a, wall_b): steps per second of process CPU
    time and of wall time.
    """
    samples = {True: [], False: []}
    walls = {True: [], False: []}
    steppers = {True: step_a, False: step_b}
    for side in (True, False):  # warm-up, one block each
        switch.set(side)
        if setup is not None:
            setup(side)
        for _ in range(max(2, steps // 5)):
            steppers[side]()
    settle = max(1, steps // 10)
    for rep in range(reps):
        for side in ((True, False) if rep % 2 == 0 else (False, True)):
            switch.set(side)
            if setup is not None:
                setup(side)
            step = steppers[side]
            # Switching allocates (patch() builds wrappers); start each block from the same
            # collector state and warm caches, so a collection it provokes is not billed to one side.
            gc.collect()
            for _ in range(settle):
                step()
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(steps):
                step()
            cpu, wall = time.process_time() - cpu_start, time.perf_counter() - start
            samples[side].append(steps / max(cpu, 1e-9))
            walls[side].append(steps / wall)
    return samples[True], samples[False], walls[True], walls[False]


def run_process(argv, env):
    """Run one process; return (wall seconds, child CPU seconds, exit status, stderr text)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    err = proc.stderr.read()
    if hasattr(os, "wait4"):
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        cpu = usage.ru_utime + usage.ru_stime
    else:  # pragma: no cover - non-POSIX
        proc.wait()
        cpu = float("nan")
    wall = time.perf_counter() - start
    proc.stderr.close()
    return wall, cpu, proc.returncode, err.decode(errors="replace")


def ab_processes(variants, reps, warmup=1):
    """Round-robin runs of several commands.

    ``variants`` maps a name to (argv, env). Returns name -> {"wall": [...],
    "cpu": [...]} in seconds. A failing run raises with its stderr.
    """
    out = {name: {"wall": [], "cpu": []} for name in variants}
    names = list(variants)
    for rep in range(warmup + reps):
        order = names if rep % 2 == 0 else names[::-1]
        for name in order:
            argv, env = variants[name]
            wall, cpu, code, err = run_process(argv, env)
            if code != 0:
                raise RuntimeError(f"{' '.join(argv)} failed ({code}): {err.strip()[-2000:]}")
            if rep >= warmup:
                out[name]["wall"].append(wall)
                out[name]["cpu"].append(cpu)
    return out


def rss_bytes():
    """Resident set size of this process now (Linux /proc), else peak RSS."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def load_average():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
