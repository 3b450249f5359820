"""The MPS layer of the streams area: torch.cuda streams and events on Apple MPS.

MPS runs all work on one command queue, so every ``torch.cuda.Stream`` is that
queue: ``Stream.synchronize()`` is ``torch.mps.synchronize()``, work on two
streams is already ordered (``wait_stream`` needs nothing), and ``query()``
records a ``torch.mps.Event`` and asks it.

``torch.cuda.Event`` wraps a ``torch.mps.Event`` (record, wait, query,
synchronize and elapsed_time measured by MPS). On a torch without
``torch.mps.Event`` it times with host timestamps taken after
``torch.mps.synchronize()`` (synchronize._synced_event).

This module only reads the public ``torch.mps`` surface, once, when the area
applies; everything else is shared with the CPU target.
"""
import torch

from .synchronize import _elapsed_error, _synced_event


def _classes(base_stream, base_event):
    """(Stream, Event) for the MPS target, built on the shared base classes."""
    mps = torch.mps
    sync = mps.synchronize
    native = getattr(mps, "Event", None)
    if native is None:
        event_class = _synced_event(base_event, sync)

        def idle():
            sync()
            return True
    else:
        event_class = _native_event(base_event, native)

        def idle():
            marker = native()
            marker.record()
            return marker.query()

    class Stream(base_stream):
        __doc__ = base_stream.__doc__
        _event_class = event_class

        def query(self):
            return idle()

        def synchronize(self):
            sync()

    Stream.__qualname__ = "Stream"
    Stream.__module__ = __name__
    return Stream, event_class


def _native_event(base, native):
    class Event(base):
        __slots__ = ("_native",)
        __doc__ = base.__doc__

        def __init__(self, enable_timing=False, blocking=False, interprocess=False, external=False):
            base.__init__(self, enable_timing, blocking, interprocess, external)
            self._native = native(enable_timing=self._timing)

        def record(self, stream=None):
            self._native.record()
            self._ns = 0  # marks "recorded"; MPS keeps the time

        def wait(self, stream=None):
            self._native.wait()

        def query(self):
            return self._native.query()

        def synchronize(self):
            self._native.synchronize()

        def elapsed_time(self, end_event):
            if (isinstance(end_event, Event) and self._timing and end_event._timing
                    and self._ns is not None and end_event._ns is not None):
                return self._native.elapsed_time(end_event._native)
            raise _elapsed_error(self, end_event)

    Event.__qualname__ = "Event"
    Event.__module__ = __name__
    return Event
