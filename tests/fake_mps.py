"""A test double for Apple MPS on machines without it.

Only torch's MPS surface is faked; torchdevice's own code runs unchanged with
the target forced to ``mps:0`` by ``torchdevice.patch(device="mps")``:

* ``torch.backends.mps`` says available (chip name, core count, macOS 14
  check are settable), and the ``torch.mps`` functions torchdevice calls are
  recorded in ``FakeMPS.calls``: allocator figures read ``allocated``,
  ``driver`` and ``recommended`` (``empty_cache`` drops the cache,
  ``set_per_process_memory_fraction`` is recorded),
  RNG on a CPU ``torch.Generator`` standing in for the MPS generator
  (``manual_seed``, ``seed``, ``get_rng_state``, ``set_rng_state``,
  ``_get_default_mps_generator``), ``synchronize`` counts calls, and
  ``Event(enable_timing=...)`` times with the host clock at record.
* ``mps_session()`` additionally enters a TorchFunctionMode that stores tensors
  torch is asked to put on ``mps`` on the ``meta`` device (shapes and dtypes, no
  data), so tensor-level paths (factories, ``.to``, the float64 policy) can run.
  ``FakeMPS.tensor_calls`` lists (function, device asked, dtype asked).
"""
import contextlib
import time

import pytest
import torch
from torch.overrides import TorchFunctionMode

import torchdevice
from torchdevice.ops.device import cpu

GiB = 2 ** 30


class FakeMPS:
    def __init__(self, monkeypatch, events=True, *, name="Apple M2 Pro", cores=19, recommended=16 * GiB,
                 macos14=True):
        self.calls = []
        self.tensor_calls = []
        self.allocated = 1 * GiB
        self.driver = 2 * GiB
        self.recommended = recommended
        # What the target reports as the device's memory: Metal's recommended working set,
        # or (torch 2.2, which cannot ask Metal) the machine's RAM.
        self.total = recommended if hasattr(torch.mps, "recommended_max_memory") else cpu.total_memory()
        self.macos14 = macos14
        self.generator = torch.Generator()
        self.generator.manual_seed(67280421310721)  # torch's default seed
        fake = self
        mps = torch.mps
        backends = torch.backends.mps
        monkeypatch.setattr(backends, "is_available", lambda: True)
        if hasattr(backends, "is_macos_or_newer"):  # torch >= 2.3; torch 2.2 can only ask about macOS 13
            monkeypatch.setattr(backends, "is_macos_or_newer", lambda major, minor: self.macos14 or major < 14)
        else:
            monkeypatch.setattr(backends, "is_macos13_or_newer", lambda minor=0: True)
        monkeypatch.setattr(backends, "get_name", lambda: name, raising=False)
        monkeypatch.setattr(backends, "get_core_count", lambda: cores, raising=False)
        monkeypatch.setattr(mps, "current_allocated_memory", lambda: self.allocated)
        monkeypatch.setattr(mps, "driver_allocated_memory", lambda: self.driver)
        if hasattr(mps, "recommended_max_memory"):  # torch >= 2.3
            monkeypatch.setattr(mps, "recommended_max_memory", lambda: self.recommended)
        monkeypatch.setattr(mps, "empty_cache", self._empty_cache)
        monkeypatch.setattr(mps, "set_per_process_memory_fraction",
                            lambda fraction: self.calls.append(("set_per_process_memory_fraction", fraction)))
        monkeypatch.setattr(mps, "synchronize", self.synchronize)
        monkeypatch.setattr(mps, "manual_seed", self.manual_seed)
        monkeypatch.setattr(mps, "seed", self.seed)
        monkeypatch.setattr(mps, "get_rng_state", self.get_rng_state)
        monkeypatch.setattr(mps, "set_rng_state", self.set_rng_state)
        monkeypatch.setattr(mps, "_get_default_mps_generator", lambda: fake.generator)

        class Event:
            """Stands in for torch.mps.Event."""

            def __init__(self, enable_timing=False):
                fake.calls.append(("Event", enable_timing))
                self.enable_timing = enable_timing
                self.ns = None

            def record(self):
                fake.calls.append(("Event.record",))
                self.ns = time.perf_counter_ns()

            def wait(self):
                fake.calls.append(("Event.wait",))

            def query(self):
                fake.calls.append(("Event.query",))
                return True

            def synchronize(self):
                fake.calls.append(("Event.synchronize",))

            def elapsed_time(self, end_event):
                fake.calls.append(("Event.elapsed_time",))
                if not (self.enable_timing and end_event.enable_timing):
                    raise RuntimeError("fake mps: events were created without enable_timing")
                return (end_event.ns - self.ns) / 1e6

        self.Event = Event
        if events:
            monkeypatch.setattr(mps, "Event", Event)
        else:
            monkeypatch.delattr(mps, "Event")

    def _empty_cache(self):
        self.calls.append(("empty_cache",))
        self.driver = self.allocated  # cached blocks go back to the system

    def activate(self, **settings):
        """Patch with the MPS target (strict). Undo with torchdevice.unpatch()."""
        torchdevice.unpatch()
        return torchdevice.patch(strict=True, device="mps", **settings)

    def count(self, name):
        return sum(1 for call in self.calls if call[0] == name)

    def synchronize(self):
        self.calls.append(("synchronize",))

    def manual_seed(self, seed):
        self.calls.append(("manual_seed", int(seed)))
        self.generator.manual_seed(int(seed))

    def seed(self):
        self.calls.append(("seed",))
        self.generator.seed()

    def get_rng_state(self, device="mps"):
        self.calls.append(("get_rng_state",))
        return self.generator.get_state()

    def set_rng_state(self, new_state, device="mps"):
        self.calls.append(("set_rng_state",))
        self.generator.set_state(new_state.clone())


def activate(monkeypatch, events=True):
    """Install the fake, then patch with the MPS target (strict). Undo with torchdevice.unpatch()."""
    torchdevice.unpatch()
    fake = FakeMPS(monkeypatch, events=events)
    status = torchdevice.patch(strict=True, device="mps")
    assert status["target"] == "mps:0", status
    return fake


@pytest.fixture
def fake_mps(monkeypatch):
    """torchdevice active on a fake MPS target for one test, then undone."""
    fake = activate(monkeypatch)
    yield fake
    torchdevice.unpatch()


def _is_mps(value):
    if isinstance(value, torch._C.device):
        return value.type == "mps"
    return isinstance(value, str) and (value == "mps" or value.startswith("mps:"))


class _MpsToMeta(TorchFunctionMode):
    """Puts tensors asked for on "mps" on "meta" and records what was asked."""

    def __init__(self, calls):
        super().__init__()
        self.calls = calls

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch._C.device:  # building a device object is not placing a tensor
            return func(*args, **(kwargs or {}))
        kwargs = dict(kwargs or {})
        asked = None
        if _is_mps(kwargs.get("device")):
            asked = kwargs["device"]
            kwargs["device"] = "meta"
        args = list(args)
        for i, value in enumerate(args):
            if _is_mps(value):
                asked = value
                args[i] = torch._C.device("meta")
        if asked is not None:
            self.calls.append((getattr(func, "__name__", str(func)), str(asked),
                               kwargs.get("dtype") or next((a for a in args if isinstance(a, torch.dtype)), None)))
        return func(*args, **kwargs)


@contextlib.contextmanager
def mps_session(**settings):
    """torchdevice active on the fake MPS target with tensors stored on meta; undone on exit."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        torchdevice.unpatch()
        fake = FakeMPS(monkeypatch)
        try:
            status = torchdevice.patch(strict=True, device="mps", **settings)
            assert status["target"] == "mps:0", status
            with _MpsToMeta(fake.tensor_calls):
                yield fake
        finally:
            torchdevice.unpatch()
