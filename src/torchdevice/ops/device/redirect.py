"""Area "device": CUDA tensors, modules, devices and checkpoints land on the target.

What it patches (all through core/patch.py):

* ``torch.device`` becomes a stand-in type that returns real ``torch.device``
  objects. CUDA device objects stay what they are on a GPU machine:
  ``torch.device("cuda", 0).type == "cuda"`` (and a bare index ``torch.device(0)``
  names ``cuda:0``), so code that checks the type of the device it built takes
  its CUDA path, as training libraries do (docs/compatibility.md). Every API
  below that receives such an object, a ``"cuda"`` string or a bare index
  places the work on the target; tensors report the device they really live on.
  ``isinstance``/``issubclass``, annotations, ``Optional[torch.device]``,
  ``torch.device | str``, pickling (torch pickles devices by looking
  ``torch.device`` up) and hashing keep working. ``torch.Generator`` gets the
  same stand-in type; a CUDA generator is made on the target.
* Every function of the ``torch`` namespace (and ``torch.fft``) that takes a
  keyword ``device``, found from torch's operator schemas and builtin
  signatures at apply time, and the ``Tensor.new_*`` methods.
* ``Tensor.to``/``cuda``/``pin_memory``/``is_pinned``/``type``, storage
  ``.cuda()``, ``torch.set_default_device``, ``torch.load`` (checkpoints saved on
  a GPU load without ``map_location``), ``DataLoader(pin_memory=True)``, legacy
  ``torch.cuda.FloatTensor``-style types and ``torch.set_default_tensor_type``. ``nn.Module.to/cuda/to_empty`` follow
  from the tensor patches.

Wrappers capture the target when the area applies. Per call they do one dict
lookup for the device argument and nothing at all when there is none.

With the optional C accelerator (torchdevice._speedups, built at install time)
the plain factory and ``Tensor.to`` wrappers are installed inside C forwarders
that pass calls needing no mapping (and cache hits) straight to torch and run
the wrapper for the rest; dynamo is told to treat forwarders as the torch
functions they replace. ``TORCHDEVICE_PURE_PYTHON=1`` installs the wrappers
themselves.

With the migration report on (core/report.py), factories, ``Tensor.to`` and
``Tensor.cuda`` are built from their ``_recording_*`` variants instead: the
same code with the report's call-site count inlined where the device argument
is mapped (with the accelerator, the forwarders count a call site the report
already knows in C). The plain wrappers are what is installed with the report
off, and are never slowed by it.
"""
import dataclasses
import functools
import pkgutil
import re
import sys
import warnings

import torch

from ...core import cache as _cache
from ...core import compat as _compat
from ...core import device as _device
from ...core.patch import EMULATED, NOOP, REGISTRY, Patch, active_config, resolve

AREA = "device"
_RealDevice = torch._C.device
_RealGenerator = torch._C.Generator

# Functions that take a device but are found neither in the operator schemas
# nor by their builtin signature (Python-level functions, and new_tensor, a C
# method with no schema), with whether they take pin_memory.
_EXTRA_FACTORIES = (
    ("torch", "asarray", False),
    ("torch.nested", "nested_tensor", True),
    ("torch.nested", "as_nested_tensor", False),
    ("torch.nested", "nested_tensor_from_jagged", False),
    ("torch.Tensor", "new_tensor", True),
)
_SIGNATURE = re.compile(r"\*,.*\bdevice\b")


@functools.lru_cache(maxsize=None)
def device_functions():
    """(owner, name, takes_pin_memory) for every public factory-like function
    of this torch that accepts a keyword ``device``.

    Scanning the operator schemas takes tens of milliseconds, so the result is
    kept on disk per torch build (core/cache.py) and read back at later starts.
    """
    try:
        rows = _cache.cached("device-functions", lambda: [list(row) for row in scan_device_functions()])
        if all(isinstance(o, str) and isinstance(n, str) and isinstance(p, bool) for o, n, p in rows):
            return tuple(sorted((o, n, p) for o, n, p in rows))
    except (TypeError, ValueError):
        pass  # a cache file of another shape: derive again
    return scan_device_functions()


def scan_device_functions():
    """device_functions(), derived from this torch's schemas and signatures (no cache)."""
    found = {}
    variable_functions = torch._C._VariableFunctions
    for schema in torch._C._jit_get_all_schemas():
        base = schema.name.partition("::")[2]
        if base.startswith("_") or not any(a.name == "device" and a.kwarg_only for a in schema.arguments):
            continue
        pin = any(a.name == "pin_memory" for a in schema.arguments)
        first = schema.arguments[0].name if schema.arguments else ""
        if hasattr(variable_functions, base) and hasattr(torch, base):
            found[("torch", base)] = found.get(("torch", base), False) or pin
        elif base.startswith("fft_") and hasattr(torch.fft, base[4:]):
            found[("torch.fft", base[4:])] = pin
        if first == "self" and base.startswith("new_") and hasattr(torch.Tensor, base):
            found[("torch.Tensor", base)] = found.get(("torch.Tensor", base), False) or pin
    for name in dir(variable_functions):
        if name.startswith("_") or ("torch", name) in found or not hasattr(torch, name):
            continue
        doc = (getattr(variable_functions, name).__doc__ or "").strip().split("\n", 1)[0]
        if _SIGNATURE.search(doc):
            found[("torch", name)] = "pin_memory" in doc
    for name in dir(torch._C.TensorBase):
        if name.startswith("new_") and ("torch.Tensor", name) not in found:
            doc = (getattr(torch._C.TensorBase, name).__doc__ or "").strip().split("\n", 1)[0]
            if _SIGNATURE.search(doc):
                found[("torch.Tensor", name)] = "pin_memory" in doc
    for owner, name, pin in _EXTRA_FACTORIES:
        try:
            holder = resolve(owner)
        except LookupError:
            continue
        if hasattr(holder, name):
            found.setdefault((owner, name), pin)
    return tuple(sorted((owner, name, pin) for (owner, name), pin in found.items()))


# -- wrappers -------------------------------------------------------------------
_NO_ARG = object()  # "not passed" (None is a value callers pass)

# The wrappers below sit on hot paths (docs/performance.md). Their shape is
# measured, not incidental: they read DEVICE_CACHE by subscript (misses, the
# rare case, go through map_device), take the arguments they look at as
# parameters of their own (a keyword-only ``device``; Tensor.to's first
# argument and ``non_blocking``) instead of searching ``*args``/``**kwargs``,
# and call the original without ``*``/``**`` unpacking where the call allows it.
def _factory(original, strip_pin_memory, accelerate=None):
    """The factory wrapper; with ``accelerate`` (an ``(owner, name)`` reference, given when
    the C accelerator is in use) the installed object is a forwarder around it."""
    cache = _device.DEVICE_CACHE
    resolve = _device.map_device

    # ``device`` is a keyword-only parameter: a call that passes it builds no dict for
    # the wrapper to search and update (about 70 ns less per call than ``**kwargs`` alone;
    # a call without it pays about 20 ns for the default, docs/performance.md).
    if strip_pin_memory:
        def factory(*args, device=_NO_ARG, **kwargs):
            if kwargs and "pin_memory" in kwargs and kwargs["pin_memory"]:
                kwargs["pin_memory"] = False  # the target has no page-locked host memory
            if device is not _NO_ARG:
                if device is not None:
                    try:
                        device = cache[device]
                    except (KeyError, TypeError):
                        device = resolve(device)
                if kwargs:
                    return original(*args, device=device, **kwargs)
                return original(*args, device=device)
            if kwargs:
                return original(*args, **kwargs)
            return original(*args)
    else:
        def factory(*args, device=_NO_ARG, **kwargs):
            if device is not _NO_ARG:
                if device is not None:
                    try:
                        device = cache[device]
                    except (KeyError, TypeError):
                        device = resolve(device)
                if kwargs:
                    return original(*args, device=device, **kwargs)
                return original(*args, device=device)
            if kwargs:
                return original(*args, **kwargs)
            return original(*args)
    return _forwarder(original, functools.wraps(original)(factory), _factory_rule(strip_pin_memory), accelerate)


def _factory_rule(strip_pin_memory):
    return "FACTORY_PIN" if strip_pin_memory else "FACTORY"


def _recording_factory(strip_pin_memory, accelerate=None):
    """``Patch.recording`` for ``_factory``: the same wrapper, counting calls that map a device;
    with ``accelerate`` a forwarder around it that counts known sites in C (``_forwarder``)."""
    def recording(original, site):
        cache = _device.DEVICE_CACHE
        resolve = _device.map_device
        getframe = sys._getframe
        fast_get = site.fast.get
        seen = site.seen
        empty = site.EMPTY

        def factory(*args, device=_NO_ARG, **kwargs):
            if strip_pin_memory and kwargs and "pin_memory" in kwargs and kwargs["pin_memory"]:
                kwargs["pin_memory"] = False  # the target has no page-locked host memory
            if device is not _NO_ARG:
                if device is not None:
                    try:
                        mapped = cache[device]
                    except (KeyError, TypeError):
                        mapped = resolve(device)
                    if mapped is not device:  # only a spec that was mapped can ask for CUDA
                        frame = getframe(1)
                        code, seen_spec, counter = fast_get(frame.f_lasti, empty)
                        if code is frame.f_code and seen_spec is device:
                            next(counter)
                        else:
                            seen(frame, device)
                    device = mapped
                if kwargs:
                    return original(*args, device=device, **kwargs)
                return original(*args, device=device)
            if kwargs:
                return original(*args, **kwargs)
            return original(*args)
        return _forwarder(original, functools.wraps(original)(factory), _factory_rule(strip_pin_memory), accelerate,
                          site.fast)
    return recording


def _tensor_to(original, accelerate=None):
    """The Tensor.to wrapper; with ``accelerate`` a forwarder around it, as ``_factory``."""
    cache = _device.DEVICE_CACHE
    resolve = _device.map_device

    # The first positional argument gets its own parameter: binding it costs less than
    # building and measuring an ``*args`` tuple, and t.to(x) is the common call. ``device``
    # and ``non_blocking`` are keyword-only parameters for the same reason: t.to(device=...)
    # and t.to(x, non_blocking=True) then build no dict. Each is passed on as it came
    # (positionally or by keyword), so tensor subclasses see the call shape the program made.
    def to(self, _first_arg=_NO_ARG, *rest, device=_NO_ARG, non_blocking=_NO_ARG, **kwargs):
        if _first_arg is not _NO_ARG:
            try:
                mapped = cache[_first_arg]  # devices, device strings and dtypes are all cached
            except KeyError:
                mapped = resolve(_first_arg)
            except TypeError:
                mapped = _first_arg
            if not kwargs and device is _NO_ARG:
                if not rest:
                    if non_blocking is _NO_ARG:
                        return original(self, mapped)
                    return original(self, mapped, non_blocking=non_blocking)  # x.to(device, non_blocking=True)
                if non_blocking is _NO_ARG:
                    return original(self, mapped, *rest)
            return _to_general(original, self, mapped, rest, device, non_blocking, kwargs)
        if device is not _NO_ARG:
            if device is not None:
                try:
                    device = cache[device]
                except (KeyError, TypeError):
                    device = resolve(device)
            if not kwargs:
                if non_blocking is _NO_ARG:
                    return original(self, device=device)
                return original(self, device=device, non_blocking=non_blocking)
            if non_blocking is not _NO_ARG:
                kwargs["non_blocking"] = non_blocking
            return original(self, device=device, **kwargs)
        if non_blocking is not _NO_ARG:
            kwargs["non_blocking"] = non_blocking
        return original(self, **kwargs)
    return _forwarder(original, functools.wraps(original)(to), "TENSOR_TO", accelerate)


def _to_general(original, self, mapped, rest, device, non_blocking, kwargs):
    """Tensor.to with a first argument and further keywords (the uncommon shapes)."""
    if non_blocking is not _NO_ARG:
        kwargs["non_blocking"] = non_blocking
    if device is not _NO_ARG:  # an invalid combination: let torch say so, about the mapped device
        kwargs["device"] = device if device is None else _device.map_device(device)
    return original(self, mapped, *rest, **kwargs)


# -- the optional C accelerator (torchdevice._speedups) --------------------------------------
# A forwarder sends a call that its rule proves needs no mapping (no ``device`` keyword; for
# Tensor.to also no first argument other than a dtype) straight to the original in C, a call
# whose device spec DEVICE_CACHE already maps to the original with the cached value (what the
# wrapper does on a hit), and every other call to the Python wrapper above, which stays the
# one source of behaviour (only map_device fills the cache).
# Used for the plain factory and Tensor.to wrappers only, decided when the area applies
# (_accelerate): not with TORCHDEVICE_PURE_PYTHON=1, the float64 layer, or the migration
# report before Python 3.11; with the report on, the forwarders count known sites in C.
def _speedups():
    """torchdevice._speedups, or None when it was not built for this interpreter."""
    try:
        from ... import _speedups as module
    except ImportError:
        return None
    return module


def _forwarder(original, wrapper, rule, reference, fast=None):
    """What is installed: ``wrapper`` itself when ``reference`` is None (no accelerator), else
    the C forwarder around it, with the named rule (``"FACTORY"``, ``"FACTORY_PIN"``,
    ``"TENSOR_TO"``) and, with the report on, the report site's table ``fast``."""
    if reference is None:
        return wrapper
    speedups = _speedups()
    owner, name = reference
    kind = speedups.MethodForwarder if isinstance(resolve(owner), type) else speedups.Forwarder
    module, _, qualname = owner.partition(".") if kind is speedups.MethodForwarder else (owner, "", "")
    path = f"{module}:{qualname + '.' if qualname else ''}{name}"
    forwarder = kind(original, wrapper, getattr(speedups, rule), torch.dtype, (pkgutil.resolve_name, (path,)), _device.DEVICE_CACHE, fast)
    functools.update_wrapper(forwarder, original)
    if getattr(forwarder, "__module__", None) is None:
        forwarder.__module__ = module
    return forwarder


def _dynamo_allows_forwarders(original):
    """torch.compile: dynamo puts a forwarder into its graph as the torch function it replaces.

    Dynamo treats torch's functions as graph operations by identity, from a table it fills
    by reading the torch namespace (where it finds the forwarders: without the accelerator it
    finds the Python wrappers and does the same). For a callable object that is not a
    function it asks ``is_callable_allowed`` (what ``torch.compiler.allow_in_graph`` fills);
    this answers yes for every forwarder, by type, so no identity outlives an ``unpatch()``.
    """
    speedups = _speedups()
    types = (speedups.Forwarder, speedups.MethodForwarder)

    def is_callable_allowed(obj):
        return obj.__class__ in types or original(obj)
    return functools.wraps(original)(is_callable_allowed)


_accelerator = "not applied: the device area did not apply"


def accelerator():
    """Whether the C accelerator is in use, and if not why (``torchdevice info``)."""
    return _accelerator


def _accelerate(cfg, policy):
    """Whether the plain factory and Tensor.to wrappers get forwarders (decided once, at apply time)."""
    global _accelerator
    speedups = _speedups()
    if cfg.pure_python:
        _accelerator = "off: TORCHDEVICE_PURE_PYTHON is set"
    elif policy is not None:
        _accelerator = "off: float64 tensors headed to this target go through the Python wrappers"
    elif speedups is None:
        _accelerator = "not built (no C compiler when torchdevice was installed)"
    elif cfg.report and not speedups.COUNTS_SITES:
        _accelerator = "off: the migration report counts calls in the Python wrappers before Python 3.11"
    else:
        _accelerator = "active"
    return _accelerator == "active"


def _recording_tensor_to(original, site, accelerate=None):
    """``Patch.recording`` for ``_tensor_to``: the same wrapper, counting calls that map a device;
    with ``accelerate`` a forwarder around it, as ``_recording_factory``."""
    cache = _device.DEVICE_CACHE
    resolve = _device.map_device
    getframe = sys._getframe
    fast_get = site.fast.get
    seen = site.seen
    empty = site.EMPTY

    def to(self, _first_arg=_NO_ARG, *rest, device=_NO_ARG, non_blocking=_NO_ARG, **kwargs):
        if _first_arg is not _NO_ARG:
            try:
                mapped = cache[_first_arg]
            except KeyError:
                mapped = resolve(_first_arg)
            except TypeError:
                mapped = _first_arg
            if mapped is not _first_arg:  # dtypes, tensors and non-CUDA device objects map to themselves
                frame = getframe(1)
                code, seen_spec, counter = fast_get(frame.f_lasti, empty)
                if code is frame.f_code and seen_spec is _first_arg:
                    next(counter)
                else:
                    seen(frame, _first_arg)
            if not kwargs and device is _NO_ARG:
                if not rest:
                    if non_blocking is _NO_ARG:
                        return original(self, mapped)
                    return original(self, mapped, non_blocking=non_blocking)
                if non_blocking is _NO_ARG:
                    return original(self, mapped, *rest)
            return _to_general(original, self, mapped, rest, device, non_blocking, kwargs)
        if device is not _NO_ARG:
            if device is not None:
                try:
                    mapped = cache[device]
                except (KeyError, TypeError):
                    mapped = resolve(device)
                if mapped is not device:
                    frame = getframe(1)
                    code, seen_spec, counter = fast_get(frame.f_lasti, empty)
                    if code is frame.f_code and seen_spec is device:
                        next(counter)
                    else:
                        seen(frame, device)
                device = mapped
            if not kwargs:
                if non_blocking is _NO_ARG:
                    return original(self, device=device)
                return original(self, device=device, non_blocking=non_blocking)
            if non_blocking is not _NO_ARG:
                kwargs["non_blocking"] = non_blocking
            return original(self, device=device, **kwargs)
        if non_blocking is not _NO_ARG:
            kwargs["non_blocking"] = non_blocking
        return original(self, **kwargs)
    return _forwarder(original, functools.wraps(original)(to), "TENSOR_TO", accelerate, site.fast)


def _check_cuda_arg(api, spec):
    """Tensor.cuda(device) and storage.cuda(device) accept only CUDA devices, and only the
    indices the program's device count has (core/device.check_index, through map_device)."""
    if spec is not None:
        if not _device.is_cuda_spec(spec):
            torch_spec = _RealDevice(spec) if isinstance(spec, str) else spec
            raise RuntimeError(f"{api}: Invalid device, must be cuda device (got {torch_spec!r})")
        try:
            _device.DEVICE_CACHE[spec]  # a valid index is cached: one lookup
        except (KeyError, TypeError):
            _device.map_device(spec)  # raises for an index beyond the count


def _modes_check():
    """torch's "is a torch function mode active" test, or None where this torch lacks it."""
    return getattr(torch._C, "_is_torch_function_mode_enabled", None)


def _tensor_cuda(target):
    preserve = torch.preserve_format
    to_cpu = torch._C.TensorBase.cpu
    to_device = torch._C.TensorBase.to
    target_device = target.device
    plain, parameter = torch.Tensor, torch.nn.Parameter
    modes_active = _modes_check()

    if target.type == "cpu" and modes_active is not None:
        # t.cuda() on the CPU target is t.cpu(), which returns the tensor itself when it
        # is a CPU tensor: no copy, no autograd node, no dispatch. The wrapper answers
        # that without the C call (about 100 ns of argument parsing) where t.cpu() does
        # nothing anyone could observe: an exact Tensor or Parameter (no subclass whose
        # __torch_function__ would see the call), on the CPU, no torch function mode active.
        def cuda(self, device=None, non_blocking=False, memory_format=preserve):
            if device is None and memory_format is preserve:
                kind = type(self)
                if (kind is plain or kind is parameter) and self.is_cpu and not modes_active():
                    return self
                return to_cpu(self)
            if device is not None:
                _check_cuda_arg("Tensor.cuda", device)
            if memory_format is preserve:
                return to_cpu(self)
            return to_cpu(self, memory_format=memory_format)
    elif target.type == "cpu":
        def cuda(self, device=None, non_blocking=False, memory_format=preserve):
            if device is None and memory_format is preserve:
                return to_cpu(self)  # the common call, t.cuda(): one test, one call
            if device is not None:
                _check_cuda_arg("Tensor.cuda", device)
            if memory_format is preserve:
                return to_cpu(self)
            return to_cpu(self, memory_format=memory_format)
    else:
        def cuda(self, device=None, non_blocking=False, memory_format=preserve):
            if device is not None:
                _check_cuda_arg("Tensor.cuda", device)
            return to_device(self, target_device, non_blocking=non_blocking, memory_format=memory_format)
    cuda.__doc__ = torch._C.TensorBase.cuda.__doc__
    return cuda


def _recording_tensor_cuda(target):
    """``Patch.recording`` for ``_tensor_cuda``: the same method, counting every call."""
    def recording(original, site):
        preserve = torch.preserve_format
        to_cpu = torch._C.TensorBase.cpu
        to_device = torch._C.TensorBase.to
        target_device = target.device
        on_cpu = target.type == "cpu"
        plain, parameter = torch.Tensor, torch.nn.Parameter
        modes_active = _modes_check() or (lambda: True)  # without the test: always the C call
        getframe = sys._getframe
        fast_get = site.fast.get
        seen = site.seen
        empty = site.EMPTY

        def cuda(self, device=None, non_blocking=False, memory_format=preserve):
            frame = getframe(1)
            code, seen_spec, counter = fast_get(frame.f_lasti, empty)
            if code is frame.f_code and seen_spec is device:
                next(counter)
            else:
                seen(frame, device)
            if device is None and memory_format is preserve and on_cpu:
                kind = type(self)  # as in _tensor_cuda
                if (kind is plain or kind is parameter) and self.is_cpu and not modes_active():
                    return self
                return to_cpu(self)
            if device is not None:
                _check_cuda_arg("Tensor.cuda", device)
            if on_cpu:
                if memory_format is preserve:
                    return to_cpu(self)
                return to_cpu(self, memory_format=memory_format)
            return to_device(self, target_device, non_blocking=non_blocking, memory_format=memory_format)
        cuda.__doc__ = torch._C.TensorBase.cuda.__doc__
        return cuda
    return recording


def _pin_memory(original):
    def pin_memory(self, device=None):
        return self  # nothing to pin: the target reads host memory directly
    return functools.wraps(original)(pin_memory)


def _dataloader_init(original):
    """DataLoader(pin_memory=True): accepted, nothing pinned, no warning.

    torch itself would warn that no accelerator is found (CPU) or that MPS cannot
    pin; on the GPU the program was written for the flag is normal, and pinning
    means nothing on the target, so the loader is built as if it were False.
    """
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if self.pin_memory:
            self.pin_memory = False
            if getattr(self, "pin_memory_device", ""):
                self.pin_memory_device = ""  # older torch warns about a device without pin_memory
    return functools.wraps(original)(__init__)


def _is_pinned(original):
    def is_pinned(self, device=None):
        return False
    return functools.wraps(original)(is_pinned)


_LEGACY_PREFIX = "torch.cuda."


def _legacy_cpu_name(dtype):
    """'torch.cuda.FloatTensor' (or the legacy class) -> 'torch.FloatTensor', else None."""
    if isinstance(dtype, str):
        return "torch." + dtype[len(_LEGACY_PREFIX):] if dtype.startswith(_LEGACY_PREFIX) else None
    return getattr(dtype, "_torchdevice_cpu_name", None)


def _tensor_type(original, target):
    def type(self, dtype=None, non_blocking=False, **kwargs):
        if dtype is None:
            return original(self)
        cpu_name = _legacy_cpu_name(dtype)
        if cpu_name is None:
            return original(self, dtype, non_blocking, **kwargs)
        return original(self, cpu_name, non_blocking).to(target.device)
    return functools.wraps(original)(type)


def _storage_cuda(target):
    def cuda(self, device=None, non_blocking=False):
        _check_cuda_arg("Storage.cuda", device)
        if target.type == "cpu":
            return self.cpu()
        return self.to(device=target.device, non_blocking=non_blocking)
    return cuda


class _TypeStandIn(type):
    """Metaclass of the stand-ins for torch.device and torch.Generator.

    The stand-in is what ``torch.device`` names while patched: calling it
    returns a real object of the original C type; instance and subclass checks,
    attribute reads and ``|`` unions answer for the original type. It also
    compares and hashes equal to the original type, so torch code that checks
    ``type(x) in (torch.device, ...)``, ``obj != torch.device`` or looks types
    up in a set or dict (torch.fx code generation, dynamo's constant types)
    still recognises real device objects.
    """

    def __instancecheck__(cls, obj):
        return isinstance(obj, cls._torchdevice_real)

    def __eq__(cls, other):
        return other is cls or other is cls._torchdevice_real

    def __ne__(cls, other):
        return not (other is cls or other is cls._torchdevice_real)

    def __hash__(cls):
        return hash(cls._torchdevice_real)

    def __subclasscheck__(cls, sub):
        return sub is cls or issubclass(sub, cls._torchdevice_real)

    def __getattr__(cls, name):
        return getattr(cls._torchdevice_real, name)


def _stand_in(real, call, doc=None):
    namespace = {
        "__module__": "torch",
        "__qualname__": real.__name__,
        "__doc__": doc or real.__doc__,
        "_torchdevice_real": real,
    }
    # isinstance(x, torch.device) calls the metaclass's __instancecheck__. The real
    # type's own bound __instancecheck__ is a C method, not a descriptor, so Python
    # calls it with ``x`` alone: the check stays in C (no Python frame per call).
    meta = type("_StandInMeta", (_TypeStandIn,), {"__call__": call, "__instancecheck__": real.__instancecheck__})
    return meta(real.__name__, (), namespace)


_DEVICE_CACHE_LIMIT = 256


def _device_type(original):
    """torch.device's stand-in. torch.device objects are immutable (no attributes can be
    set, ``with device:`` keeps no state on the object), so one object per device string
    is made and handed out again: ``torch.device("cuda")`` costs a dict lookup instead
    of parsing the string. Only exact ``str`` arguments are cached (a string never
    compares equal to another type), at most ``_DEVICE_CACHE_LIMIT`` of them; invalid
    strings raise torch's error and are not cached."""
    cuda_devices = [_RealDevice("cuda", i) for i in range(8)]
    by_string = {}

    def __call__(cls, _first=_NO_ARG, *args, **kwargs):
        if not args and not kwargs:
            kind = type(_first)
            if kind is str:
                try:
                    return by_string[_first]
                except KeyError:
                    made = _RealDevice(_first)
                    if len(by_string) < _DEVICE_CACHE_LIMIT:
                        by_string[_first] = made
                    return made
            if kind is int and _first >= 0:
                # A bare index names the current accelerator's device: CUDA, as on a GPU machine.
                return cuda_devices[_first] if _first < 8 else _RealDevice("cuda", _first)
        if _first is _NO_ARG:
            return _RealDevice(*args, **kwargs)
        return _RealDevice(_first, *args, **kwargs)
    return _stand_in(_RealDevice, __call__)


def _recording_device_type(original, site):
    """``Patch.recording`` for ``_device_type``: the same stand-in, counting CUDA devices made."""
    cuda_devices = [_RealDevice("cuda", i) for i in range(8)]
    by_string = {}
    getframe = sys._getframe
    fast_get = site.fast.get
    seen = site.seen
    seen_call = site.seen_call
    empty = site.EMPTY

    def __call__(cls, _first=_NO_ARG, *args, **kwargs):
        if not args and not kwargs:
            kind = type(_first)
            if kind is str:
                frame = getframe(1)
                code, seen_spec, counter = fast_get(frame.f_lasti, empty)
                if code is frame.f_code and seen_spec is _first:
                    next(counter)
                else:
                    seen(frame, _first)
                try:
                    return by_string[_first]
                except KeyError:
                    made = _RealDevice(_first)
                    if len(by_string) < _DEVICE_CACHE_LIMIT:
                        by_string[_first] = made
                    return made
            if kind is int and _first >= 0:
                frame = getframe(1)
                code, seen_spec, counter = fast_get(frame.f_lasti, empty)
                if code is frame.f_code and seen_spec is _first:
                    next(counter)
                else:
                    seen(frame, _first)
                return cuda_devices[_first] if _first < 8 else _RealDevice("cuda", _first)
        if _first is _NO_ARG:
            seen_call(getframe(1), args, kwargs)
            return _RealDevice(*args, **kwargs)
        seen_call(getframe(1), (_first,) + args, kwargs)
        return _RealDevice(_first, *args, **kwargs)
    return _stand_in(_RealDevice, __call__)


def _generator_type(original):
    resolve = _device.map_device

    def __call__(cls, device="cpu"):
        return _RealGenerator(resolve(device))
    return _stand_in(_RealGenerator, __call__)


def _set_default_device(original):
    resolve = _device.map_device

    def set_default_device(device):
        return original(resolve(device))
    return functools.wraps(original)(set_default_device)


def _parse_to(original):
    """``Module.to`` parses its arguments with this. torch reads a bare index as a device of
    the current accelerator (none here) and rejects -1 before any tensor is moved, so
    ``model.to(rank)`` and ``model.to(x.get_device())`` need the index read as CUDA's here:
    ``N`` names ``cuda:N`` (checked against the device count), ``-1`` the current device."""
    def parse_to(*args, **kwargs):
        if args and type(args[0]) is int:
            args = (_cuda_of_index(args[0]), *args[1:])
        elif type(kwargs.get("device")) is int:
            kwargs["device"] = _cuda_of_index(kwargs["device"])
        return original(*args, **kwargs)
    return functools.wraps(original)(parse_to)


def _cuda_of_index(index):
    """What a bare index passed to Module.to names: CUDA device ``index`` (checked), ``"cuda"``
    for -1; any other negative index is left for torch to reject."""
    if index == -1:
        return "cuda"
    if index < 0:
        return index
    return _RealDevice("cuda", _device.check_index(index, "Module.to"))


# -- torch.load -----------------------------------------------------------------
def _map_location(spec, target):
    """Rewrite a torch.load map_location so CUDA-tagged storages land on the target."""
    restore = REGISTRY.original("torch.serialization", "default_restore_location")

    def move(storage):
        return storage.cpu() if target.type == "cpu" else storage.to(device=target.device)

    if spec is None:
        def to_target(storage, location):
            return move(storage) if location.startswith("cuda") else None
        return to_target
    if isinstance(spec, dict):
        table = dict(spec)

        def by_table(storage, location):
            if location in table:
                location = table[location]
                location = str(location) if isinstance(location, _RealDevice) else location
                if location.startswith("cuda"):
                    _device.map_device(location)  # the program's own choice: its index is checked
            return move(storage) if location.startswith("cuda") else restore(storage, location)
        return by_table
    if callable(spec) and not isinstance(spec, (str, _RealDevice)):
        def by_function(storage, location):
            result = spec(storage, location)
            if result is None and location.startswith("cuda"):
                return move(storage)
            return result
        return by_function
    if isinstance(spec, (str, _RealDevice, int)):
        return _device.map_device(spec)
    return spec


def _reemit(caught, frame):
    """Show warnings torch raised inside our wrapper as raised at the program's own line
    (``frame``: the caller of the wrapper; the program's frame is searched from there)."""
    from ...core import sites  # only when torch warned: nothing added to activation

    frame = sites.user_frame(frame)[0]
    if frame is None:
        for w in caught:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        return
    globals_ = frame.f_globals
    registry = globals_.setdefault("__warningregistry__", {})
    for w in caught:
        # (No module_globals: with them, warnings asks the module's loader for its source,
        # which fails for code run with -c. The line is read from the file, as usual.)
        warnings.warn_explicit(w.message, w.category, frame.f_code.co_filename, frame.f_lineno,
                               module=globals_.get("__name__"), registry=registry)


def _load(original):
    target = _device.current()

    def load(f, map_location=None, *args, **kwargs):
        # torch.load warns (e.g. torch 2.4-2.5's weights_only FutureWarning) with a stack level
        # that would name this wrapper: collect its warnings and show them at the caller's line,
        # through the caller's filters, as without torchdevice. (Not a hot path.)
        caught = []
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                return original(f, _map_location(map_location, target), *args, **kwargs)
        finally:
            if caught:
                _reemit(caught, sys._getframe(1))
    return functools.wraps(original)(load)


# -- legacy torch.cuda.<Type>Tensor / <Type>Storage ------------------------------------
class _LegacyType(type):
    """torch.cuda.FloatTensor and friends: build on the target, check by dtype and device."""

    def __call__(cls, *args, **kwargs):
        device = kwargs.pop("device", None)
        if device is not None:
            if not _device.is_cuda_spec(device):
                raise RuntimeError(f"legacy constructor expects device type: cuda but device type: "
                                   f"{_RealDevice(device).type if isinstance(device, str) else device.type} was passed")
            _device.map_device(device)  # an index beyond the device count raises
        made = cls._torchdevice_cpu(*args, **kwargs)
        return made if cls._torchdevice_target.type == "cpu" else made.to(cls._torchdevice_target.device)

    def __instancecheck__(cls, obj):
        return (isinstance(obj, cls._torchdevice_base) and obj.dtype == cls._torchdevice_dtype
                and obj.device.type == cls._torchdevice_target.type)

    def __getattr__(cls, name):
        return getattr(cls._torchdevice_cpu, name)


def _legacy_type(name, target):
    def make(original):
        cpu_type = getattr(torch, name)
        base = torch.Tensor if name.endswith("Tensor") else torch.storage._StorageBase
        dtype = cpu_type.dtype if base is torch.Tensor else None
        return _LegacyType(name, (), {
            "__module__": "torch.cuda",
            "__qualname__": name,
            "__doc__": f"Legacy CUDA type: builds a {cpu_type.__name__} on the torchdevice target.",
            "_torchdevice_cpu": cpu_type,
            "_torchdevice_cpu_name": f"torch.{name}",
            "_torchdevice_base": base,
            "_torchdevice_dtype": dtype,
            "_torchdevice_target": target,
        })
    return make


_FLOAT_TYPE_NAMES = ("FloatTensor", "DoubleTensor", "HalfTensor", "BFloat16Tensor")


def _set_default_tensor_type(target, policy):
    """torch.set_default_tensor_type("torch.cuda.FloatTensor"), the legacy way to make
    every new tensor a CUDA one: the CPU type's dtype becomes the default (torch's
    own call, with its deprecation warning), and factories default to the target
    (``set_default_device``; nothing to do when the target is the CPU). A CPU type
    afterwards puts the default device back. On a target without float64 the
    dtype follows TORCHDEVICE_MPS_FLOAT64 (``policy``)."""
    def make(original):
        names = {getattr(torch, name).dtype: f"torch.{name}" for name in _FLOAT_TYPE_NAMES if hasattr(torch, name)}
        state = {"device_set": False}

        def set_device(device):
            REGISTRY.original("torch", "set_default_device")(device)
            state["device_set"] = device is not None

        def set_default_tensor_type(t):
            cpu_name = _legacy_cpu_name(t)
            if cpu_name is None:
                if state["device_set"]:
                    set_device(None)
                return original(t)
            device = target.device
            if policy is not None:
                dtype = getattr(torch, cpu_name[len("torch."):]).dtype
                device, narrowed = policy.place("torch.set_default_tensor_type", dtype)
                cpu_name = names.get(narrowed, cpu_name)
            original(cpu_name)
            if device.type != "cpu":
                set_device(device)
            elif state["device_set"]:
                set_device(None)
        return functools.wraps(original)(set_default_tensor_type)
    return make


def _legacy_names():
    return sorted(name for name in vars(torch.cuda)
                  if (name.endswith("Tensor") or name.endswith("Storage")) and name[0].isupper()
                  and name not in ("Tensor", "TypedStorage", "UntypedStorage") and hasattr(torch, name))


# -- float64 on targets without it (MPS) -------------------------------------------------
# These layers wrap the plain wrappers above, and only when the target cannot
# compute in float64, so the CPU path never pays for them. Only tensors headed
# to the target because code asked for CUDA are touched: an explicit "mps"
# request gets torch's own behaviour.
_NARROW = {torch.float64: torch.float32, torch.complex128: torch.complex64}
_DATA_FACTORIES = {"tensor", "as_tensor", "asarray"}


class _Float64Policy:
    """TORCHDEVICE_MPS_FLOAT64: downcast (default), cpu, or error."""

    def __init__(self, target, mode):
        self.target = target
        self.mode = mode

    def place(self, api, dtype):
        """(device, dtype) to use for a ``dtype`` tensor headed to the target."""
        narrow = _NARROW.get(dtype)
        if narrow is None:
            return self.target.device, dtype
        if self.mode == "cpu":
            return _RealDevice("cpu"), dtype
        if self.mode == "error":
            raise TypeError(f"{api}: {dtype} is not supported on {self.target.type} (the CUDA device this program "
                            f"asked for maps to {self.target.device}); use float32, or set "
                            f"TORCHDEVICE_MPS_FLOAT64=downcast or =cpu")
        from ...core.logger import warn_once

        warn_once(("float64", dtype), f"torchdevice: {dtype} is not supported on {self.target.type}; tensors "
                  f"sent to the CUDA device are stored as {narrow} (TORCHDEVICE_MPS_FLOAT64=cpu keeps them on the "
                  f"CPU instead)", stacklevel=4)
        return self.target.device, narrow

    def move(self, api, tensor, non_blocking=False):
        device, dtype = self.place(api, tensor.dtype)
        return torch._C.TensorBase.to(tensor, device, dtype, non_blocking=non_blocking)


def _narrow_factory(name, policy):
    def make(inner):
        def factory(*args, **kwargs):
            spec = kwargs.get("device")
            if spec is None or not _device.is_cuda_spec(spec):
                return inner(*args, **kwargs)
            dtype = kwargs.get("dtype")
            if dtype is None and name in _DATA_FACTORIES:
                kwargs["device"] = "cpu"
                return policy.move(name, inner(*args, **kwargs))
            if dtype is None:
                dtype = torch.get_default_dtype() if name not in ("arange", "randint", "randperm") else None
            device, narrowed = policy.place(f"torch.{name}", dtype)
            kwargs["device"] = device
            if narrowed is not dtype:
                kwargs["dtype"] = narrowed
            return inner(*args, **kwargs)
        return functools.wraps(inner)(factory)
    return make


def _narrow_to(policy):
    def make(inner):
        def to(self, *args, **kwargs):
            spec = args[0] if args else kwargs.get("device")
            if spec is None or not _device.is_cuda_spec(spec):
                return inner(self, *args, **kwargs)
            dtype = kwargs.pop("dtype", None)
            rest = list(args[1:])
            if rest and isinstance(rest[0], torch.dtype):
                dtype = rest.pop(0)
            kwargs.pop("device", None)
            device, narrowed = policy.place("Tensor.to", dtype or self.dtype)
            return inner(self, device, narrowed, *rest, **kwargs)
        return functools.wraps(inner)(to)
    return make


def _narrow_cuda(policy):
    def make(inner):
        def cuda(self, device=None, non_blocking=False, memory_format=torch.preserve_format):
            if device is not None:
                _check_cuda_arg("Tensor.cuda", device)
            place, dtype = policy.place("Tensor.cuda", self.dtype)
            return torch._C.TensorBase.to(self, place, dtype, non_blocking=non_blocking, memory_format=memory_format)
        return functools.wraps(inner)(cuda)
    return make


def _narrow_load(policy):
    """torch.load onto MPS: CUDA storages load to the CPU, then their tensors move with the policy."""
    def make(inner):
        def load(f, map_location=None, *args, **kwargs):
            if map_location is not None:
                return inner(f, map_location, *args, **kwargs)
            from_cuda = set()

            def keep_on_cpu(storage, location):
                if location.startswith("cuda"):
                    from_cuda.add(storage.data_ptr())
                    return storage
                return None

            loaded = REGISTRY.original("torch.serialization", "load")(f, keep_on_cpu, *args, **kwargs)
            return _move_tree(loaded, lambda t: policy.move("torch.load", t)
                              if t.untyped_storage().data_ptr() in from_cuda else t)
        return functools.wraps(inner)(load)
    return make


def _move_tree(obj, move):
    if isinstance(obj, torch.Tensor):
        return move(obj)
    if isinstance(obj, torch.nn.Module):
        return obj._apply(move)
    if isinstance(obj, dict):
        for key in list(obj):
            obj[key] = _move_tree(obj[key], move)
        return obj
    if isinstance(obj, list):
        obj[:] = [_move_tree(item, move) for item in obj]
        return obj
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return type(obj)(_move_tree(item, move) for item in obj)
    return obj


def _compose(outer, inner_make):
    return lambda original: outer(inner_make(original))


# -- records ----------------------------------------------------------------------------
def records():
    target = _device.current()
    cfg = active_config()
    policy = None if target.float64 else _Float64Policy(target, cfg.mps_float64)
    fast = _accelerate(cfg, policy)
    to_reference = ("torch.Tensor", "to") if fast else None
    out = [
        Patch("torch", "device", _device_type, kind=EMULATED, recording=_recording_device_type,
              note="CUDA device objects keep type 'cuda'; a bare index names cuda:N"),
        Patch("torch", "Generator", _generator_type, note="CUDA generators are made on the target"),
        Patch("torch.Tensor", "to", functools.partial(_tensor_to, accelerate=to_reference),
              recording=functools.partial(_recording_tensor_to, accelerate=to_reference)),
        Patch("torch.Tensor", "cuda", lambda original: _tensor_cuda(target), recording=_recording_tensor_cuda(target)),
        Patch("torch.Tensor", "pin_memory", _pin_memory, kind=NOOP,
              note="returns the tensor: the target reads host memory directly"),
        Patch("torch.Tensor", "is_pinned", _is_pinned, kind=NOOP, note="False: no pinned memory on the target"),
        Patch("torch.Tensor", "type", lambda original: _tensor_type(original, target)),
        Patch("torch.utils.data.DataLoader", "__init__", _dataloader_init, kind=NOOP,
              note="pin_memory=True accepted; nothing to pin on the target"),
        Patch("torch.UntypedStorage", "cuda", lambda original: _storage_cuda(target)),
        Patch("torch.storage.TypedStorage", "cuda", lambda original: _storage_cuda(target)),
        Patch("torch", "set_default_device", _set_default_device),
        Patch("torch._C._nn", "_parse_to", _parse_to, note="Module.to: a bare index N names cuda:N (-1, "
              "x.get_device() on the CPU target, the current CUDA device)"),
        Patch("torch", "set_default_tensor_type", _set_default_tensor_type(target, policy), kind=EMULATED,
              note="legacy CUDA types: that dtype, factories on the target"),
        Patch("torch", "load", _load, note="CUDA-tagged storages load onto the target"),
        Patch("torch.serialization", "load", _load),
    ]
    if fast and _compat.DYNAMO_ASKS_IS_CALLABLE_ALLOWED:  # torch 2.2 finds them in the torch namespace
        out.append(Patch("torch._dynamo.trace_rules", "is_callable_allowed", _dynamo_allows_forwarders,
                         note="torch.compile puts the C forwarders into graphs as the torch functions they replace"))
    for owner, name, pin in device_functions():
        strip = pin and not target.pinned_memory
        reference = (owner, name) if fast else None
        out.append(Patch(owner, name, functools.partial(_factory, strip_pin_memory=strip, accelerate=reference),
                         recording=_recording_factory(strip, accelerate=reference)))
    for name in _legacy_names():
        out.append(Patch("torch.cuda", name, _legacy_type(name, target), kind=EMULATED,
                         note="legacy type built on the target"))
    if policy is not None:
        out = _with_float64_policy(out, policy)
    return out


def _with_float64_policy(out, policy):
    """Put the float64 layer around the records that send tensors to the target."""
    layered = []
    for record in out:
        outer = None
        if record.owner in ("torch", "torch.fft") and record.make.__class__ is functools.partial:
            outer = _narrow_factory(record.name, policy)
        elif record.target == "torch.Tensor.to":
            outer = _narrow_to(policy)
        elif record.target == "torch.Tensor.cuda":
            outer = _narrow_cuda(policy)
        elif record.name == "load":
            outer = _narrow_load(policy)
        # The float64 layer sits above the wrapper, so the report wraps the layered result instead of
        # using the wrapper's recording variant (whose caller frame would be the layer's).
        layered.append(record if outer is None else dataclasses.replace(record, make=_compose(outer, record.make),
                                                                         recording=None))
    return layered


def apply_patches():
    """Apply the device area (fenced: a second call changes nothing)."""
    return REGISTRY.apply_area(AREA, records())
