"""torch.accelerator, torch.get_device_module: the device-generic API tells the torch.cuda story.

Applied with area "cuda" (``records(target, cfg)`` joins ``cuda.records()``), and
only while the masquerade is on: with ``TORCHDEVICE_MASQUERADE=0`` torch.cuda
answers the truth, and so does torch.accelerator, untouched.

Libraries moved from ``torch.cuda.is_available()`` to
``torch.accelerator.current_accelerator()`` (accelerate >= 1.x decides its
device and distributed mode from it). On a CPU build that returns None while
``torch.cuda.is_available()`` answers True to user code, and every other
function raises "Cannot access accelerator device when none is available".
While redirecting, each public name of ``torch.accelerator`` answers user code
as on a CUDA machine by calling the public ``torch.cuda`` function CUDA's own
backend would reach (so the count, the selected index, the memory figures and
the streams are exactly the ones torch.cuda reports):

* ``current_accelerator()`` is ``torch.device("cuda")`` (``check_available=True``:
  the same while ``torch.cuda.is_available()`` is True); ``is_available`` and
  ``device_count`` are torch.cuda's;
* ``current_device_index`` / ``set_device_index`` / ``device_index(i)`` read and
  select the CUDA index through ``torch.cuda.current_device`` / ``set_device``;
  the deprecated ``*_idx`` aliases warn as torch's do;
* ``synchronize``, ``current_stream``, ``set_stream``, ``Graph`` and the memory
  functions are torch.cuda's (``get_memory_info`` is ``mem_get_info``);
  ``empty_host_cache`` has no pinned host memory to free on the target;
* ``get_device_capability()`` lists the dtypes the target allocates and
  converts (found once by trying each dtype of this torch on the target);
* ``torch.get_device_module()`` (no device) is ``torch.cuda``; a CUDA device gives
  ``torch.cuda`` to every caller (torch's ``fork_rng`` then forks the target generator).

The device argument follows torch's ``_get_device_index`` with CUDA as the
accelerator: an int is an index; a ``cuda`` device names its index (or the
selected one); another device type raises torch's ValueError, except the
target's own type, which names the selected index as it does for torch.cuda
(``x.device`` of a tensor on the target).

torch's own modules (and ``TORCHDEVICE_TRUTHFUL_MODULES``) get the real
functions, by the caller rule of ``torch.cuda.is_available``
(``core.device.caller_sees_truth``), so torch itself never looks for a CUDA
runtime. The names are read from the running torch (``torch.accelerator.__all__``
and the submodules that define them); a name without a behaviour here gets no
record, and ``torchdevice coverage`` lists it as unclassified. Where this torch
has no ``torch.accelerator`` (< 2.6) the records are skipped with that reason.
"""
import functools
import threading
import warnings

import torch

from ...core import device as _device
from ...core.patch import EMULATED, NOOP, REDIRECTED, Patch

OWNER = "torch.accelerator"
_CUDA = torch._C.device("cuda")


def _cuda():
    """The public torch.cuda module: its names are read at call time, when every area has applied."""
    return torch.cuda


def _deprecation(original):
    """The message of a ``typing_extensions.deprecated`` wrapper (torch's ``*_idx`` aliases), else None.

    ``deprecated`` marks both the wrapper and the function it wraps; only the
    wrapper (the one with ``__wrapped__``) warns.
    """
    message = getattr(original, "__deprecated__", None)
    return message if message and hasattr(original, "__wrapped__") else None


def _for_users(user_version, truthful):
    """make(): ``user_version`` for user code; torch itself (by the is_available rule) gets the original."""
    sees_truth = _device.caller_sees_truth

    def make(original):
        deprecation = _deprecation(original)

        def answer(*args, **kwargs):
            if sees_truth(truthful):
                return original(*args, **kwargs)
            if deprecation:
                warnings.warn(deprecation, FutureWarning, stacklevel=2)
            return user_version(*args, **kwargs)
        try:
            return functools.wraps(original)(answer)
        except (AttributeError, TypeError):
            return answer
    return make


def _class_for_users(build, truthful):
    """make() for a class name: a stand-in whose construction follows the caller rule.

    ``build(original)`` returns the class user code gets; torch's own code
    constructing the name gets the original class. ``isinstance`` checks accept both.
    """
    sees_truth = _device.caller_sees_truth

    def make(original):
        ours = build(original)

        class _StandIn(type):
            def __call__(cls, *args, **kwargs):
                if sees_truth(truthful):
                    return original(*args, **kwargs)
                return ours(*args, **kwargs)

            def __instancecheck__(cls, obj):
                return isinstance(obj, (original, ours))

            def __subclasscheck__(cls, sub):
                return sub is cls or issubclass(sub, (original, ours))

            def __getattr__(cls, name):
                return getattr(ours, name)

        return _StandIn(original.__name__, (), {"__module__": original.__module__, "__doc__": original.__doc__,
                                                "__qualname__": original.__qualname__})
    return make


# -- the device argument ------------------------------------------------------------------
def device_index_of(device, target_type, optional):
    """torch.accelerator's ``_get_device_index`` with CUDA as the accelerator (module docstring)."""
    if isinstance(device, int):
        return device
    if isinstance(device, str):
        device = torch._C.device(device)
    if isinstance(device, torch._C.device):
        if device.type == target_type:
            return _cuda().current_device()
        if device.type != "cuda":
            raise ValueError(f"{device.type} doesn't match the current accelerator {_CUDA}.")
        if device.index is not None:
            return device.index
        device = None
    if device is not None:
        raise TypeError(f"Expected a torch.device, str or int, but got: {type(device).__name__}")
    if not optional:
        raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{device}")
    return _cuda().current_device()


# -- what user code gets, name by name ------------------------------------------------------
def _current_accelerator(check_available=False):
    if check_available and not _cuda().is_available():
        return None
    return _CUDA


def _is_available():
    return _cuda().is_available()


def _device_count():
    return _cuda().device_count()


def _current_device_index():
    return _cuda().current_device()


def _set_device_index(target):
    def set_device_index(device, /):
        _cuda().set_device(device_index_of(device, target.type, optional=False))
    return set_device_index


def _with_device(target, cuda_name):
    """``torch.cuda.<cuda_name>(index)`` for the device the accelerator call names (None: the selected one)."""
    def call(device=None, /):
        return getattr(_cuda(), cuda_name)(device_index_of(device, target.type, optional=True))
    call.__name__ = cuda_name
    return call


def _without_device(cuda_name):
    def call():
        return getattr(_cuda(), cuda_name)()
    call.__name__ = cuda_name
    return call


def _set_stream(stream):
    return _cuda().set_stream(stream)


def _empty_host_cache():
    return None  # pin_memory is dropped on the target: there is no page-locked host cache to free


_dtype_cache = {}
_dtype_lock = threading.Lock()


def supported_dtypes(target):
    """The dtypes of this torch that the target allocates and converts (what CUDA's capability lists)."""
    with _dtype_lock:
        found = _dtype_cache.get(target.device)
        if found is None:
            found = set()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for dtype in {v for v in vars(torch).values() if isinstance(v, torch.dtype)}:
                    try:
                        torch.empty(1, dtype=dtype, device=target.device).to(torch.float32)
                    except Exception:
                        continue
                    found.add(dtype)
            _dtype_cache[target.device] = found
    return found


def _get_device_capability(target):
    def get_device_capability(device=None, /):
        index = device_index_of(device, target.type, optional=True)
        _cuda().get_device_capability(index)  # the index check torch.cuda makes ("invalid device")
        return {"supported_dtypes": set(supported_dtypes(target))}
    return get_device_capability


def _device_index_class(target):
    def build(original):
        class device_index:
            """Select a CUDA index for the duration of the context (torch.cuda.set_device); None: no change."""

            def __init__(self, device, /):
                self.idx = device
                self.prev_idx = -1

            def __enter__(self):
                if self.idx is not None:
                    self.prev_idx = _cuda().current_device()
                    _cuda().set_device(device_index_of(self.idx, target.type, optional=False))

            def __exit__(self, *exc_info):
                if self.idx is not None:
                    _cuda().set_device(self.prev_idx)
                return False
        return device_index
    return build


def _graph_class(original):
    class Graph:
        """torch.accelerator.Graph over torch.cuda.CUDAGraph: capture on the current stream, replay."""

        def __init__(self, keep_graph=False, *, pool=None, capture_error_mode="default"):
            self._graph = _cuda().CUDAGraph(keep_graph=keep_graph)
            self.graph_pool = pool
            self.capture_error_mode = capture_error_mode

        def capture_begin(self):
            mode = "global" if self.capture_error_mode == "default" else self.capture_error_mode
            self._graph.capture_begin(pool=self.graph_pool, capture_error_mode=mode)

        def capture_end(self):
            self._graph.capture_end()

        def instantiate(self):
            self._graph.instantiate()

        def replay(self):
            self._graph.replay()

        def reset(self):
            self._graph.reset()

        def pool(self):
            return self._graph.pool()

        def enable_debug_mode(self):
            self._graph.enable_debug_mode()

        def debug_dump(self, path):
            self._graph.debug_dump(path)

        def __enter__(self):
            self.capture_begin()
            return self

        def __exit__(self, exc_type, exc, tb):
            self.capture_end()
            if exc_type is not None:
                self.reset()
            return False
    return Graph


def _get_device_module(truthful):
    """torch.get_device_module: a CUDA device gives torch.cuda; no device gives it to user code.

    A "cuda" device is answered for every caller: the device area maps the string
    to the target, which would give torch.cpu, a module without an RNG API, and
    torch's own ``torch.random.fork_rng()`` (default device type "cuda") must fork
    and restore the target generator through torch.cuda (ops/random). No device
    means "the current accelerator": torch.cuda for user code, the real one for torch.
    """
    sees_truth = _device.caller_sees_truth
    real_device = torch._C.device

    def make(original):
        def get_device_module(device=None):
            if device is None:
                if not sees_truth(truthful):
                    return _cuda()
            elif isinstance(device, str):
                if device == "cuda" or device.startswith("cuda:"):
                    return _cuda()
            elif type(device) is real_device and device.type == "cuda":
                return _cuda()
            return original(device)
        return functools.wraps(original)(get_device_module)
    return make


# The memory functions of torch.accelerator and the torch.cuda function each one is on CUDA.
_MEMORY = {
    "memory_stats": "memory_stats", "memory_allocated": "memory_allocated",
    "max_memory_allocated": "max_memory_allocated", "memory_reserved": "memory_reserved",
    "max_memory_reserved": "max_memory_reserved", "reset_accumulated_memory_stats": "reset_accumulated_memory_stats",
    "reset_peak_memory_stats": "reset_peak_memory_stats", "get_memory_info": "mem_get_info",
}


def behaviours(target):
    """{name: (kind, note, user version, is a class)} for every torch.accelerator name torchdevice serves."""
    on_mps = target.type == "mps"
    out = {
        "current_accelerator": (EMULATED, "torch.device('cuda') for user code; torch itself gets the real answer",
                                _current_accelerator, False),
        "is_available": (EMULATED, "torch.cuda.is_available(): True for user code", _is_available, False),
        "device_count": (EMULATED, "torch.cuda.device_count() (TORCHDEVICE_DEVICE_COUNT) for user code",
                         _device_count, False),
        "current_device_index": (EMULATED, "torch.cuda.current_device(): the selected CUDA index",
                                 _current_device_index, False),
        "current_device_idx": (EMULATED, "deprecated alias of current_device_index (FutureWarning as in torch)",
                               _current_device_index, False),
        "set_device_index": (EMULATED, "torch.cuda.set_device(index)", _set_device_index(target), False),
        "set_device_idx": (EMULATED, "deprecated alias of set_device_index (FutureWarning as in torch)",
                           _set_device_index(target), False),
        "device_index": (EMULATED, "context: torch.cuda.set_device(i), restored on exit; None: no change",
                         _device_index_class(target), True),
        "synchronize": (REDIRECTED if on_mps else NOOP, "torch.cuda.synchronize(): "
                        + ("torch.mps.synchronize()" if on_mps else "CPU work has finished when each op returns"),
                        _with_device(target, "synchronize"), False),
        "current_stream": (EMULATED, "torch.cuda.current_stream(): the selected stream of the CUDA index",
                           _with_device(target, "current_stream"), False),
        "set_stream": (EMULATED, "torch.cuda.set_stream(stream)", _set_stream, False),
        "Graph": (EMULATED, "torch.cuda.CUDAGraph: capture records the ops, replay re-runs them", _graph_class, True),
        "get_device_capability": (EMULATED, "{'supported_dtypes': the dtypes the target allocates and converts}",
                                  _get_device_capability(target), False),
        "empty_cache": (NOOP, "torch.cuda.empty_cache()", _without_device("empty_cache"), False),
        "empty_host_cache": (NOOP, "no page-locked host memory on the target (pin_memory is dropped)",
                             _empty_host_cache, False),
    }
    for name, cuda_name in _MEMORY.items():
        out[name] = (EMULATED, f"torch.cuda.{cuda_name}(): the target's figures (docs/cuda-api.md)",
                     _with_device(target, cuda_name), False)
    return out


def _once(make):
    """make() that returns one replacement per original, so every owner of the same object
    (``torch.accelerator.memory_allocated is torch.accelerator.memory.memory_allocated``) keeps one."""
    made = {}

    def make_once(original):
        key = id(original)
        if key not in made:
            made[key] = (original, make(original))  # holding the original keeps its id unique
        return made[key][1]
    return make_once


def public_names():
    """The public names of this torch's torch.accelerator (empty where it has none)."""
    module = getattr(torch, "accelerator", None)
    return sorted(getattr(module, "__all__", ())) if module is not None else []


def _owners(name):
    """torch.accelerator, plus each torch.accelerator submodule that defines the same object (memory, graphs)."""
    module = getattr(torch, "accelerator", None)
    if module is None:
        return [OWNER]
    obj = getattr(module, name, None)
    owners = [OWNER]
    for sub_name, sub in sorted(vars(module).items()):
        if (getattr(sub, "__name__", "").startswith(OWNER + ".") and type(sub) is type(module)
                and vars(sub).get(name) is obj):
            owners.append(sub.__name__)
    return owners


def records(target, cfg):
    """The records for ``target`` under ``cfg`` (none while the masquerade is off)."""
    if not cfg.masquerade:
        return []
    truthful = cfg.truthful_modules
    table = behaviours(target)
    # Where torch has no torch.accelerator, declare every name served here: each is skipped
    # with the registry's reason ("torch.accelerator does not exist in this torch").
    names = public_names() if hasattr(torch, "accelerator") else sorted(table)
    out = []
    for name in names:
        if name not in table:
            continue  # a name of a newer torch: `torchdevice coverage` lists it as unclassified
        kind, note, user_version, is_class = table[name]
        make = _once(_class_for_users(user_version, truthful) if is_class else _for_users(user_version, truthful))
        for owner in _owners(name):
            out.append(Patch(owner, name, make, kind=kind, note=note))
    out.append(Patch("torch", "get_device_module", _get_device_module(truthful), kind=EMULATED,
                     note="a cuda device: torch.cuda (fork_rng forks the target generator); no device: torch.cuda "
                     "for user code, the real accelerator's module for torch itself"))
    return out
