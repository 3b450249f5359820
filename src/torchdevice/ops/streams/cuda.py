"""Area "streams": torch.cuda streams, events and graphs on the target.

The target runs work in issue order on one queue (the CPU runs each op to
completion; MPS has one command queue), so CUDA's stream semantics hold
trivially and the API keeps its meaning:

* ``torch.cuda.Stream(device=None, priority=0)``: a stream object with a unique
  ``stream_id``, the CUDA ``device_index`` it was made for, ``device`` (the
  target device) and ``priority`` (clamped to ``priority_range()``, (0, -3) as
  torch reports on NVIDIA GPUs; it has no effect). ``query()`` and
  ``synchronize()`` ask / wait for the target; ``wait_stream`` needs nothing
  (work is already ordered); ``wait_event(e)`` calls ``e.wait(self)``;
  ``record_event()`` records a new or given event; ``with stream:`` selects it.
* ``current_stream``, ``default_stream``, ``set_stream``, ``stream()``,
  ``StreamContext``: the selected stream is kept per thread and per CUDA index,
  as CUDA does; the default stream has ``stream_id`` 0.
* ``torch.cuda.Event``: record/wait/query/synchronize, and ``elapsed_time``
  really measured (host timestamps on CPU, synchronize.py; ``torch.mps.Event``
  on MPS, mps.py).
* ``Tensor.record_stream(s)``: nothing to protect (there is no stream-ordered
  caching allocator on the target), so it returns at once.
* ``torch.Stream`` / ``torch.Event`` (the generic API) with a CUDA device, the
  target device or no device give the emulated stream / event; other devices
  get torch's own objects.
* ``ExternalStream``, ``get_stream_from_external``, event IPC handles and raw
  handles (``cuda_stream``, ``cuda_event``) raise errors naming the API, the
  target and what to use instead.
* Graphs (``CUDAGraph``, ``graph``, ``make_graphed_callables``, ...): graphs.py.
"""
import functools
import itertools
import threading

from ...core import compat
from ...core import device as _device
from ...core.patch import EMULATED, NOOP, REDIRECTED, REGISTRY, UNSUPPORTED, Patch
from . import graphs as _graphs
from . import synchronize as _sync
from .synchronize import Event

AREA = "streams"
# (least, greatest) priority, as torch reports it on current NVIDIA GPUs.
_LEAST_PRIORITY, _GREATEST_PRIORITY = 0, -3
_stream_ids = itertools.count(1)
# Per thread: .streams = {cuda index: selected Stream}, valid for activation .generation.
_local = threading.local()
# Per activation: the published Stream class, the default streams made so far, and a
# generation number that makes streams selected under an earlier activation count as unset.
_active = {"stream_class": None, "defaults": {}, "generation": 0}
_defaults_lock = threading.Lock()


def _index(device, api="torch.cuda.Stream"):
    """The CUDA index a stream/device argument names (the selected one for None or -1), checked
    against the device count as every index is (core/device.check_index)."""
    if device is None:
        return _device.get_current_index()
    return _device.checked_index(device, api)


def _selected():
    """This thread's {cuda index: selected stream} for the current activation."""
    generation = _active["generation"]
    if getattr(_local, "generation", None) != generation:
        _local.streams = {}
        _local.generation = generation
    return _local.streams


def _unsupported(api, instead):
    target = _sync._target_name()
    return RuntimeError(f"{api}: there are no CUDA streams on the {target} target (torchdevice redirects CUDA to "
                        f"{target}); {instead}")


class Stream:
    r"""torch.cuda.Stream on the torchdevice target.

    The target runs work in issue order on one queue, so every stream sees its
    work complete in order; the object keeps CUDA's API and identity rules.

    Args:
        device (torch.device or int, optional): the CUDA device the stream is
            for (default: the selected one). All map to the target.
        priority (int, optional): clamped to ``priority_range()``; no effect.
    """

    _event_class = Event

    def __init__(self, device=None, priority=0, **kwargs):
        if "stream_id" in kwargs:  # the form torch uses internally
            self.stream_id = int(kwargs["stream_id"])
            index = kwargs.get("device_index")
            self.device_index = (_device.get_current_index() if index is None or index < 0
                                 else _device.check_index(int(index), "torch.cuda.Stream"))
        else:
            self.stream_id = next(_stream_ids)
            self.device_index = _index(device)
        self.priority = min(max(int(priority), _GREATEST_PRIORITY), _LEAST_PRIORITY)

    @staticmethod
    def priority_range():
        """(least, greatest) stream priority."""
        return (_LEAST_PRIORITY, _GREATEST_PRIORITY)

    @property
    def device(self):
        """The target device."""
        return _sync._TARGET["device"]

    def query(self):
        """True when all work submitted to the stream has completed."""
        return True

    def synchronize(self):
        """Wait for all work submitted to the stream."""

    def wait_event(self, event):
        """Make future work on this stream wait for ``event``."""
        event.wait(self)

    def wait_stream(self, stream):
        """Make future work on this stream wait for the work queued on ``stream``.

        Nothing to do: the target runs the work of every stream in issue order.
        """

    def record_event(self, event=None):
        """Record ``event`` (a new ``torch.cuda.Event`` if None) on this stream and return it."""
        if event is None:
            event = self._event_class()
        event.record(self)
        return event

    def __enter__(self):
        context = StreamContext(self)
        stack = getattr(_local, "contexts", None)
        if stack is None:
            stack = _local.contexts = []
        stack.append(context)
        context.__enter__()
        return self

    def __exit__(self, *exc):
        _local.contexts.pop().__exit__(*exc)
        return False

    @property
    def cuda_stream(self):
        raise _unsupported("torch.cuda.Stream.cuda_stream",
                           "there is no cudaStream_t to hand to another library; pass the stream object "
                           "itself to torch.cuda APIs instead.")

    _as_parameter_ = cuda_stream

    def __eq__(self, other):
        if isinstance(other, Stream):
            return self.stream_id == other.stream_id and self.device_index == other.device_index
        return NotImplemented

    def __hash__(self):
        return hash((self.stream_id, self.device_index))

    def __repr__(self):
        return (f"<torch.cuda.Stream device={self.device} device_index={self.device_index} "
                f"stream_id={self.stream_id} (torchdevice)>")


class ExternalStream(Stream):
    """torch.cuda.ExternalStream: wraps a cudaStream_t from another library (impossible off CUDA)."""

    def __init__(self, stream_ptr, device=None, **kwargs):
        raise _unsupported("torch.cuda.ExternalStream",
                           "create streams with torch.cuda.Stream() or use torch.cuda.current_stream() instead.")


class StreamContext:
    r"""Context-manager that selects a given stream (no-op for ``None``).

    Args:
        stream (Stream): selected stream.
    """

    def __init__(self, stream):
        self.stream = stream
        self.prev_stream = None

    def __enter__(self):
        stream = self.stream
        if stream is None:
            return
        self.prev_stream = current_stream(stream.device_index)
        set_stream(stream)

    def __exit__(self, *exc):
        if self.stream is None:
            return
        _selected()[self.stream.device_index] = self.prev_stream


def stream(stream):
    r"""Wrap the context-manager StreamContext that selects a given stream (no-op for ``None``)."""
    return StreamContext(stream)


def set_stream(stream):
    r"""Set the current stream of the stream's CUDA index (no-op for ``None``)."""
    if stream is None:
        return
    index = getattr(stream, "device_index", -1)
    _selected()[_device.get_current_index() if index is None or index < 0 else index] = stream


def default_stream(device=None):
    r"""Return the default stream (``stream_id`` 0) of a CUDA index (default: the selected one)."""
    index = _index(device, "torch.cuda.default_stream")
    defaults = _active["defaults"]
    made = defaults.get(index)
    if made is None:
        with _defaults_lock:
            made = defaults.get(index)
            if made is None:
                made = defaults[index] = _active["stream_class"](stream_id=0, device_index=index)
    return made


def current_stream(device=None):
    r"""Return the stream selected on this thread for a CUDA index (default: the selected index)."""
    made = _selected().get(_index(device, "torch.cuda.current_stream"))
    return made if made is not None else default_stream(device)


def get_stream_from_external(data_ptr, device=None):
    r"""Return a stream from an externally allocated CUDA stream (impossible off CUDA)."""
    raise _unsupported("torch.cuda.get_stream_from_external",
                       "create streams with torch.cuda.Stream() or use torch.cuda.current_stream() instead.")


def _record_stream(original):
    def record_stream(self, stream):
        return None  # no stream-ordered caching allocator on the target: nothing to protect
    return functools.wraps(original)(record_stream)


# -- torch.Stream / torch.Event (the device-generic API) -------------------------------------
class _GenericStandIn(type):
    """Metaclass for torch.Stream / torch.Event while patched: instance checks accept ours too."""

    def __instancecheck__(cls, obj):
        return isinstance(obj, cls._torchdevice_real) or isinstance(obj, cls._torchdevice_ours)

    def __subclasscheck__(cls, sub):
        return sub is cls or issubclass(sub, cls._torchdevice_real) or issubclass(sub, cls._torchdevice_ours)

    def __getattr__(cls, name):
        return getattr(cls._torchdevice_real, name)


def _is_ours(device, target_type):
    """Whether a torch.Stream/torch.Event device argument means the (redirected) accelerator."""
    if device is None or _device.is_cuda_spec(device):
        return True
    if isinstance(device, str):
        return device.partition(":")[0] == target_type
    return getattr(device, "type", None) == target_type


def _generic(real, ours, call):
    meta = type("_GenericStandInMeta", (_GenericStandIn,), {"__call__": call})
    return meta(real.__name__, (), {"__module__": "torch", "__qualname__": real.__name__, "__doc__": real.__doc__,
                                    "_torchdevice_real": real, "_torchdevice_ours": ours})


def _generic_stream(stream_class, target_type):
    def make(original):
        def __call__(cls, device=None, *, priority=0, **kwargs):
            if kwargs or not _is_ours(device, target_type):
                args = () if device is None else (device,)
                return original(*args, priority=priority, **kwargs)
            # A CUDA spec names the CUDA index; the target device itself means the selected one.
            return stream_class(device if _device.is_cuda_spec(device) else None, priority=priority)
        return _generic(original, Stream, __call__)
    return make


def _generic_event(event_class, target_type):
    def make(original):
        def __call__(cls, device=None, *, enable_timing=False, blocking=False, interprocess=False):
            if not _is_ours(device, target_type):
                return original(device, enable_timing=enable_timing, blocking=blocking, interprocess=interprocess)
            return event_class(enable_timing=enable_timing, blocking=blocking, interprocess=interprocess)
        return _generic(original, Event, __call__)
    return make


def _publish(obj):
    """make(): the replacement is ``obj`` itself (a class or a module-level function)."""
    return lambda original: obj


def records():
    target = _device.current()
    _sync._set_target(target.type, target.device)
    if target.type == "mps":
        from . import mps

        stream_class, event_class = mps._classes(Stream, Event)
        sync_note = "torch.mps"
    else:
        stream_class, event_class = Stream, Event
        sync_note = "host clock; CPU work is complete when issued"
    compat.register_stream_classes(stream_class, event_class)
    _active["stream_class"] = stream_class
    _active["defaults"] = {}
    _active["generation"] += 1
    out = []
    for owner in ("torch.cuda", "torch.cuda.streams"):
        out += [
            Patch(owner, "Stream", _publish(stream_class), kind=EMULATED,
                  note=f"stream object on the target's single queue ({sync_note})"),
            Patch(owner, "Event", _publish(event_class), kind=EMULATED,
                  note=f"record/wait/query/synchronize; elapsed_time measured ({sync_note})"),
            Patch(owner, "ExternalStream", _publish(ExternalStream), kind=UNSUPPORTED,
                  note="no CUDA streams to wrap; error says to use torch.cuda.Stream()"),
        ]
    out += [
        Patch("torch.cuda", "StreamContext", _publish(StreamContext), kind=EMULATED,
              note="selects a stream per thread and CUDA index"),
        Patch("torch.cuda", "stream", _publish(stream), kind=EMULATED, note="StreamContext(stream)"),
        Patch("torch.cuda", "set_stream", _publish(set_stream), kind=EMULATED,
              note="selects a stream per thread and CUDA index"),
        Patch("torch.cuda", "current_stream", _publish(current_stream), kind=EMULATED,
              note="the selected stream, else the default stream"),
        Patch("torch.cuda", "default_stream", _publish(default_stream), kind=EMULATED,
              note="stream_id 0 of the CUDA index"),
        Patch("torch.cuda", "get_stream_from_external", _publish(get_stream_from_external), kind=UNSUPPORTED,
              note="no CUDA streams to wrap; error says to use torch.cuda.Stream()"),
        Patch("torch.Tensor", "record_stream", _record_stream, kind=NOOP,
              note="no stream-ordered allocator on the target: nothing to protect"),
        Patch("torch", "Stream", _generic_stream(stream_class, target.type), kind=REDIRECTED,
              note="device cuda/target/None gives torch.cuda.Stream; other devices unchanged"),
        Patch("torch", "Event", _generic_event(event_class, target.type), kind=REDIRECTED,
              note="device cuda/target/None gives torch.cuda.Event; other devices unchanged"),
    ]
    out += _graphs.records(stream_class, StreamContext)
    return out


def apply_patches():
    """Apply the streams area (fenced: a second call changes nothing)."""
    return REGISTRY.apply_area(AREA, records())
