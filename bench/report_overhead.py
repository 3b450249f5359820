"""Per-call cost of the migration report (TORCHDEVICE_REPORT) on redirected calls.

Runs each statement in a fresh interpreter twice, with the report off and on
(torchdevice activated explicitly, target CPU), and prints the best-of-N
per-call time and the ratio. Usage::

    python bench/report_overhead.py [--number 200000] [--repeat 5]

The report's budget (docs/report.md) is at most 1.5x the redirected call's own
cost for calls that do work (factories, Tensor.to); for calls that do next to
nothing (a no-op such as torch.cuda.synchronize on the CPU) the added cost is
reported in nanoseconds instead, since any Python-level recorder costs more
than the call itself.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

STATEMENTS = [
    ("torch.zeros(3, device='cuda')", "factory, redirected"),
    ("x.to('cuda')", "Tensor.to, redirected"),
    ("x.cuda()", "Tensor.cuda, redirected"),
    ("torch.device('cuda')", "torch.device, redirected"),
    ("torch.cuda.synchronize()", "no-op"),
    ("torch.zeros(3)", "factory, nothing to redirect"),
    ("x.to(torch.float64)", "Tensor.to(dtype), nothing to redirect"),
]

_CHILD = r"""
import json, sys, time
import torch, torchdevice
from torchdevice.core import report
report_path = sys.argv[1]
torchdevice.patch(strict=True, device="cpu", **({"report": report_path} if report_path != "off" else {}))
if report_path != "off":
    report.discard()
x = torch.zeros(3)
number, repeat = int(sys.argv[3]), int(sys.argv[4])
out = {}
for stmt in json.loads(sys.argv[2]):
    # The loop is compiled as if it were the user's own file, so that call
    # sites resolve as they do in a program (timeit's frames count as stdlib).
    src = f"def loop(n):\n    for _ in range(n):\n        {stmt}\n"
    env = {"torch": torch, "x": x}
    exec(compile(src, "/bench/user_program.py", "exec"), env)
    loop = env["loop"]
    loop(1000)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        loop(number)
        best = min(best, time.perf_counter() - start)
    empty = {}
    exec(compile("def loop(n):\n    for _ in range(n):\n        pass\n", "/bench/user_program.py", "exec"), empty)
    start = time.perf_counter()
    empty["loop"](number)
    out[stmt] = (best - (time.perf_counter() - start)) / number
print(json.dumps(out))
"""


def measure(report, number, repeat):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHDEVICE_")}
    env["TORCHDEVICE_DISABLE"] = "1"
    stmts = json.dumps([s for s, _ in STATEMENTS])
    done = subprocess.run([sys.executable, "-c", _CHILD, report, stmts, str(number), str(repeat)],
                          env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=200000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternate off/on interpreters this many times; keep the best of each")
    args = parser.parse_args()
    off, on = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):  # alternating, so that machine load hits both alike
            for result, mode in ((off, "off"), (on, os.path.join(tmp, "report.json"))):
                for stmt, value in measure(mode, args.number, args.repeat).items():
                    result[stmt] = min(value, result.get(stmt, value))
    print(f"{'statement':34} {'what':38} {'off ns':>8} {'on ns':>8} {'ratio':>6} {'added ns':>8}")
    for stmt, what in STATEMENTS:
        a, b = off[stmt] * 1e9, on[stmt] * 1e9
        print(f"{stmt:34} {what:38} {a:8.0f} {b:8.0f} {b / a:6.2f} {b - a:8.0f}")


if __name__ == "__main__":
    main()
