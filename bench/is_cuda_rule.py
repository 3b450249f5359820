"""Measure the alternative tensor rule of issue 19 §4 against today's (docs/device-policy.md).

Today tensors report where they really live: ``x.is_cuda`` is False and
``x.device`` is the target device. The alternative answers as a GPU would for
user code (the caller rule of ``torch.cuda.is_available``: torch's own modules
keep the truth):

* ``is_cuda``: ``x.is_cuda`` is True for a tensor on the target;
* ``device``: additionally ``x.device`` is ``torch.device("cuda", <selected index>)``
  for a tensor on the target, so ``x.device == torch.device("cuda", 0)`` and
  ``x.device.type == "cuda"`` hold.

Both are installed here as Python properties on ``torch.Tensor`` (the only way
to give the C attributes a caller rule) for the measurement only.

    python bench/is_cuda_rule.py calls      # A/B interleaved per-call costs
    python bench/is_cuda_rule.py programs   # real programs and idioms under each rule
    python bench/is_cuda_rule.py run RULE PROGRAM [ARGS...]   # one program under RULE (used by `programs`)
"""
import json
import os
import runpy
import subprocess
import tempfile
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = ROOT / "tests" / "programs"
IDIOMS = Path(__file__).resolve().parent / "is_cuda_idioms"
RULES = ("today", "is_cuda", "device")


def install(rule):
    """Put the alternative ``rule`` on torch.Tensor (torchdevice must be active); returns an undo function."""
    import torch

    from torchdevice.core import device as _device

    if rule == "today":
        return lambda: None
    target = _device.current().device
    target_type = target.type
    base = torch._C.TensorBase
    real_is_cuda = base.is_cuda.__get__
    real_device = base.device.__get__
    getframe = sys._getframe
    cuda_device = torch._C.device

    def user_caller():
        name = getframe(2).f_globals.get("__name__") or ""
        # torch's modules keep the truth, and so do torchdevice's own (a real implementation would
        # exempt them: e.g. the legacy-type isinstance check reads the real device).
        return not (name == "torch" or name.startswith(("torch.", "torchdevice.")))

    def is_cuda(self):
        if real_is_cuda(self):
            return True
        return user_caller() and real_device(self).type == target_type

    def device(self):
        real = real_device(self)
        if real.type == target_type and user_caller():
            return cuda_device("cuda", _device.get_current_index())
        return real

    saved = {name: torch.Tensor.__dict__.get(name) for name in ("is_cuda", "device")}
    torch.Tensor.is_cuda = property(is_cuda)
    if rule == "device":
        torch.Tensor.device = property(device)

    def undo():
        for name, value in saved.items():
            if value is None:
                if name in torch.Tensor.__dict__:
                    delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, value)
    return undo


# -- per-call costs ---------------------------------------------------------------------------------
def _per_call(statement, namespace, number):
    clock = time.thread_time
    code = compile(f"for _ in _range:\n    {statement}\n", "<bench>", "exec")
    empty = compile("for _ in _range:\n    pass\n", "<bench>", "exec")
    namespace = dict(namespace, _range=range(number))
    start = clock()
    exec(code, namespace)
    spent = clock() - start
    start = clock()
    exec(empty, namespace)
    return (spent - (clock() - start)) / number


def calls(rounds=15, number=20000):
    """Median per-call ns of each statement: today vs each alternative, blocks interleaved."""
    import statistics

    import torch

    import torchdevice

    torchdevice.patch(device="cpu")
    x = torch.ones(4, device="cuda")
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)).to("cuda")
    optimizer = torch.optim.Adam(model.parameters())
    batch = torch.randn(32, 64, device="cuda")

    def step():
        optimizer.zero_grad()
        model(batch).sum().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    statements = {
        "user x.is_cuda": ("x.is_cuda", number),
        "user x.device": ("x.device", number),
        "user x.device == torch.device('cuda', 0)": ("x.device == cuda0", number),
        "Tensor.to('cuda')": ("x.to('cuda')", number // 4),
        "torch.zeros(4, device='cuda')": ("torch.zeros(4, device='cuda')", number // 4),
        "training step (Linear-ReLU-Linear, clip_grad_norm_, Adam)": ("step()", 200),
    }
    namespace = {"x": x, "torch": torch, "cuda0": torch.device("cuda", 0), "step": step}
    results = {name: {rule: [] for rule in RULES} for name in statements}
    for _ in range(rounds):
        for rule in RULES:  # interleaved: every round runs each rule once, in turn
            undo = install(rule)
            try:
                for name, (statement, n) in statements.items():
                    results[name][rule].append(_per_call(statement, namespace, n) * 1e9)
            finally:
                undo()
    return {name: {rule: statistics.median(values) for rule, values in by_rule.items()}
            for name, by_rule in results.items()}


# -- programs ---------------------------------------------------------------------------------------
def _cases():
    """(label, program, args, env): the repository's single-process programs and the idiom probes."""
    cases = [
        ("tiny_train", PROGRAMS / "tiny_train.py", [tempfile.mkdtemp(prefix="is-cuda-rule-")], {}),
        ("legacy", PROGRAMS / "legacy.py", [], {}),
        ("deterministic", PROGRAMS / "deterministic.py", ["--seed", "0"], {}),
        ("capabilities", PROGRAMS / "capabilities.py", [], {}),
        ("compiled", PROGRAMS / "compiled.py", [], {}),
        ("benchmark", PROGRAMS / "benchmark.py", ["--batch", "4", "--seq", "16", "--dim", "32"], {}),
    ]
    for path in sorted(IDIOMS.glob("*.py")):
        cases.append((path.stem, path, [], {}))
        if "ngpu" in path.read_text():
            cases.append((path.stem + " (2 GPUs)", path, ["--ngpu", "2"], {"TORCHDEVICE_DEVICE_COUNT": "2"}))
    return cases


def run_one(rule, program, args):
    import torchdevice

    torchdevice.patch(device="cpu")
    install(rule)
    sys.argv = [str(program), *args]
    runpy.run_path(str(program), run_name="__main__")


def programs(timeout=300):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHDEVICE_")}
    env.update(OMP_NUM_THREADS="1", TORCHDEVICE_DISABLE="1", PYTHONPATH=str(ROOT / "src"),
               PYTHONWARNINGS="ignore")
    rows = []
    for label, program, args, extra in _cases():
        row = {"program": label}
        for rule in RULES:
            done = subprocess.run([sys.executable, __file__, "run", rule, str(program), *args],
                                  env=dict(env, **extra), capture_output=True, text=True, timeout=timeout,
                                  cwd=os.environ.get("TMPDIR", "/tmp"))
            lines = done.stdout.strip().splitlines()
            error = done.stderr.strip().splitlines()[-1:] if done.returncode else []
            row[rule] = {"rc": done.returncode, "last": (error or lines[-1:] or [""])[0][:160]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv):
    if not argv or argv[0] not in ("calls", "programs", "run"):
        print(__doc__)
        return 2
    if argv[0] == "run":
        run_one(argv[1], Path(argv[2]), argv[3:])
        return 0
    if argv[0] == "calls":
        import torch

        torch.set_num_threads(1)
        for name, by_rule in calls().items():
            print(json.dumps({"statement": name, **{rule: round(ns, 1) for rule, ns in by_rule.items()}}))
        return 0
    programs()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
