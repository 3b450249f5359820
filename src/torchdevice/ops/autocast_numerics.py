"""CUDA's autocast numerics on the target: each op gets the dtype CUDA's autocast gives it.

A ``torch.autocast("cuda")`` region runs on the target by switching on the
target's own autocast (``ops/amp.py``). Its op lists differ from CUDA's: CPU
autocast leaves ``exp``, ``softmax``, ``sum``, ``layer_norm``, ``cumsum``...
alone (float16 in, float16 out) where CUDA computes them in float32, and casts
FFT and linear-algebra ops to float32 where CUDA does not. Both lists live in
torch as dispatcher kernels, one per autocast key, and both are present in
every build (CPU-only builds register the CUDA autocast kernels too). So the
table is derived from torch, never written by hand:

* The ops are the ones with a kernel for ``AutocastCUDA`` or for the target's
  autocast key (``_dispatch_get_registrations_for_dispatch_key``).
* Each kernel's policy is read by calling the op under that autocast with probe
  tensors: ``__torch_dispatch__`` wrapper tensors that claim the device ("cuda"
  or the target) and own no storage, so nothing is computed and CUDA is never
  initialised. The probe records the casts the kernel makes and the dtypes the
  inner op receives, then stops it. Three probes per op and dtype (every
  floating tensor float32; every one the half dtype; the first half, the rest
  float32) tell the policy apart: ``lower`` (cast to the half dtype), ``fp32``
  (cast to float32), ``fp32_opt_dtype`` (run with ``dtype=float32`` when none is
  given), ``promote`` (cast to the widest floating input), ``banned`` (CUDA
  refuses the op, e.g. ``binary_cross_entropy``; the message is torch's) or
  ``none``.
* The result is cached per torch build (core/cache.py), so probing runs once.

Where CUDA's policy and the target's differ, the target's autocast key gets a
kernel (``torch.library``, kept in a ``Patch`` record so ``unpatch()`` removes
it) that applies CUDA's policy inside a "cuda" region (torch's CUDA autocast
state is on, which ``ops/amp.py`` sets) and the target's own policy otherwise
(an explicit ``torch.autocast("cpu")`` keeps its numerics). Ops whose policies
agree keep torch's C++ kernels: the hot path (``linear``, ``mm``, ``conv``,
``mse_loss`` ...) is untouched. Kernels are registered on the first "cuda"
region, not at import.
"""
import contextlib
import json
import os
import subprocess
import sys
import threading
import warnings

import torch

from ..core import cache as _cache
from ..core import compat
from ..core.logger import get_logger

log = get_logger("amp")

TABLE_FORMAT = 1  # bump when the derivation changes meaning
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
POLICIES = ("lower", "fp32", "fp32_opt_dtype", "promote", "banned", "none", "unknown")
_CUDA = "cuda"


def autocast_key(device_type):
    """The dispatch key name of ``device_type``'s autocast (None where this torch has none)."""
    name = {"cpu": "AutocastCPU", "cuda": "AutocastCUDA", "mps": "AutocastMPS"}.get(device_type)
    return name if name is not None and hasattr(torch._C.DispatchKey, name) else None


def registered_ops(device_type):
    """Operator names (``aten::op.overload``) with a kernel for ``device_type``'s autocast."""
    key = autocast_key(device_type)
    if key is None:
        return []
    return sorted(torch._C._dispatch_get_registrations_for_dispatch_key(key))


def overload(name):
    """The ``OpOverload`` for ``aten::op.overload`` (None if this torch has no Python handle for it)."""
    namespace, _, rest = name.partition("::")
    base, _, variant = rest.partition(".")
    try:
        return getattr(getattr(getattr(torch.ops, namespace), base), variant or "default")
    except (AttributeError, RuntimeError):
        return None


# -- probing ----------------------------------------------------------------------------------------
class _Stop(Exception):
    """Raised by a probe tensor when the kernel reaches the op itself."""


class _Probe(torch.Tensor):
    """A storage-less tensor on any device that records what the dispatcher does with it."""

    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, dtype, device, trace):
        tensor = torch.Tensor._make_wrapper_subclass(cls, (2, 2), dtype=dtype, device=device)
        tensor.trace = trace
        return tensor

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat = _tensors(list(args) + list(kwargs.values()))
        trace = flat[0].trace
        if func is torch.ops.aten._to_copy.default:
            dtype = kwargs.get("dtype", args[0].dtype)
            trace.append(("cast", args[0].dtype, dtype))
            return _Probe(dtype, args[0].device, trace)
        names = [a.name for a in func._schema.arguments]
        bound = dict(zip(names, args))
        bound.update(kwargs)
        dtype = bound.get("dtype")
        if bound.get("half_to_float") is True:
            dtype = torch.float32
        trace.append(("call", [t.dtype for t in flat if t.is_floating_point()],
                      dtype if isinstance(dtype, torch.dtype) else None))
        raise _Stop


def _tensors(values):
    out = []
    for value in values:
        if isinstance(value, torch.Tensor):
            out.append(value)
        elif isinstance(value, (list, tuple)):
            out.extend(_tensors(value))
    return out


def _dummy(argument):
    """A value of the argument's type the dispatcher accepts (shapes are never checked: nothing runs)."""
    kind = str(argument.type)
    has_default = getattr(argument, "has_default_value", None)
    if (has_default() if has_default is not None else argument.default_value is not None):
        return argument.default_value
    if kind.startswith("Optional["):
        return None
    return {"int": 0, "SymInt": 0, "float": 1.0, "number": 1.0, "bool": False, "str": "ij",
            "List[int]": [2], "List[SymInt]": [2], "List[str]": ["a"]}.get(kind, None)


def _build(op, make):
    """Arguments for ``op``: ``make(position)`` gives the n-th floating tensor; index lists get a long tensor."""
    args, kwargs, count = [], {}, [0]

    def tensor():
        count[0] += 1
        return make(count[0] - 1)

    for argument in op._schema.arguments:
        kind = str(argument.type)
        if kind in ("Tensor", "Optional[Tensor]"):
            value = tensor()
        elif kind == "List[Tensor]":
            value = [tensor(), tensor()]
        elif kind == "List[Optional[Tensor]]":
            value = [make(None)]
        else:
            value = _dummy(argument)
        if argument.kwarg_only:
            kwargs[argument.name] = value
        else:
            args.append(value)
    return args, kwargs, count[0]


@contextlib.contextmanager
def _autocast_on(device_type, dtype):
    was, previous = compat.is_autocast_enabled(device_type), compat.get_autocast_dtype(device_type)
    compat.set_autocast_enabled(device_type, True)
    compat.set_autocast_dtype(device_type, dtype)
    try:
        yield
    finally:
        compat.set_autocast_enabled(device_type, was)
        compat.set_autocast_dtype(device_type, previous)


def _run_probe(op, device, dtypes):
    """(trace, error message or None, floating tensor count); ``dtypes(i)`` is the i-th floating tensor's dtype."""
    trace = []

    def make(position):
        if position is None:
            return _Probe(torch.int64, device, trace)
        return _Probe(dtypes(position), device, trace)

    args, kwargs, floats = _build(op, make)
    try:
        op(*args, **kwargs)
    except _Stop:
        pass
    except Exception as exc:  # the op refused the dummy values: the casts before that still count
        return trace, str(exc), floats
    return trace, None, floats


def _computed(trace):
    """The dtype the op computed in: what its inner call received, else what the casts produced (None: unseen)."""
    for entry in trace:
        if entry[0] == "call":
            if entry[2] is not None:
                return entry[2]
            received = entry[1]
            return torch.float32 if torch.float32 in received else (received[0] if received else None)
    casts = [entry[2] for entry in trace if entry[0] == "cast"]
    return casts[-1] if casts else None


def classify(op, device_type, half):
    """The autocast policy of ``op``'s kernel for ``device_type`` with autocast dtype ``half``: (policy, message).

    Probes: A, every floating tensor float32 (a cast to ``half`` means ``lower``);
    B, every one ``half`` (float32 computation means ``fp32``, or ``fp32_opt_dtype``
    when it came from a ``dtype`` argument, not a cast); C, the first ``half`` and the
    rest float32 (float32 means ``promote``). A probe the op refuses before any cast
    tells nothing; an op no probe tells anything about is ``unknown``.
    """
    device = torch.device(device_type, 0) if device_type != "cpu" else torch.device("cpu")
    seen = False
    with _autocast_on(device_type, half):
        trace, error, floats = _run_probe(op, device, lambda i: torch.float32)
        if error is not None and not trace and "autocast" in error:
            return "banned", error
        if floats == 0:
            return "none", None
        seen = seen or bool(trace) or error is None
        if _computed(trace) == half:
            return "lower", None
        trace, error, _ = _run_probe(op, device, lambda i: half)
        seen = seen or bool(trace) or error is None
        if _computed(trace) == torch.float32:
            return ("fp32" if any(entry[0] == "cast" for entry in trace) else "fp32_opt_dtype"), None
        if floats > 1:
            trace, error, _ = _run_probe(op, device, lambda i: half if i == 0 else torch.float32)
            seen = seen or bool(trace) or error is None
            if _computed(trace) == torch.float32 and any(entry[0] == "cast" for entry in trace):
                return "promote", None
    return ("none", None) if seen else ("unknown", error)


def derive(target_type):
    """The table: {op name: {dtype name: [CUDA policy, target policy]}}, messages of banned ops."""
    cuda_ops = set(registered_ops(_CUDA))
    target_ops = set(registered_ops(target_type))
    table, messages = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in sorted(cuda_ops | target_ops):
            op = overload(name)
            if op is None:
                continue
            entry = {}
            for dtype_name, half in DTYPES.items():
                pair = []
                for device_type, ops in ((_CUDA, cuda_ops), (target_type, target_ops)):
                    if name not in ops:
                        pair.append("none")
                        continue
                    policy, message = classify(op, device_type, half)
                    if policy == "banned":
                        messages[name] = message
                    pair.append(policy)
                entry[dtype_name] = pair
            table[name] = entry
    return {"ops": table, "banned": messages}


_CHILD = """
import json, sys
from torchdevice.ops import autocast_numerics
sys.stdout.write(json.dumps(autocast_numerics.derive(sys.argv[1])))
"""


def derive_in_child(target_type):
    """``derive()`` in a fresh interpreter with torchdevice off (in-process if that fails).

    Probing calls every autocast op once, and some print torch's one-time
    deprecation notes from C++: a child keeps them out of the program's output
    and leaves them for the program's own first call.
    """
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, TORCHDEVICE_DISABLE="1")
    env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD, target_type], env=env, capture_output=True, text=True,
                              timeout=300)
        if done.returncode == 0:
            return json.loads(done.stdout)
        log.debug("autocast table child failed (%s): %s", done.returncode, done.stderr[-500:])
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        log.debug("autocast table child failed: %s", exc)
    return derive(target_type)


def _valid(value):
    return (isinstance(value, dict) and isinstance(value.get("ops"), dict) and isinstance(value.get("banned"), dict)
            and all(isinstance(entry, dict) and all(isinstance(pair, list) and len(pair) == 2
                                                    and set(pair) <= set(POLICIES) for pair in entry.values())
                    for entry in value["ops"].values()))


def table(target_type):
    """The derived table for ``target_type``, read from the cache when this torch build derived it before."""
    value = _cache.cached(f"autocast-numerics-{TABLE_FORMAT}-{target_type}", lambda: derive_in_child(target_type))
    if not _valid(value):
        value = derive(target_type)
    return value


# Falling through from a Python kernel needs OpOverload.redispatch (not in torch 2.2).
CAN_FALL_THROUGH = hasattr(torch._ops.OpOverload, "redispatch")


def differing(value, can_fall_through=CAN_FALL_THROUGH):
    """Op names whose CUDA policy differs from the target's for some dtype (unknowns are left alone).

    Without ``redispatch`` an op CUDA does not autocast keeps the target's policy:
    a Python kernel could only run it with autocast off for the ops it is made of
    (``cross_entropy`` would then compute its ``log_softmax`` in float16, where
    CUDA's and the CPU's autocast both give float32).
    """
    out = []
    for name, entry in value["ops"].items():
        for cuda_policy, target_policy in entry.values():
            if not can_fall_through and cuda_policy == "none":
                continue
            if cuda_policy != target_policy and "unknown" not in (cuda_policy, target_policy):
                out.append(name)
                break
    return out


# -- applying the policies --------------------------------------------------------------------------
def _eligible(value, target_type):
    return (isinstance(value, torch.Tensor) and value.is_floating_point() and value.device.type == target_type
            and value.dtype is not torch.float64)


def _map(values, fn):
    out = []
    for value in values:
        if isinstance(value, (list, tuple)) and value and any(isinstance(v, torch.Tensor) for v in value):
            out.append(type(value)(fn(v) for v in value))
        else:
            out.append(fn(value))
    return out


def _cast_all(args, kwargs, dtype, target_type):
    def cast(value):
        if _eligible(value, target_type) and value.dtype is not dtype:
            return value.to(dtype)
        return value
    return _map(args, cast), dict(zip(kwargs, _map(kwargs.values(), cast)))


def _widest(args, kwargs, half, target_type):
    widest = half
    for value in _tensors(list(args) + list(kwargs.values())):
        if _eligible(value, target_type):
            if value.dtype is torch.float32:
                widest = torch.float32
            elif value.dtype is not half and widest is not torch.float32:
                raise RuntimeError("Unexpected floating ScalarType in at::autocast::prioritize")
    return widest


# Keys below autocast whose default (backend fallback) is a fall-through, and the keys
# an op may register a per-op fall-through for.
_FALLTHROUGH_FALLBACKS = ("ADInplaceOrView", "BackendSelect")
_FALLTHROUGH_CANDIDATES = tuple(name for name in ("ADInplaceOrView", "BackendSelect", "Conjugate", "Negative",
                                                   "ZeroTensor", "Named", "PythonTLSSnapshot")
                                if hasattr(torch._C.DispatchKey, name))


def _redispatch_mask(name, key):
    """The keys below ``key`` a fall-through may redispatch to for op ``name``.

    The dispatcher never runs a fall-through kernel: it masks those keys out of
    the set before looking up a kernel, and ``redispatch`` must do the same.
    An op without its own kernel for ``ADInplaceOrView``/``BackendSelect`` falls
    through there (their default); an op with its own kernel for a key is asked
    whether that kernel is a fall-through (torch 2.13; older torch cannot tell).
    """
    mask = torch._C._dispatch_keyset_full_after(key)
    is_fallthrough = getattr(torch._C, "_dispatch_kernel_for_dispatch_key_is_fallthrough", None)
    for member in _FALLTHROUGH_CANDIDATES:
        own = torch._C._dispatch_has_kernel_for_dispatch_key(name, member)
        if own:
            drop = is_fallthrough is not None and is_fallthrough(name, getattr(torch._C.DispatchKey, member))
        else:
            drop = member in _FALLTHROUGH_FALLBACKS
        if drop:
            mask = mask.remove(getattr(torch._C.DispatchKey, member))
    return mask


class _Kernel:
    """The autocast kernel of one op: CUDA's policy in "cuda" regions, the target's own policy otherwise."""

    def __init__(self, op, name, entry, target_type, key, message):
        self.op = op
        self.entry = entry
        self.target_type = target_type
        self.key = getattr(torch._C.DispatchKey, key)
        self.exclude = torch._C.DispatchKeySet(self.key)
        self.after = _redispatch_mask(name, self.key)
        self.message = message
        names = [a.name for a in op._schema.arguments]
        self.dtype_index = names.index("dtype") if "dtype" in names else None
        self.kwarg_dtype = self.dtype_index is not None and op._schema.arguments[self.dtype_index].kwarg_only

    def __call__(self, *args, **kwargs):
        half = compat.get_autocast_dtype(self.target_type)  # float32 in a region the policy upcasts
        if compat.is_autocast_enabled(_CUDA):
            requested = compat.get_autocast_dtype(_CUDA)
            policy = self.entry["bfloat16" if requested is torch.bfloat16 else "float16"][0]
        else:
            policy = self.entry["bfloat16" if half is torch.bfloat16 else "float16"][1]
        return getattr(self, "_" + policy)(args, kwargs, half)

    def _call(self, args, kwargs):
        with torch._C._ExcludeDispatchKeyGuard(self.exclude):
            return self.op(*args, **kwargs)

    def _lower(self, args, kwargs, half):
        return self._call(*_cast_all(args, kwargs, half, self.target_type))

    def _fp32(self, args, kwargs, half):
        return self._call(*_cast_all(args, kwargs, torch.float32, self.target_type))

    def _fp32_opt_dtype(self, args, kwargs, half):
        first = next(iter(_tensors(args)), None)
        if self.dtype_index is None:
            return self._fp32(args, kwargs, half)
        if first is not None and _eligible(first, self.target_type):
            if self.kwarg_dtype or len(args) <= self.dtype_index:
                if kwargs.get("dtype") is None:
                    kwargs = dict(kwargs, dtype=torch.float32)
            elif args[self.dtype_index] is None:
                args = args[:self.dtype_index] + (torch.float32,) + args[self.dtype_index + 1:]
        return self._call(args, kwargs)

    def _promote(self, args, kwargs, half):
        return self._call(*_cast_all(args, kwargs, _widest(args, kwargs, half, self.target_type), self.target_type))

    def _banned(self, args, kwargs, half):
        raise RuntimeError(self.message)

    def _none(self, args, kwargs, half):
        # Fall through: the op runs below this autocast key, and ops it is made of
        # still meet autocast (as CUDA's fallthrough does).
        if not CAN_FALL_THROUGH:
            return self._call(args, kwargs)  # torch 2.2: the op's parts run without autocast
        keys = torch._C._dispatch_tls_local_include_set()
        for tensor in _tensors(list(args) + list(kwargs.values())):
            keys = keys | torch._C._dispatch_keys(tensor)
        keys = keys & self.after
        return self.op.redispatch(keys, *args, **kwargs)

    _unknown = _none


class Kernels:
    """The registered kernels for one target: made on first need, removed by ``close()``."""

    def __init__(self, target_type):
        self.target_type = target_type
        self.key = autocast_key(target_type)
        self._lock = threading.Lock()
        self._library = None
        self._closed = False
        self.ops = None

    def ensure(self):
        """Derive (or read) the table and register the kernels, once."""
        if self.ops is not None or self._closed or self.key is None:
            return
        with self._lock:
            if self.ops is not None or self._closed:
                return
            value = table(self.target_type)
            names = differing(value)
            library = torch.library.Library("aten", "IMPL")
            registered = []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "overriding a previously registered kernel"
                for name in names:
                    op = overload(name)
                    if op is None:
                        continue
                    kernel = _Kernel(op, name, value["ops"][name], self.target_type, self.key,
                                     value["banned"].get(name, ""))
                    library.impl(name.partition("::")[2], kernel, self.key)
                    registered.append(name)
            self._library = library
            self.ops = registered
            log.debug("CUDA autocast numerics: %d ops get CUDA's policy on %s", len(registered), self.target_type)

    def close(self):
        with self._lock:
            self._closed = True
            if self._library is not None:
                self._library._destroy()
                self._library = None


class Registrations(dict):
    """Where the amp area keeps its ``Kernels`` (a ``Patch`` record with a key): removing one closes it."""

    def __delitem__(self, key):
        kernels = self.get(key)
        super().__delitem__(key)
        if kernels is not None:
            kernels.close()


REGISTRATIONS = Registrations()
