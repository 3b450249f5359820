"""A test double for Apple MPS on machines without it.

Only the ``torch.mps`` surface that torchdevice calls is replaced (plus
``torch.backends.mps.is_available``), through pytest's ``monkeypatch``; our own
code paths run unchanged with the target forced by
``torchdevice.patch(device="mps")``. The fake records every call so tests can
check that the right MPS function did the work:

* RNG: a CPU ``torch.Generator`` stands in for the MPS generator
  (``manual_seed``, ``seed``, ``get_rng_state``, ``set_rng_state`` and
  ``_get_default_mps_generator`` behave as torch.mps's do on that generator).
* ``synchronize`` counts calls.
* ``Event(enable_timing=False)``: record/wait/query/synchronize/elapsed_time,
  timing with the host clock at record (the real one reads GPU timestamps).

No MPS tensor can exist here, so tests of the MPS target never create tensors
on ``"cuda"``.
"""
import time

import pytest
import torch

import torchdevice


class FakeMPS:
    def __init__(self, monkeypatch, events=True):
        self.calls = []
        self.generator = torch.Generator()
        self.generator.manual_seed(67280421310721)  # torch's default seed
        fake = self
        mps = torch.mps
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
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
