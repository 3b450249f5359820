"""Per-call cost of the migration report (TORCHDEVICE_REPORT) on patched calls.

With the report on, each patched callable is a recorder (or the area's own
recording variant) whose ``__wrapped__`` is exactly the object installed when
the report is off. This benchmark
activates torchdevice with the report on (target CPU) and times both, side by
side in the same process, in many short alternating rounds (best round wins),
so that load from other processes on a shared machine hits both alike. The
calls are made from a loop compiled as the program's own file, so call sites
resolve as in a real program. Usage::

    python bench/report_overhead.py [--number 20000] [--rounds 30]

Budget (docs/report.md): at most 1.5x the redirected call's own cost for calls
that do work (factories, Tensor.to). For calls that do next to nothing (a no-op
such as torch.cuda.synchronize on the CPU) the added nanoseconds are what
matters: any Python-level recorder costs more than such a call.
"""
import argparse
import os
import tempfile
import time

CASES = [
    # (label, what, call expression using f and x)
    ("torch.zeros(3, device='cuda')", "factory, redirected", "f(3, device='cuda')"),
    ("x.to('cuda')", "Tensor.to, redirected", "f(x, 'cuda')"),
    ("x.cuda()", "Tensor.cuda, redirected", "f(x)"),
    ("torch.device('cuda')", "torch.device, redirected", "f('cuda')"),
    ("torch.cuda.synchronize()", "no-op", "f()"),
    ("torch.zeros(3)", "factory, nothing to redirect", "f(3)"),
    ("x.to(torch.float64)", "Tensor.to(dtype), nothing to redirect", "f(x, dtype)"),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=20000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=30, help="alternating rounds; the best of each side wins")
    args = parser.parse_args()
    import torch

    import torchdevice
    from torchdevice.core import report

    with tempfile.TemporaryDirectory() as tmp:
        torchdevice.unpatch()  # autoload may have activated it without the report
        torchdevice.patch(strict=True, device="cpu", report=os.path.join(tmp, "report.json"))
        report.discard()
        x = torch.zeros(3)
        on = {"torch.zeros(3, device='cuda')": torch.zeros, "x.to('cuda')": torch.Tensor.to,
              "x.cuda()": torch.Tensor.cuda, "torch.device('cuda')": torch.device,
              "torch.cuda.synchronize()": torch.cuda.synchronize, "torch.zeros(3)": torch.zeros,
              "x.to(torch.float64)": torch.Tensor.to}
        print(f"{'call':32} {'what':38} {'off ns':>7} {'on ns':>7} {'ratio':>6} {'added':>6}", flush=True)
        for label, what, expr in CASES:
            recorder = on[label]
            # A recording subclass wraps the area's class; everything else (recorders and the
            # areas' own recording variants) keeps the object installed with the report off in __wrapped__.
            stacked_class = isinstance(recorder, type) and recorder.__bases__[0] is not object
            off = recorder.__bases__[0] if stacked_class else recorder.__wrapped__
            assert getattr(recorder, "_torchdevice_recorder", None) is not None, label
            env = {"x": x, "dtype": torch.float64}
            src = f"def loop(n, f):\n    for _ in range(n):\n        {expr}\n\ndef empty(n, f):\n    for _ in range(n):\n        pass\n"
            exec(compile(src, "/bench/user_program.py", "exec"), env)
            loop, empty = env["loop"], env["empty"]
            loop(1000, off)
            loop(1000, recorder)
            best = {"off": float("inf"), "on": float("inf"), "empty": float("inf")}
            for _ in range(args.rounds):
                for name, fn, body in (("off", off, loop), ("on", recorder, loop), ("empty", None, empty)):
                    start = time.perf_counter()
                    body(args.number, fn)
                    best[name] = min(best[name], time.perf_counter() - start)
            a = (best["off"] - best["empty"]) / args.number * 1e9
            b = (best["on"] - best["empty"]) / args.number * 1e9
            print(f"{label:32} {what:38} {a:7.0f} {b:7.0f} {b / a:6.2f} {b - a:6.0f}")
        torchdevice.unpatch()


if __name__ == "__main__":
    main()
