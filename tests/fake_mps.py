"""A test double for torch's MPS surface, so MPS code paths run on machines without Apple hardware.

Only what torch exposes is replaced (``torch.backends.mps.is_available``,
``is_macos_or_newer``, ``get_name``, ``get_core_count`` and the ``torch.mps``
memory and synchronisation functions); torchdevice's own code runs unchanged,
activated with ``torchdevice.patch(device="mps")``. The double records calls
and lets a test set the allocator figures. No tensor can live on the fake
device, so tests using it must not create tensors on "cuda".
"""
import torch

import torchdevice

GiB = 2 ** 30
# Areas that the MPS tests exercise; the others are left out so that they do
# not need MPS tensors while the fake is installed.
MPS_AREAS = frozenset({"device", "cuda", "memory"})


class FakeMPS:
    def __init__(self, monkeypatch, *, name="Apple M2 Pro", cores=19, recommended=16 * GiB, macos14=True):
        self.allocated = 1 * GiB
        self.driver = 2 * GiB
        self.recommended = recommended
        self.macos14 = macos14
        self.calls = []
        backends = torch.backends.mps
        monkeypatch.setattr(backends, "is_available", lambda: True)
        monkeypatch.setattr(backends, "is_macos_or_newer", lambda major, minor: self.macos14 or major < 14)
        monkeypatch.setattr(backends, "get_name", lambda: name)
        monkeypatch.setattr(backends, "get_core_count", lambda: cores)
        monkeypatch.setattr(torch.mps, "current_allocated_memory", lambda: self.allocated)
        monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: self.driver)
        monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: self.recommended)
        monkeypatch.setattr(torch.mps, "synchronize", lambda: self.calls.append(("synchronize",)))
        monkeypatch.setattr(torch.mps, "empty_cache", self._empty_cache)
        monkeypatch.setattr(torch.mps, "set_per_process_memory_fraction",
                            lambda fraction: self.calls.append(("set_per_process_memory_fraction", fraction)))

    def _empty_cache(self):
        self.calls.append(("empty_cache",))
        self.driver = self.allocated  # cached blocks go back to the system

    def activate(self, **settings):
        torchdevice.unpatch()
        disabled = frozenset(torchdevice.core.config.AREAS) - MPS_AREAS
        return torchdevice.patch(strict=True, device="mps", disabled_areas=disabled, **settings)
