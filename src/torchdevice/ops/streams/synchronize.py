"""How CUDA events synchronize and measure time on a target without CUDA events.

``Event`` is ``torch.cuda.Event`` on the CPU target. A CPU op has finished when
it returns, so all work issued before ``record()`` is complete at that moment:
the event stores a host timestamp (``time.perf_counter_ns``) and
``elapsed_time(end)`` returns the real time between the two records in
milliseconds. ``query()`` is True, ``synchronize()`` and ``wait()`` return at
once (nothing is pending), as a CUDA event whose work is done would behave.

``_synced_event(Event, sync)`` builds the variant for a target whose work is
queued but that has no native events of its own (MPS on a torch without
``torch.mps.Event``): ``record()`` first waits for the target (``sync``), then
reads the host clock, so the time still covers the queued work.

The errors of CUDA are kept: ``elapsed_time`` needs both events recorded and
created with ``enable_timing=True``. IPC handles cannot exist off CUDA and
raise an error that names the target and what to do instead.
"""
import time

_now = time.perf_counter_ns
# Filled by the streams area when it applies: the target's name and device.
_TARGET = {"name": "cpu", "device": None}


def _target_name():
    return _TARGET["name"]


def _set_target(name, device):
    _TARGET["name"] = name
    _TARGET["device"] = device


def _elapsed_error(start, end):
    """The error CUDA would raise for ``start.elapsed_time(end)`` (called only when timing failed)."""
    if not isinstance(end, Event):
        return TypeError(f"torch.cuda.Event.elapsed_time: end_event must be a torch.cuda.Event, "
                         f"got {type(end).__name__}")
    if not (start._timing and end._timing):
        return RuntimeError("torch.cuda.Event.elapsed_time: both events must be created with argument "
                            "'enable_timing=True'.")
    return RuntimeError("torch.cuda.Event.elapsed_time: both events must be recorded before calculating "
                        "elapsed time.")


def _ipc_error(api):
    target = _target_name()
    return RuntimeError(
        f"{api}: interprocess CUDA events do not exist on the {target} target (torchdevice redirects CUDA to "
        f"{target}); share tensors through torch.multiprocessing and order work with torch.cuda.synchronize() "
        f"or a multiprocessing Event instead.")


class Event:
    """torch.cuda.Event on a target whose work completes as it is issued (CPU).

    Args:
        enable_timing (bool, optional): whether ``elapsed_time`` may be used (default: ``False``)
        blocking (bool, optional): accepted; waiting never blocks here, nothing is pending
        interprocess (bool): accepted; ``ipc_handle()`` raises, events cannot cross processes here
        external (bool, optional): accepted for CUDA graph capture; no effect
    """

    __slots__ = ("_timing", "_blocking", "_interprocess", "_ns", "__weakref__")

    def __init__(self, enable_timing=False, blocking=False, interprocess=False, external=False):
        self._timing = bool(enable_timing)
        self._blocking = bool(blocking)
        self._interprocess = bool(interprocess)
        self._ns = None

    def record(self, stream=None):
        """Record the event: the host time now, when all earlier work is complete."""
        self._ns = _now()

    def wait(self, stream=None):
        """Make future work wait for this event (all earlier work is already complete)."""

    def query(self):
        """True: the work captured by the event has completed."""
        return True

    def synchronize(self):
        """Wait for the event to complete (it already has)."""

    def elapsed_time(self, end_event):
        """Milliseconds between this event's record and ``end_event``'s record."""
        try:
            if self._timing and end_event._timing:
                return (end_event._ns - self._ns) / 1e6
        except (TypeError, AttributeError):
            pass
        raise _elapsed_error(self, end_event)

    def ipc_handle(self):
        raise _ipc_error("torch.cuda.Event.ipc_handle")

    @classmethod
    def from_ipc_handle(cls, device, handle):
        raise _ipc_error("torch.cuda.Event.from_ipc_handle")

    @property
    def device(self):
        """The target device (where the work this event marks runs)."""
        return _TARGET["device"]

    @property
    def cuda_event(self):
        target = _target_name()
        raise RuntimeError(f"torch.cuda.Event.cuda_event: there is no cudaEvent_t on the {target} target "
                           f"(torchdevice redirects CUDA to {target}); use the event's own methods "
                           f"(record, synchronize, elapsed_time) instead.")

    _as_parameter_ = cuda_event

    def __repr__(self):
        state = "recorded" if self._ns is not None else "unrecorded"
        return f"<torch.cuda.Event {state} on {_TARGET['name']} (torchdevice)>"


def _synced_event(base, sync):
    """``base`` (an Event class) whose record() first waits for the target's queued work."""

    class Event(base):
        __slots__ = ()
        __doc__ = base.__doc__

        def record(self, stream=None):
            sync()
            self._ns = _now()

        def synchronize(self):
            sync()

    Event.__qualname__ = "Event"
    Event.__module__ = base.__module__
    return Event
