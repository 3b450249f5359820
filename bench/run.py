"""torchdevice benchmark: torchdevice against native torch, side by side, in one run.

Usage::

    python bench/run.py                 # full run (several minutes)
    python bench/run.py --quick         # fewer repetitions (about a minute)
    python bench/run.py --smoke         # seconds: checks that every row runs (used by the tests)
    python bench/run.py --groups calls,training --json out.json
    python bench/run.py --render bench/results/latest.json   # Markdown table of a run

Prints a table (medians, ratios, targets) and writes JSON (default
bench/results/latest.json). The method and the latest figures are in
docs/performance.md. The process re-executes itself with
TORCHDEVICE_DISABLE=1 so that torch loads unpatched; the rows then switch
torchdevice on and off with ``torchdevice.patch()``/``unpatch()``.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))  # benchmark this checkout
sys.path.insert(0, str(HERE))

# Repetitions per mode. Blocks are seconds of wall time per timed block.
MODES = {
    "full": {"startup_reps": 300, "pth_reps": 60, "import_reps": 40, "activation_reps": 15, "call_reps": 31,
             "block": 0.02, "loop_reps": 41, "loop_steps": 30, "tiny_steps": 200, "memory_steps": 10_000,
             "memory_warmup": 2_000, "cli_reps": 5},
    "quick": {"startup_reps": 40, "pth_reps": 10, "import_reps": 4, "activation_reps": 3, "call_reps": 7,
              "block": 0.01, "loop_reps": 5, "loop_steps": 20, "tiny_steps": 100, "memory_steps": 10_000,
              "memory_warmup": 1_000, "cli_reps": 1},
    "smoke": {"startup_reps": 1, "pth_reps": 1, "import_reps": 1, "activation_reps": 1, "call_reps": 1,
              "block": 0.0005, "loop_reps": 1, "loop_steps": 2, "tiny_steps": 5, "memory_steps": 50,
              "memory_warmup": 10, "cli_reps": 1},
}
SMOKE_SKIPS = {"import", "cli", "report"}  # whole `import torch` processes: seconds each


class Context:
    """What the groups share: mode parameters, the on/off switch, the target device."""

    def __init__(self, mode, venv_dir):
        import _measure

        self.mode = mode
        self.p = MODES[mode]
        self.venv_dir = venv_dir
        self._envs = None
        self.switch = _measure.Switch()
        self.switch.set(True)
        import torchdevice

        status = torchdevice.status()
        if not status["redirect"]:
            raise SystemExit(f"torchdevice does not redirect on this machine ({status['reason']}); "
                             "the benchmark compares redirected calls with native ones, so it needs a machine "
                             "without CUDA or TORCHDEVICE_DEVICE=cpu")
        self.target = str(status["target"]).split(":")[0]
        self.switch.set(False)

    def environments(self):
        if self._envs is None:
            import _envs

            self._envs = _envs.environments(self.venv_dir)
        return self._envs


def _git_commit():
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except OSError:
        return None


def _cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _meta(ctx, args):
    import torch

    import torchdevice
    import _measure

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": ctx.mode, "groups": args.groups, "commit": _git_commit(),
        "python": platform.python_version(), "torch": torch.__version__, "torchdevice": torchdevice.__version__,
        "platform": platform.platform(), "cpu": _cpu_name(), "cpus": os.cpu_count(),
        "target": ctx.target, "load_average_start": _measure.load_average(),
    }


def _fmt(value, unit):
    if value is None:
        return "-"
    if unit in ("ns/call",):
        return f"{value:,.0f}"
    if unit in ("steps/s",):
        return f"{value:,.1f}"
    if abs(value) >= 100:
        return f"{value:,.1f}"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"


def print_table(rows, out=sys.stdout):
    header = ("row", "unit", "torchdevice", "native", "ratio", "added", "target", "status")
    table = [header]
    for r in rows:
        table.append((r["id"], r["unit"], _fmt(r["torchdevice"], r["unit"]), _fmt(r["native"], r["unit"]),
                      "-" if r["ratio"] is None else f"{r['ratio']:.3f}",
                      "-" if r["added"] is None else _fmt(r["added"], r["unit"]), r["target"] or "-", r["status"]))
    widths = [max(len(str(line[i])) for line in table) for i in range(len(header))]
    for n, line in enumerate(table):
        print("  ".join(str(cell).ljust(w) if i in (0, 1, 6, 7) else str(cell).rjust(w)
                        for i, (cell, w) in enumerate(zip(line, widths))), file=out)
        if n == 0:
            print("  ".join("-" * w for w in widths), file=out)
    notes = [(r["id"], r["note"]) for r in rows if r.get("note") and r["status"] in ("skip", "error", "miss")]
    for rid, note in notes:
        print(f"  {rid}: {note}", file=out)


def markdown_table(data):
    """The figures of a JSON result as a Markdown table (for docs/performance.md)."""
    meta, rows = data["meta"], data["rows"]
    lines = [f"Run {meta['date']}, commit {meta['commit']}, mode {meta['mode']}: Python {meta['python']}, "
             f"torch {meta['torch']}, {meta['cpu']} ({meta['cpus']} cores), target {meta['target']}, "
             f"torch threads {meta.get('torch_threads')}, load average {meta['load_average_start']} -> "
             f"{meta['load_average_end']}.", "",
             "| row | unit | torchdevice | native | ratio | added | target | status |",
             "|---|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
        added = "-" if r["added"] is None else _fmt(r["added"], r["unit"])
        lines.append(f"| `{r['id']}` | {r['unit']} | {_fmt(r['torchdevice'], r['unit'])} | "
                     f"{_fmt(r['native'], r['unit'])} | {ratio} | {added} | {r['target'] or '-'} | {r['status']} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="fewer repetitions (about a minute)")
    speed.add_argument("--smoke", action="store_true", help="one repetition of everything fast (seconds)")
    parser.add_argument("--json", default=str(HERE / "results" / "latest.json"), help="where to write the JSON")
    parser.add_argument("--groups", default=None, help="comma list of groups (default: all): " + ", ".join(
        ["startup", "import", "calls", "events", "training", "memory", "report", "cli", "floor", "speedups"]))
    parser.add_argument("--venv-dir", default=str(HERE / "results" / "venvs"),
                        help="cache for the start-up environments")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads in this process (default 1: on a shared machine, "
                             "multi-threaded steps are dominated by scheduling noise)")
    parser.add_argument("--render", metavar="JSON", help="print the Markdown table of an earlier run and exit")
    args = parser.parse_args(argv)
    if args.render:
        print(markdown_table(json.loads(Path(args.render).read_text())))
        return 0

    import _cases

    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    names = list(_cases.GROUPS) if not args.groups else [g.strip() for g in args.groups.split(",") if g.strip()]
    unknown = [g for g in names if g not in _cases.GROUPS]
    if unknown:
        parser.error(f"unknown group(s) {', '.join(unknown)}; known: {', '.join(_cases.GROUPS)}")
    args.groups = names
    import warnings

    warnings.simplefilter("ignore")  # one-time notices of the areas would only clutter the table
    import torch

    torch.set_num_threads(args.threads)
    ctx = Context(mode, args.venv_dir)
    meta = _meta(ctx, args)
    meta["torch_threads"] = torch.get_num_threads()
    rows = []
    started = time.perf_counter()
    for name in names:
        if mode == "smoke" and name in SMOKE_SKIPS and not os.environ.get("TORCHDEVICE_BENCH_SMOKE_ALL"):
            rows.append(_cases.skip_row(name, name, f"group {name}", "-", "", "skipped in smoke mode"))
            continue
        t0 = time.perf_counter()
        try:
            group_rows = _cases.GROUPS[name](ctx)
        except Exception as exc:
            traceback.print_exc()
            group_rows = [_cases.make_row(name, name, f"group {name}", "-", status="error",
                                          note=f"{type(exc).__name__}: {exc}")]
        finally:
            ctx.switch.set(False)
        for row in group_rows:
            row["group_seconds"] = round(time.perf_counter() - t0, 2)
        rows.extend(group_rows)
        print(f"[{name}: {time.perf_counter() - t0:.1f} s]", file=sys.stderr)
    import _measure

    meta["load_average_end"] = _measure.load_average()
    meta["seconds"] = round(time.perf_counter() - started, 1)
    print(f"torchdevice {meta['torchdevice']}  torch {meta['torch']}  python {meta['python']}  target {ctx.target}  "
          f"mode {mode}  load {meta['load_average_start']} -> {meta['load_average_end']}  {meta['seconds']} s")
    print_table(rows)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(f"JSON: {path}")
    return 1 if any(r["status"] == "error" for r in rows) else 0


def _reexec_unpatched():
    """Run the benchmark in a process whose `import torch` patches nothing by itself."""
    if os.environ.get("TORCHDEVICE_DISABLE", "").strip().lower() in ("1", "true", "yes", "on"):
        return
    env = dict(os.environ, TORCHDEVICE_DISABLE="1")
    os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]], env)


if __name__ == "__main__":
    _reexec_unpatched()
    sys.exit(main())
