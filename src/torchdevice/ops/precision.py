"""The precision policy: which dtype a "cuda" autocast region really runs in on the target.

``TORCHDEVICE_PRECISION`` (core/config.py) chooses:

* ``auto`` (default): the requested half dtype where the target computes it
  fast, float32 otherwise. "Fast" is decided from the hardware at run time,
  never from a version number or a list of CPU names:
  - MPS: float16 is native; bfloat16 where torch's MPS autocast accepts it.
  - CPU: bfloat16 needs bf16 units (AMX-BF16, AVX512-BF16), float16 needs fp16
    units (AMX-FP16, AVX512-FP16; on ARM the FP16/BF16 features). torch is asked
    first (a ``torch._C._cpu._is_*_supported`` query where the release has one;
    oneDNN's ``_is_mkldnn_bf16/fp16_supported``: False means no such units),
    then the OS (``/proc/cpuinfo`` flags, ``sysctl`` on macOS). Where the answer
    stays uncertain (x86 with AVX512 but no flags to read; ARM, where the
    feature exists but torch's CPU kernels may not use it), a one-off
    micro-measurement decides: a half matmul no more than 10% slower than the
    float32 one counts as fast. The measurement is cached with the device facts
    (core/cache.py, keyed by the torch build and this CPU's identity).
* ``keep``: the requested dtype (the faithful behaviour).
* ``float32``: every region runs in float32.
* ``bfloat16`` / ``float16``: every region runs in that dtype.

Whatever runs, the program observes what a GPU answers (ops/amp.py): torch's
CUDA autocast state holds the requested dtype, GradScaler scales as asked.
"""
import hashlib
import platform
import subprocess
import sys
import threading
import time

import torch

from ..core import cache as _cache
from ..core import logger as _logger
from ..core.logger import get_logger, warn_once

log = get_logger("amp")

SETTING = "TORCHDEVICE_PRECISION"
MODES = ("auto", "keep", "float32", "bfloat16", "float16")
_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16"}
_SHORT = {torch.float16: "fp16", torch.bfloat16: "bf16"}
# /proc/cpuinfo (x86 "flags", ARM "Features") and macOS sysctl names that mean half-precision units.
X86_FLAGS = {torch.bfloat16: ("avx512_bf16", "amx_bf16"), torch.float16: ("avx512_fp16", "amx_fp16")}
ARM_FLAGS = {torch.bfloat16: ("bf16",), torch.float16: ("asimdhp", "fphp")}
SYSCTL = {torch.bfloat16: "hw.optional.arm.FEAT_BF16", torch.float16: "hw.optional.arm.FEAT_FP16"}
# torch._C._cpu queries some releases have (asked when present).
TORCH_QUERIES = {torch.bfloat16: ("_is_avx512_bf16_supported", "_is_amx_tile_supported"),
                 torch.float16: ("_is_avx512_fp16_supported", "_is_amx_fp16_supported")}
FAST_RATIO = 1.1


# -- the hardware, as torch and the OS describe it ----------------------------------------------------
def torch_answer(dtype):
    """(True/False/None, evidence): what this torch says about half units for ``dtype`` on the CPU."""
    cpu = getattr(torch._C, "_cpu", None)
    for name in TORCH_QUERIES[dtype]:
        query = getattr(cpu, name, None)
        if query is not None:
            try:
                answer = bool(query())
            except Exception:
                continue
            return answer, f"torch._C._cpu.{name}() is {answer}"
    onednn = getattr(torch.ops.mkldnn, f"_is_mkldnn_{_SHORT[dtype]}_supported", None)
    if onednn is not None:
        try:
            if not onednn():
                return False, f"no {_SHORT[dtype]} units (oneDNN finds none; {cpu_capability()})"
        except Exception:
            pass
    return None, f"torch cannot tell ({cpu_capability()})"


def cpu_capability():
    try:
        return f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}"
    except Exception:
        return "torch CPU capability unknown"


def cpuinfo_flags(path="/proc/cpuinfo"):
    """The CPU feature flags the OS lists (empty set when it lists none here)."""
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def sysctl_flag(name):
    """A macOS ``sysctl`` 0/1 answer (None where there is no such key or no sysctl)."""
    if sys.platform != "darwin":
        return None
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() == "1" if out.returncode == 0 and out.stdout.strip() else None


def os_answer(dtype, machine=None, flags=None, sysctl=sysctl_flag):
    """(True/False/None, evidence) from the OS: True/False where its flags settle it, None where they cannot."""
    machine = (machine or platform.machine()).lower()
    flags = cpuinfo_flags() if flags is None else flags
    if machine in ("x86_64", "amd64", "i686", "x86"):
        if not flags:
            return None, "the OS lists no CPU flags"
        have = [flag for flag in X86_FLAGS[dtype] if flag in flags]
        if have:
            return True, f"CPU flags {', '.join(have)}"
        return False, f"no {' / '.join(X86_FLAGS[dtype])} in the CPU flags"
    answer = sysctl(SYSCTL[dtype])
    if answer is not None:
        return (None if answer else False), f"sysctl {SYSCTL[dtype]}={int(answer)}"
    if flags:
        have = [flag for flag in ARM_FLAGS[dtype] if flag in flags]
        if not have:
            return False, f"no {' / '.join(ARM_FLAGS[dtype])} in the CPU features"
        return None, f"CPU features {', '.join(have)}"
    return None, "the OS does not tell"


def measure(dtype, size=128, reps=3):
    """float32 matmul time / ``dtype`` matmul time on the CPU (> 1: the half dtype is faster)."""
    def best(dt):
        a = torch.randn(size, size).to(dt)
        torch.mm(a, a)
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            torch.mm(a, a)
            times.append(time.perf_counter() - start)
        return min(times)
    with torch.no_grad():
        return best(torch.float32) / best(dtype)


def _machine_key():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line for line in f if line.startswith(("model name", "Hardware", "CPU part"))), "")
    except OSError:
        pass
    identity = [platform.machine(), platform.processor(), model, sorted(cpuinfo_flags())]
    return hashlib.sha256(repr(identity).encode()).hexdigest()[:12]


def measured(dtype):
    """``measure(dtype)``, cached with the device facts (this torch build and this CPU)."""
    name = f"precision-{_SHORT[dtype]}-{_machine_key()}"
    value = _cache.cached(name, lambda: measure(dtype))
    return value if isinstance(value, (int, float)) else measure(dtype)


def cpu_fast(dtype, torch_says=torch_answer, os_says=os_answer, measure_ratio=measured):
    """(fast?, why) for ``dtype`` on this CPU: torch first, then the OS, then a measurement."""
    answer, why_torch = torch_says(dtype)
    if answer is not None:
        return answer, why_torch
    answer, why_os = os_says(dtype)
    if answer is not None:
        return answer, why_os
    ratio = measure_ratio(dtype)
    fast = ratio * FAST_RATIO >= 1.0
    return fast, (f"{why_torch}; {why_os}; measured {_NAMES[dtype]} matmul at {1 / ratio:.2f}x the float32 "
                  f"time ({'fast' if fast else 'slow'})")


def mps_fast(dtype, supported):
    if dtype is torch.float16:
        return True, "float16 is native on MPS"
    if dtype in supported:
        return True, "this torch's MPS autocast runs bfloat16"
    return False, "this torch's MPS has no bfloat16 autocast"


# -- the policy --------------------------------------------------------------------------------------
class Policy:
    """Decides, once per requested dtype, what a "cuda" autocast region runs in on the target.

    ``run(requested)`` returns the dtype the target's autocast should use, or
    None for float32 (target autocast off). Decisions are logged once at INFO.
    """

    def __init__(self, mode, target_type, supported, fast=None):
        self.mode = mode
        self.target_type = target_type
        self.supported = tuple(supported)
        self._fast = fast or self._hardware_fast
        self._decided = {}
        self._lock = threading.Lock()

    def _hardware_fast(self, dtype):
        if self.target_type == "mps":
            return mps_fast(dtype, self.supported)
        if self.target_type == "cpu":
            return cpu_fast(dtype)
        return False, f"{self.target_type} is not a target torchdevice knows half units for"

    def decide(self, requested):
        """(dtype to run or None for float32, reason) for a region that asked for ``requested``."""
        decided = self._decided.get(requested)
        if decided is not None:
            return decided
        with self._lock:
            decided = self._decided.get(requested)
            if decided is None:
                decided = self._decide(requested)
                self._decided[requested] = decided
                self._announce(requested, decided)
        return decided

    def _decide(self, requested):
        mode = self.mode
        if requested not in _NAMES:
            return None, f"autocast dtype {requested} is not a half dtype"
        if mode == "keep":
            return requested, f"{SETTING}=keep"
        if mode == "float32":
            return None, f"{SETTING}=float32"
        if mode in ("bfloat16", "float16"):
            return getattr(torch, mode), f"{SETTING}={mode}"
        fast, why = self._fast(requested)
        if fast:
            return requested, why
        return None, why

    def _announce(self, requested, decided):
        run, why = decided
        name = _NAMES.get(requested, str(requested))
        where = "this CPU" if self.target_type == "cpu" else self.target_type
        if run is None:
            log.info("autocast %s -> float32 on %s: %s; %s=keep to run %s", name, where, why, SETTING, name)
        elif run is not requested:
            log.info("autocast %s -> %s on %s: %s", name, _NAMES[run], where, why)
        else:
            log.info("autocast %s runs as %s on %s: %s", name, name, where, why)

    def describe(self):
        """What was decided so far, for ``torchdevice info`` and the report."""
        out = {"mode": self.mode, "target": self.target_type, "decisions": {}}
        for requested, (run, why) in self._decided.items():
            out["decisions"][_NAMES.get(requested, str(requested))] = {
                "runs": _NAMES.get(run, "float32") if run is not None else "float32", "why": why}
        return out


_current = None


def current():
    """The policy of the active amp area (None when the area is not applied)."""
    return _current


def install(policy):
    global _current
    _current = policy
    return policy


# -- half weights -----------------------------------------------------------------------------------------
def _half_weights_key(dtype):
    return ("half-weights", dtype)


def warned_half_weights(dtype):
    """Whether the half-weights warning for ``dtype`` was given in this program."""
    return _half_weights_key(dtype) in _logger._warned


def warn_half_weights(dtype, target_type, fast=None, ratio=None):
    """One TorchDeviceWarning per program when the program makes weights ``dtype`` on a CPU that computes it slowly.

    The factor is measured (a half vs float32 matmul, cached with the device facts).
    """
    if target_type != "cpu" or dtype not in _NAMES or warned_half_weights(dtype):
        return
    fast, why = fast if fast is not None else cpu_fast(dtype)
    if fast:
        return
    ratio = ratio if ratio is not None else measured(dtype)
    name = _NAMES[dtype]
    warn_once(_half_weights_key(dtype),
              f"torchdevice: this CPU computes {name} slowly ({why}): a {name} matmul takes {1 / ratio:.1f}x the "
              f"float32 time here. The weights stay {name} as the program asked (memory); for speed keep the "
              f"model in float32 (drop .half()/.to({name}), or load with torch_dtype=torch.float32). Autocast "
              f"regions already run in float32 ({SETTING}=auto); {SETTING}=keep silences this warning.",
              stacklevel=4)


__all__ = ["MODES", "Policy", "SETTING", "cpu_fast", "current", "install", "measure", "os_answer", "torch_answer",
           "warn_half_weights"]
