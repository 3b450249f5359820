"""The migration report: which lines of the program torchdevice redirected.

Off by default. ``TORCHDEVICE_REPORT=1`` (stderr), ``TORCHDEVICE_REPORT=path.json``
or ``torchdevice run --report PATH|-`` turn it on; docs/report.md documents the
output and the JSON schema.

How it stays free when off: the registry (core/patch.py) calls ``hook`` on each
replacement as it applies it, and only when the report is on. The hook wraps
the replacement in a recorder; when the report is off, this module is never
imported and the very objects the area modules built are installed.

How it stays cheap when on: the hottest wrappers (factories, ``Tensor.to``,
``Tensor.cuda``) have a recording variant of their own (``Patch.recording``):
the hook builds it instead of stacking a recorder, so a call runs one Python
frame, and the device argument the wrapper maps anyway is what is recorded. It
reads the caller's frame (``sys._getframe``), looks the caller's instruction
offset up in the API's own table, checks the cached code object and the device
argument by identity, and advances an ``itertools.count`` (atomic in CPython);
anything else goes to ``_Site.seen``. Other replacements get a recorder around
them, which first extracts what the call asked for (a CUDA device spec, through
a small cache; calls that ask for nothing CUDA cost one extraction), then does
the same with the asked value. On a mismatch a second table keyed by
``(id(code), offset, asked)`` decides. Only
the first call from a site classifies frames (core/sites.py) and walks the stack
to the user's own frame when torch called on the user's behalf (``model.cuda()``
calling ``Tensor.cuda`` per parameter). Line numbers are computed at exit.

Memory is bounded: one counter per distinct call site + API + asked value, at
most ``MAX_SITES`` of them; further new sites are counted as ``dropped``.

Several processes: the first process that turns the report on (the root)
creates a spool directory and exports its path in ``_TORCHDEVICE_REPORT_SPOOL``.
Every process started below it with the report on (DataLoader workers, fork or
spawn; torchrun ranks, whose launcher is the root; plain subprocesses) writes
its records there when it exits; the root merges them into one report when it
exits, after multiprocessing has joined its children.

What is recorded: calls that asked for CUDA (a ``device``, ``device_ids``,
``output_device``, ``pin_memory_device``, ``map_location`` or ``backend``
argument naming CUDA/NCCL, ``pin_memory=True``, ``Tensor.cuda``,
``torch.device("cuda")``, legacy ``torch.cuda.FloatTensor`` types), every call
of a patched ``torch.cuda.*`` (or ``torch.backends.cuda*``) API and of
``Tensor.pin_memory`` made directly by the program, and calls of UNSUPPORTED
APIs, recorded with their error before it propagates.
"""
import functools
import inspect
import itertools
import json
import os
import sys
import tempfile
import threading
import types
import uuid

from . import sites
from .patch import MISSING, UNSUPPORTED

SCHEMA = "torchdevice.report/1"
SPOOL_ENV = "_TORCHDEVICE_REPORT_SPOOL"
DEST_ENV = "_TORCHDEVICE_REPORT_DEST"  # where the root of SPOOL_ENV writes ("-" or an absolute path)
MAX_SITES = 10000
_MISS = object()
_NULL = itertools.count()  # counter for calls that are not recorded
_lock = threading.Lock()

# Parameters whose value says which device or backend a call asked for.
_DEVICE_PARAMS = ("device", "device_ids", "output_device", "pin_memory_device")
_CUDA_OWNERS = ("torch.cuda", "torch.backends.cuda", "torch.backends.cudnn")


class _Api:
    """One wrapped API: its display name, what it runs on, its own site table."""

    __slots__ = ("name", "kind", "note", "used", "table", "fast", "direct_only", "__weakref__")

    def __init__(self, name, kind, note, used, direct_only):
        self.name = name
        self.kind = kind
        self.note = note
        self.used = used
        self.direct_only = direct_only
        self.table = {}  # (id(caller code), instruction offset, asked) -> counter
        # instruction offset -> (caller code, asked, counter): the last site seen
        # at that offset, checked by identity (cheaper than building a tuple key)
        self.fast = {}


class _State:
    def __init__(self, dest, target):
        self.dest = dest  # "-" (stderr), an absolute path, or None in a child
        self.target = target
        self.pid = os.getpid()
        self.root_pid = self.pid
        self.spool = None
        self.written = False
        self.writing = False      # _finish is running (a SIGTERM then waits for it)
        self.term_pending = False  # a SIGTERM arrived while writing: re-raised when done
        self.live = None  # a child's marker file in the spool, once it recorded a call
        self.umask = 0o022
        self.program = {}  # argv/program/argv_omitted, read when the report started in this process
        self.entries = {}  # (user code, offset, api, asked) -> counter
        self.via = {}      # same key -> library function the user called, or None
        self.errors = {}   # same key -> first line of the error (UNSUPPORTED)
        self.dropped = 0

    @property
    def is_root(self):
        return self.pid == self.root_pid and self.dest is not None

    def clear(self):
        self.entries.clear()
        self.via.clear()
        self.errors.clear()
        self.dropped = 0


_state = None
_apis = []
_SPEC_CACHE = {}  # raw device spec -> "cuda"/"cuda:N", or None when it names no CUDA device
_SPEC_CACHE_LIMIT = 1024
# Types of device arguments that may be held by the caches (immutable values;
# torch.device and torch.dtype are added when the first hook runs, torch being
# imported then). Anything else (a tensor passed to Tensor.to) is never kept alive.
_HOLDABLE = {str, int, type(None)}
_KEEP = {}  # id(code) -> code, for the code objects the API tables are keyed by


class _Token:
    """Weak-referenceable anchor for multiprocessing.util.register_after_fork."""


_TOKEN = _Token()


# -- life cycle -------------------------------------------------------------------------
def start(config, target):
    """Turn recording on for this process (idempotent); return the registry hook."""
    global _state
    with _lock:
        if _state is None:
            _state = _State(None, target)
            _state.umask = _umask()
            _state.program = _program_info()  # now: runpy restores sys.argv and __main__ before exit
            dest = config.report if config.report == "-" else os.path.abspath(config.report)
            spool = os.environ.get(SPOOL_ENV)
            if spool and os.path.isdir(spool) and os.environ.get(DEST_ENV) == dest:
                _state.spool = spool  # a process below a root: write to its spool at exit
            else:
                # The first process, or one that asked for another destination than its root
                # (``torchdevice run --report other.json`` below a reporting program): its own report.
                _state.dest = dest
                _state.spool = tempfile.mkdtemp(prefix="torchdevice-report-")
                os.environ[SPOOL_ENV] = _state.spool
                os.environ[DEST_ENV] = dest
                _absolute_in_environment(config.report, dest)
            _arm_exit()
        else:
            _state.target = target
    return hook


def _absolute_in_environment(report, dest):
    """Make an inherited relative ``TORCHDEVICE_REPORT`` absolute, so that children started in
    another working directory name the same destination (and join this report)."""
    from .config import REPORT

    value = os.environ.get(REPORT)
    if dest != "-" and value is not None and os.path.expanduser(value.strip()) == report and value != dest:
        os.environ[REPORT] = dest


def _umask():
    """The process umask, read without changing it where the system tells (Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _arm_exit():
    import multiprocessing.util as mp_util

    # exitpriority < 0: multiprocessing runs it after joining (or terminating)
    # its children, so their spool files are there to merge.
    mp_util.Finalize(None, _finish, exitpriority=-1000)
    mp_util.register_after_fork(_TOKEN, _after_mp_fork)
    if not getattr(_arm_exit, "at_fork", False):
        os.register_at_fork(after_in_child=_after_fork)
        _arm_exit.at_fork = True


def _after_fork():
    """In a forked child: start with empty tables and report to the spool."""
    global _lock
    _lock = threading.Lock()
    state = _state
    if state is None:
        return
    state.pid = os.getpid()
    state.written = state.writing = state.term_pending = False
    state.live = None
    state.clear()
    for api in _apis:
        api.table.clear()
        api.fast.clear()


def _after_mp_fork(token):
    # multiprocessing clears inherited finalizers in its children; re-arm ours.
    import multiprocessing.util as mp_util

    mp_util.Finalize(None, _finish, exitpriority=-1000)


def _finish():
    """At exit: a child writes its spool file; the root merges and writes the report."""
    state = _state
    if state is None or state.written:
        return
    state.written = state.writing = True
    try:
        if state.is_root:
            _write_report(state)
        else:
            _write_spool(state)
    except Exception as exc:  # never turn a clean exit into a failure
        try:
            sys.stderr.write(f"torchdevice: could not write the migration report: {type(exc).__name__}: {exc}\n")
        except Exception:
            pass
    finally:
        state.writing = False
    if state.term_pending:
        _die_by_sigterm()


# -- children that are terminated -------------------------------------------------------
# A child ends without running its exit finalizers when it is terminated: ``with Pool() as
# pool:`` ends with ``Pool.terminate()``; multiprocessing terminates daemonic children still
# alive at exit; torchrun terminates the other ranks when one fails. So a child that has
# recorded a call (1) leaves a marker file in the spool, removed when its records are
# written, so that the root can say which processes' records are missing, and (2) catches
# SIGTERM, if nothing else handles it, to write its records before it dies of the signal.
def _child_recorded(state):
    """First record of a child process: leave its marker and catch SIGTERM (once per process)."""
    name = os.path.join(state.spool, f"{state.pid}-{uuid.uuid4().hex[:8]}")
    state.live = name
    try:
        _write_json(name + ".live", _process_info(state, "child"), state.umask)
    except OSError:
        pass
    _catch_sigterm()


def _catch_sigterm():
    import signal

    if not hasattr(signal, "SIGTERM") or threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # not the main thread of the main interpreter
        pass


def _on_sigterm(signum, frame):
    """Write this child's records, then die of SIGTERM as the default action would."""
    state = _state
    if state is not None and state.pid == os.getpid():
        if state.writing:
            state.term_pending = True  # let the write in progress finish first
            return
        global _signal_write
        _signal_write = True
        try:
            _finish()
        finally:
            _signal_write = False
    _die_by_sigterm()


def _die_by_sigterm():
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


_signal_write = False  # set while a signal handler writes: the tables' lock may be held by the interrupted code


def discard():
    """Stop this process from writing anything at exit (tests, benchmarks).

    In the root process the spool directory is removed as well.
    """
    import shutil

    state = _state
    if state is None:
        return
    state.written = True
    if state.is_root and state.spool:
        shutil.rmtree(state.spool, ignore_errors=True)
        if os.environ.get(SPOOL_ENV) == state.spool:
            del os.environ[SPOOL_ENV]


# -- the registry hook ----------------------------------------------------------------
def hook(record, owner, raw, replacement, original=None):
    """Wrap ``replacement`` in a recorder (called by the registry at apply time).

    A record with a ``recording`` variant gets that variant instead (built from
    ``original``), when the report reads this API's ``device`` argument only.
    """
    from . import device as _device

    if len(_HOLDABLE) == 3:
        import torch

        _HOLDABLE.update((torch._C.device, torch.dtype))
    target = _device.current()
    used = "" if target is None else str(target.device)
    is_class = isinstance(owner, type)
    api_name = f"{owner.__name__}.{record.name}" if is_class else record.target
    cuda_owner = record.owner.startswith(_CUDA_OWNERS)
    # A C forwarder (ops/device/redirect.py) is read through the Python wrapper it runs.
    function = getattr(replacement, "_torchdevice_python", replacement)
    if isinstance(replacement, type):
        method = False
    elif isinstance(function, (types.FunctionType, types.BuiltinFunctionType, functools.partial)):
        method = is_class and not isinstance(raw, (staticmethod, classmethod))
    else:
        return replacement  # constants, descriptors, instances: nothing to count
    if record.target in _REGIONS and record.kind != UNSUPPORTED and not isinstance(replacement, type):
        return _wrap_region(replacement, record, used)
    special = _SPECIAL.get(api_name)
    always = special is None and (cuda_owner or record.kind == UNSUPPORTED)
    plan = special or _extractor(function, method, always)
    direct_only = (always or (plan is not None and plan[0] == "const")) and record.kind != UNSUPPORTED
    api = _Api(api_name, record.kind, record.note, used, direct_only=direct_only)
    if plan is None:
        return replacement  # takes no device and is not a CUDA API: never a redirection
    _apis.append(api)
    recording = getattr(record, "recording", None)
    if (recording is not None and original is not None and original is not MISSING and api.kind != UNSUPPORTED
            and (plan[0] == "func" or (plan[0] == "slot" and plan[1][1] == "device"))):
        default = plan[1][2] if plan[0] == "slot" else None
        fused = recording(original, _Site(api, default, _plan_function(plan)))
        fused._torchdevice_recorder = api
        fused.__wrapped__ = replacement  # what is installed with the report off
        return fused
    try:
        if isinstance(replacement, type):
            return _wrap_class(replacement, api, _plan_function(plan), record, is_class)
        return _wrap_function(replacement, api, plan)
    except TypeError:
        return replacement  # a type that cannot be subclassed: left as is


# -- what a call asked for ----------------------------------------------------------------
def _norm_device(spec):
    """'cuda' / 'cuda:N' for a CUDA device spec, else None."""
    kind = type(spec)
    if kind is str:
        return spec if spec == "cuda" or spec.startswith("cuda:") else None
    if kind is int:
        return f"cuda:{spec}" if spec >= 0 else None
    if getattr(spec, "type", None) == "cuda" and kind.__name__ == "device":
        return str(spec)
    return None


def _asked_device(spec):
    try:
        asked = _SPEC_CACHE.get(spec, _MISS)
    except TypeError:  # unhashable
        return _describe_unhashable(spec)
    if asked is _MISS:
        asked = _norm_device(spec)
        if len(_SPEC_CACHE) < _SPEC_CACHE_LIMIT and type(spec) in _HOLDABLE:
            _SPEC_CACHE[spec] = asked
    return asked


def _describe_unhashable(spec):
    if isinstance(spec, (list, tuple)):
        names = [_norm_device(item) if not isinstance(item, (list, tuple, dict)) else None for item in spec]
        if any(names):
            return "[" + ", ".join(n or repr(item) for n, item in zip(names, spec)) + "]"
    if isinstance(spec, dict):
        names = [_norm_device(v) for v in spec.values() if isinstance(v, (str, int))]
        names += [_norm_device(k) for k in spec if isinstance(k, (str, int))]
        if any(names):
            return "map " + ", ".join(f"{k}->{v}" for k, v in spec.items())
    return None


def _asked_pin(value):
    return "pin_memory=True" if value is True else None


def _asked_backend(value):
    if isinstance(value, str) and "nccl" in value.lower():
        return value
    return None


def _extractor(replacement, method, always):
    """How to read what a call asked for, from the public signature.

    Returns a plan: ``("kw", None)`` (keyword ``device`` only), ``("const", None)``
    (nothing to read: a CUDA API call as such), ``("slot", (index, name,
    default))`` (one device parameter) or ``("func", extract)``; None when the
    API takes no device and is not a CUDA API (never a redirection).
    """
    try:
        params = list(inspect.signature(replacement).parameters.values())
    except (TypeError, ValueError):  # builtins without a text signature: keyword device only
        params = None
    if method and params:
        params = params[1:]
    default = "" if always else None
    if params is None:
        return ("slot", (1 << 30, "device", default))
    found = []
    for index, param in enumerate(params):
        if param.name in _DEVICE_PARAMS or param.name in ("backend", "pin_memory"):
            positional = param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD)
            reader = {"backend": _asked_backend, "pin_memory": _asked_pin}.get(param.name, _asked_device)
            found.append((param.name, (index + method) if positional else None, reader))
        elif param.kind is param.VAR_KEYWORD and not found:
            found.append(("device", None, _asked_device))
    if not found:
        return ("const", None) if always else None
    if len(found) == 1 and found[0][2] is _asked_device:
        name, index, _ = found[0]
        return ("slot", (1 << 30 if index is None else index, name, default))

    def extract(args, kwargs):
        for name, index, reader in found:
            if index is not None and len(args) > index:
                value = args[index]
            elif kwargs:
                value = kwargs.get(name)
            else:
                continue
            if value is not None:
                asked = reader(value)
                if asked is not None:
                    return asked
        return default
    return ("func", extract)


def _plan_function(plan):
    """The plan as a plain ``extract(args, kwargs)`` function."""
    how, data = plan
    if how == "func":
        return data
    if how == "const":
        return lambda args, kwargs: ""
    index, name, default = data

    def extract(args, kwargs):
        spec = args[index] if len(args) > index else (kwargs.get(name) if kwargs else None)
        if spec is None:
            return default
        asked = _asked_device(spec)
        return default if asked is None else asked
    return extract


def _extract_type(args, kwargs):
    dtype = args[1] if len(args) > 1 else (kwargs.get("dtype") if kwargs else None)
    if isinstance(dtype, str):
        return dtype if dtype.startswith("torch.cuda.") else None
    name = getattr(dtype, "_torchdevice_cpu_name", None)
    return None if name is None else "torch.cuda." + name[len("torch."):]


def _extract_device_type(args, kwargs):
    # torch.device("cuda"), torch.device("cuda", 1), torch.device(type="cuda", index=1)
    if args:
        first = args[0]
        index = args[1] if len(args) > 1 else (kwargs.get("index") if kwargs else None)
    elif kwargs:
        first, index = kwargs.get("type"), kwargs.get("index")
    else:
        return None
    if isinstance(first, str):
        if first == "cuda" and isinstance(index, int):
            return f"cuda:{index}"
        return _asked_device(first)
    return _asked_device(first) if type(first) is int else None


def _extract_generator(args, kwargs):
    spec = args[0] if args else (kwargs.get("device") if kwargs else None)
    return None if spec is None else _asked_device(spec)


def _extract_load(args, kwargs):
    location = args[1] if len(args) > 1 else (kwargs.get("map_location") if kwargs else None)
    if location is None:
        return "saved locations"  # CUDA-tagged storages in the file go to the target
    if isinstance(location, (str, int)) or type(location).__name__ == "device":
        return _asked_device(location)
    if isinstance(location, dict):
        return _describe_unhashable(location)
    return None  # a callable decides itself


_SPECIAL = {
    # Tensor.to(self, device=None, dtype=None, ...), .to(other), .to(dtype)
    "Tensor.to": ("slot", (1, "device", None)),
    # Tensor.cuda(self, device=None, ...) and Storage.cuda: always CUDA
    "Tensor.cuda": ("slot", (1, "device", "cuda")),
    "UntypedStorage.cuda": ("slot", (1, "device", "cuda")),
    "TypedStorage.cuda": ("slot", (1, "device", "cuda")),
    "Tensor.type": ("func", _extract_type),
    # Tensor.pin_memory(): a no-op here; only meaningful for CUDA code, so every direct call counts
    "Tensor.pin_memory": ("const", None),
    "torch.device": ("func", _extract_device_type),
    "torch.Generator": ("func", _extract_generator),
    "torch.load": ("func", _extract_load),
    "torch.serialization.load": ("func", _extract_load),
}


# Context managers whose CUDA regions run on the target, listed under the name the program
# used: record target -> (display name of the class torch.cuda.amp derives from it, its
# torch.cuda.amp subclass's module and name). ``torch.autocast("cuda")`` and
# ``torch.amp.autocast("cuda")`` are one class; ``torch.cuda.amp.autocast()`` subclasses it.
_REGIONS = {
    "torch.amp.autocast_mode.autocast.__init__": ("torch.autocast", "torch.cuda.amp.autocast_mode", "autocast",
                                                  "torch.cuda.amp.autocast"),
}


def _wrap_region(fn, record, used):
    """The recorder of an autocast-like ``__init__(self, device_type, ...)``: counts "cuda" regions.

    The API is named after the class the program constructed: the legacy
    ``torch.cuda.amp`` subclass, or the class itself (a subclass of the
    program's own counts as the class it derives from).
    """
    name, legacy_module, legacy_name, legacy_display = _REGIONS[record.target]
    plain = _Api(name, record.kind, record.note, used, direct_only=False)
    legacy = _Api(legacy_display, record.kind, record.note, used, direct_only=False)
    _apis.extend((plain, legacy))
    getframe = sys._getframe
    slow_next = _slow_next

    def recorder(self, *args, **kwargs):
        device_type = args[0] if args else kwargs.get("device_type")
        if device_type == "cuda":
            module = sys.modules.get(legacy_module)
            legacy_class = getattr(module, legacy_name, None) if module is not None else None
            api = legacy if legacy_class is not None and isinstance(self, legacy_class) else plain
            frame = getframe(1)
            node = api.fast.get(frame.f_lasti)
            if node is not None and node[0] is frame.f_code:
                next(node[2])
            else:
                slow_next(api, frame, "cuda")
        return fn(self, *args, **kwargs)
    functools.update_wrapper(recorder, fn)
    recorder._torchdevice_recorder = plain
    return recorder


# -- recording ----------------------------------------------------------------------------
def _site_key(api, frame, asked):
    """(entry key, via, cacheable) for a call from ``frame``; key None: do not record."""
    code = frame.f_code
    kind = sites.classify(code, frame.f_globals)
    if kind == sites.USER:
        return (code, frame.f_lasti, api, asked), None, True
    if kind == sites.LIBRARY and api.direct_only:
        return None, None, True  # torch calling its own CUDA API: not the program's call
    user, via = sites.user_site(frame)
    if user is None:
        return None, None, False
    return (user.f_code, user.f_lasti, api, asked), via, False


def _counter(api, frame, asked):
    """Slow path: (counter, cacheable) for a call not seen from this instruction before.

    ``cacheable``: the counter depends only on the calling instruction (and the
    asked value), not on the frames above it, so the fast tables may keep it.
    ``api.table`` maps a user site (id(code), offset, asked) to its counter; a
    call that torch made on the user's behalf walks the stack to the user's
    frame and finds the counter there.
    """
    state = _state
    if state is None:
        return _NULL, False
    code = frame.f_code
    kind = sites.classify(code, frame.f_globals)
    below = None
    if kind == sites.USER:
        user, cacheable = frame, True
    elif kind == sites.LIBRARY and api.direct_only:
        # torch calling its own CUDA API: not the program's call, whoever called torch
        _KEEP[id(code)] = code
        api.table[(id(code), frame.f_lasti, asked)] = _NULL
        return _NULL, True
    else:
        user, below = sites.user_frame(frame)
        if user is None:
            return _NULL, False
        cacheable = False
        counter = api.table.get((id(user.f_code), user.f_lasti, asked))
        if counter is not None:
            return counter, False
    key = (user.f_code, user.f_lasti, api, asked)
    with _lock:
        counter = state.entries.get(key)
        if counter is None:
            if len(state.entries) >= MAX_SITES:
                state.dropped += 1
                return _NULL, False
            counter = state.entries[key] = itertools.count()
            state.via[key] = None if below is None else sites.function_name(below)
    if state.live is None and state.spool and not state.is_root:
        _child_recorded(state)
    # Keyed by id(): hashing a code object hashes its contents. _KEEP holds
    # the code object, so that its id cannot be reused while cached.
    _KEEP[id(user.f_code)] = user.f_code
    api.table[(id(user.f_code), user.f_lasti, asked)] = counter
    return counter, cacheable


def _slow_next(api, frame, asked):
    """Count a call whose (code, offset, asked) is not the one cached for its offset."""
    counter = api.table.get((id(frame.f_code), frame.f_lasti, asked))
    cacheable = True
    if counter is None:
        counter, cacheable = _counter(api, frame, asked)
    if cacheable and len(api.fast) < MAX_SITES:
        api.fast[frame.f_lasti] = (frame.f_code, asked, counter)
    next(counter)


class _Site:
    """What a recording variant of a wrapper (``Patch.recording``) counts with.

    Per call the variant does, inline::

        frame = getframe(1)
        code, seen, counter = fast_get(frame.f_lasti, EMPTY)
        if code is frame.f_code and seen is spec:
            next(counter)
        else:
            site.seen(frame, spec)

    where ``spec`` is the call's ``device`` argument as given (None when absent).
    ``fast`` maps an instruction offset to the last (code, spec, counter) seen
    there; calls whose spec names no CUDA device get a counter that counts nothing.
    Calls of other shapes go to ``site.seen_call(frame, args, kwargs)``, which
    reads them as the stacked recorder would.
    """

    __slots__ = ("api", "fast", "default", "extract")
    EMPTY = (None, None, None)

    def __init__(self, api, default, extract):
        self.api = api
        self.fast = api.fast
        self.default = default  # what a call without a CUDA spec asked for (Tensor.cuda: "cuda")
        self.extract = extract  # extract(args, kwargs) -> asked or None, for seen_call

    def seen_call(self, frame, args, kwargs):
        """Count a call from its arguments (no fast-table entry: the shapes vary)."""
        asked = self.extract(args, kwargs)
        if asked is not None:
            _slow_next(self.api, frame, asked)

    def seen(self, frame, spec):
        """Count a call that ``fast`` does not answer, and remember its site when that is exact."""
        api = self.api
        asked = None if spec is None else _asked_device(spec)
        if asked is None:
            asked = self.default
        cacheable = True
        if asked is None:
            counter = _NULL
        else:
            counter = api.table.get((id(frame.f_code), frame.f_lasti, asked))
            if counter is None:
                counter, cacheable = _counter(api, frame, asked)
        if cacheable and type(spec) in _HOLDABLE and len(api.fast) < MAX_SITES:
            api.fast[frame.f_lasti] = (frame.f_code, spec, counter)
        next(counter)


def _record_error(api, frame, asked, exc):
    state = _state
    if state is None:
        return
    next(_counter(api, frame, asked)[0])
    key, _, _ = _site_key(api, frame, asked)
    if key is not None and key in state.entries:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        state.errors.setdefault(key, lines[0][:300])


def _value(counter):
    """How many times ``counter`` was advanced, without advancing it ("count(N)")."""
    return int(repr(counter)[6:-1])


def _wrap_function(fn, api, plan):
    """The recorder around ``fn``. Each template inlines the common case."""
    getframe = sys._getframe
    fast_get = api.fast.get
    slow_next = _slow_next
    spec_get = _SPEC_CACHE.get
    asked_device = _asked_device
    miss = _MISS
    how, data = plan

    if api.kind == UNSUPPORTED:
        extract = _plan_function(plan)

        def recorder(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                _record_error(api, getframe(1), extract(args, kwargs) or "", exc)
                raise
    elif how == "const":
        def recorder(*args, **kwargs):
            frame = getframe(1)
            node = fast_get(frame.f_lasti)
            if node is not None and node[0] is frame.f_code:
                next(node[2])
            else:
                slow_next(api, frame, "")
            return fn(*args, **kwargs)
    elif how == "slot":
        index, name, default = data

        def recorder(*args, **kwargs):
            if len(args) > index:
                spec = args[index]
            elif kwargs:
                spec = kwargs.get(name)
            else:
                spec = None
            if spec is None:
                asked = default
            else:
                try:
                    asked = spec_get(spec, miss)
                except TypeError:
                    asked = miss
                if asked is miss:
                    asked = asked_device(spec)
                if asked is None:
                    asked = default
            if asked is not None:
                frame = getframe(1)
                node = fast_get(frame.f_lasti)
                if node is not None and node[0] is frame.f_code and node[1] == asked:
                    next(node[2])
                else:
                    slow_next(api, frame, asked)
            return fn(*args, **kwargs)
    else:
        extract = data

        def recorder(*args, **kwargs):
            asked = extract(args, kwargs)
            if asked is not None:
                frame = getframe(1)
                node = fast_get(frame.f_lasti)
                if node is not None and node[0] is frame.f_code and node[1] == asked:
                    next(node[2])
                else:
                    slow_next(api, frame, asked)
            return fn(*args, **kwargs)
    functools.update_wrapper(recorder, fn)
    recorder._torchdevice_recorder = api
    return recorder


def _wrap_class(cls, api, extract, record, owner_is_class):
    """A recording subclass of ``cls``: counts constructions, answers isinstance for cls."""
    meta = type(cls)
    meta_call = meta.__call__
    getframe = sys._getframe
    fast_get = api.fast.get
    slow_next = _slow_next

    if api.kind == UNSUPPORTED:
        def __call__(klass, *args, **kwargs):
            try:
                return meta_call(klass, *args, **kwargs)
            except Exception as exc:
                _record_error(api, getframe(1), extract(args, kwargs) or "", exc)
                raise
    else:
        def __call__(klass, *args, **kwargs):
            asked = extract(args, kwargs)
            if asked is not None:
                frame = getframe(1)
                node = fast_get(frame.f_lasti)
                if node is not None and node[0] is frame.f_code and node[1] == asked:
                    next(node[2])
                else:
                    slow_next(api, frame, asked)
            return meta_call(klass, *args, **kwargs)

    def __instancecheck__(klass, obj):
        if "_torchdevice_recorder" in klass.__dict__:
            return isinstance(obj, klass.__bases__[0])
        return meta.__instancecheck__(klass, obj)

    def __subclasscheck__(klass, sub):
        if "_torchdevice_recorder" in klass.__dict__:
            return sub is klass or issubclass(sub, klass.__bases__[0])
        return meta.__subclasscheck__(klass, sub)

    recording_meta = type(meta)(f"_Recording{meta.__name__}", (meta,), {
        "__call__": __call__, "__instancecheck__": __instancecheck__,
        "__subclasscheck__": __subclasscheck__, "__module__": __name__})
    namespace = {
        # Pickle finds instances' class by this name: the patched location.
        "__module__": cls.__module__ if owner_is_class else record.owner,
        "__qualname__": cls.__qualname__ if owner_is_class else record.name,
        "__doc__": cls.__doc__,
        "_torchdevice_recorder": api,
    }
    return recording_meta(cls.__name__, (cls,), namespace)


# -- output ----------------------------------------------------------------------------------
def _line_of(code, offset):
    lines = getattr(code, "co_lines", None)
    if lines is not None:
        for start, end, line in lines():
            if start <= offset < end and line is not None:
                return line
    import dis

    line = code.co_firstlineno
    for start, start_line in dis.findlinestarts(code):
        if start > offset:
            break
        if start_line is not None:
            line = start_line
    return line


def _process_info(state, role):
    """One entry of ``processes``: the program, never its arguments (they may hold secrets)."""
    rank = os.environ.get("RANK")
    info = {"pid": state.pid, "role": role, "rank": int(rank) if rank and rank.isdigit() else None}
    info.update(state.program or _program_info())
    return info


def _program_info():
    argv = list(sys.argv)
    return {"argv": argv[:1], "program": _program(argv), "argv_omitted": max(len(argv) - 1, 0)}


def _program(argv):
    """What ran: ``-m module`` for ``python -m``, ``-c`` for ``python -c``, else the script as given."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None)
    if isinstance(name, str) and name not in ("__main__", "__mp_main__"):
        return f"-m {name[:-len('.__main__')] if name.endswith('.__main__') else name}"
    return argv[0] if argv else ""


def snapshot(state=None):
    """This process's records as report rows (not yet merged with other processes)."""
    state = state or _state
    rows = {}
    if state is None:
        return {"calls": [], "unsupported": [], "dropped": 0}
    items = _items(state)
    for (code, offset, api, asked), count, via, error in items:
        if count == 0:
            continue
        row_key = (code.co_filename, _line_of(code, offset), api.name, asked)
        row = rows.get(row_key)
        if row is None:
            row = rows[row_key] = {
                "file": code.co_filename, "line": row_key[1],
                "function": getattr(code, "co_qualname", code.co_name),
                "api": api.name, "kind": api.kind, "asked": asked, "used": api.used,
                "count": 0, "via": via, "note": api.note, "processes": 1,
            }
            if api.kind == UNSUPPORTED:
                row["used"] = "error"
                row["error"] = error or ""
        row["count"] += count
    out = list(rows.values())
    return {
        "calls": [r for r in out if r["kind"] != UNSUPPORTED],
        "unsupported": [r for r in out if r["kind"] == UNSUPPORTED],
        "dropped": state.dropped,
    }


def _items(state):
    """(key, count, via, error) of every entry, read under the tables' lock.

    From a signal handler the lock may be held by the very code the signal
    interrupted: then the tables are read without it (the interrupted thread is
    paused between two bytecodes, so they are consistent; another thread that
    changes them meanwhile makes the read start again).
    """
    def read():
        return [(key, _value(counter), state.via.get(key), state.errors.get(key))
                for key, counter in list(state.entries.items())]
    if not _signal_write:
        with _lock:
            return read()
    locked = _lock.acquire(timeout=0.5)
    try:
        for _ in range(100):
            try:
                return read()
            except RuntimeError:  # changed size during the read
                continue
        return []
    finally:
        if locked:
            _lock.release()


def _merge(into, part):
    index = {(r["file"], r["line"], r["api"], r["asked"]): r for r in into}
    for row in part:
        key = (row["file"], row["line"], row["api"], row["asked"])
        if key in index:
            index[key]["count"] += row["count"]
            index[key]["processes"] += row.get("processes", 1)
        else:
            index[key] = dict(row)
            into.append(index[key])


def _sort(rows):
    rows.sort(key=lambda r: (-r["count"], r["file"], r["line"], r["api"], r["asked"]))
    return rows


def _write_spool(state):
    if not state.spool or not os.path.isdir(state.spool):
        return  # the root already finished; nothing to add to
    data = snapshot(state)
    data["process"] = _process_info(state, "child")
    base = state.live or os.path.join(state.spool, f"{state.pid}-{uuid.uuid4().hex[:8]}")
    _write_json(base + ".json", data, state.umask)
    if state.live:
        try:
            os.unlink(state.live + ".live")
        except OSError:
            pass


def _write_json(path, data, umask, indent=None):
    """Write ``data`` to ``path`` atomically, through a temporary file created securely next to it.

    ``mkstemp`` opens a new file with a random name (``O_EXCL``: a file or
    symlink planted in advance is never opened); ``os.replace`` renames it over
    ``path`` (a symlink at ``path`` is replaced, not followed). On any failure
    the temporary file is removed and the error propagates. The file gets the
    mode ``open()`` would give a new file (0666 less the umask).
    """
    directory = os.path.dirname(path) or os.curdir
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), 0o666 & ~umask)
            json.dump(data, f, indent=indent)
            if indent is not None:
                f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def build(state=None):
    """The merged report of this process tree (the root's view), as a dict."""
    import shutil

    state = state or _state
    own = snapshot(state)
    calls, unsupported = [], []
    _merge(calls, own["calls"])
    _merge(unsupported, own["unsupported"])
    processes = [_process_info(state, "main")]
    dropped = own["dropped"]
    lost = 0
    spool = state.spool
    if spool and os.path.isdir(spool):
        names = set(os.listdir(spool))
        for name in sorted(names):
            if name.endswith(".live") and name[:-5] + ".json" not in names:
                # A child that recorded calls and ended (or still runs) without writing them.
                part = _read_json(os.path.join(spool, name))
                info = part if isinstance(part, dict) else {}
                info["lost"] = True
                processes.append(info)
                lost += 1
                continue
            if not name.endswith(".json"):
                continue
            part = _read_json(os.path.join(spool, name))
            if not isinstance(part, dict):
                continue
            _merge(calls, part.get("calls", []))
            _merge(unsupported, part.get("unsupported", []))
            dropped += part.get("dropped", 0)
            if part.get("process"):
                processes.append(part["process"])
        if state.is_root:
            shutil.rmtree(spool, ignore_errors=True)
            if os.environ.get(SPOOL_ENV) == spool:
                del os.environ[SPOOL_ENV]
    target = state.target
    import torch

    return {
        "schema": SCHEMA,
        "torchdevice": _version(),
        "torch": torch.__version__,
        "target": None if target is None else str(target.device),
        "reason": None if target is None else target.reason,
        "processes": processes,
        "calls": _sort(calls),
        "unsupported": _sort(unsupported),
        "dropped": dropped,
        "lost": lost,
    }


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _version():
    from .. import __version__

    return __version__


def render_text(report, cwd=None):
    """The human table printed on stderr."""
    calls, unsupported = report["calls"], report["unsupported"]
    nproc = len(report["processes"])
    where = f"{nproc} processes" if nproc > 1 else "1 process"
    lines = [f"torchdevice migration report: {len(calls)} call site(s) ran on {report['target']} "
             f"instead of CUDA ({where}; target: {report['reason']})"]
    if not calls and not unsupported:
        lines = [f"torchdevice migration report: nothing was redirected ({report['reason']})"]
        if report.get("lost"):
            lines = [f"torchdevice migration report: no call site recorded ({report['reason']})"]
    header = ("count", "site", "api", "kind", "asked", "used")

    def table(rows, extra=None):
        cells = [header] + [(str(r["count"]), f"{sites.display_path(r['file'], cwd)}:{r['line']}", r["api"],
                             r["kind"], r["asked"] or "-", r["used"]) for r in rows]
        widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
        out = []
        for i, c in enumerate(cells):
            text = "  " + "  ".join(c[j].rjust(widths[j]) if j == 0 else c[j].ljust(widths[j])
                                    for j in range(len(header))).rstrip()
            out.append(text)
            if i and extra:
                note = extra(rows[i - 1])
                if note:
                    out.append("        " + note)
        return out
    if calls:
        lines += table(calls, lambda r: f"via {r['via']}" if r.get("via") else "")
    if unsupported:
        lines.append(f"unsupported calls hit: {len(unsupported)}")
        lines += table(unsupported, lambda r: r.get("error", ""))
    if report.get("lost"):
        lines.append(f"  ({report['lost']} process(es) recorded calls but ended without writing them "
                     f"(killed, or still running): their calls are missing above)")
    if report["dropped"]:
        lines.append(f"  ({report['dropped']} calls from further call sites were not recorded: "
                     f"more than {MAX_SITES} distinct sites)")
    return "\n".join(lines) + "\n"


def _write_report(state):
    report = build(state)
    if state.dest == "-":
        sys.stderr.write(render_text(report))
        sys.stderr.flush()
        return
    os.makedirs(os.path.dirname(state.dest), exist_ok=True)
    _write_json(state.dest, report, state.umask, indent=2)
