"""Area "random": torch.cuda's RNG API drives the target's default generator.

Every CUDA index maps to the one target device, so every CUDA generator is the
target's default generator:

* CPU target: ``torch.default_generator`` (the CPU generator). CPU and "CUDA"
  random numbers therefore come from one stream: ``torch.cuda.manual_seed(s)``
  also reseeds ``torch.rand()`` on the CPU, and ``torch.manual_seed(s)`` (which
  calls ``torch.cuda.manual_seed_all``) seeds both, as on a GPU machine.
* MPS target: the MPS generator, reached through ``torch.mps.manual_seed``,
  ``seed``, ``get_rng_state`` and ``set_rng_state`` (and
  ``torch.mps._get_default_mps_generator`` for ``default_generators`` and
  ``initial_seed``, where this torch has it).

Saving a state with ``get_rng_state`` and restoring it with ``set_rng_state``
reproduces the same numbers on the target; seeding twice gives identical runs.
The numbers differ from a real GPU's (a different algorithm): reproducibility
holds run to run on the same target, not bit for bit across hardware.

A state saved on a real GPU (a 16-byte Philox state: seed and offset) cannot
be restored into another generator; ``set_rng_state`` then seeds the target
with that state's seed and warns once, so a resumed run is reproducible.

``torch.cuda.random`` holds the same functions as ``torch.cuda``; both names are
patched with one object each, so ``torch.cuda.manual_seed is
torch.cuda.random.manual_seed`` stays true.

``torch.get_device_module("cuda")`` returns ``torch.cuda`` (so ``torch.random.fork_rng()``,
whose default device type is ``"cuda"``, forks and restores the target generator):
that record lives with the device-generic API in ops/device/accelerator.py (area "cuda").
"""
import functools

import torch

from ...core import device as _device
from ...core.logger import warn_once
from ...core.patch import REDIRECTED, REGISTRY, Patch

AREA = "random"
# A CUDA generator state: seed (uint64) then Philox offset (int64), little endian.
_CUDA_STATE_BYTES = 16


class _TargetRng:
    """The target's default generator, as the target's own API exposes it.

    ``find_generator`` runs on first use, not when the records are declared:
    declaring must not touch the device (``torchdevice.coverage`` declares the
    records of targets this machine does not have).
    """

    def __init__(self, name, find_generator, manual_seed, seed, get_state, set_state):
        self.name = name
        self._find_generator = find_generator
        self.manual_seed = manual_seed
        self.seed = seed
        self.get_state = get_state
        self.set_state = set_state

    @functools.cached_property
    def generator(self):
        return self._find_generator()

    def initial_seed(self):
        if self.generator is None:
            raise RuntimeError(
                f"torch.cuda.initial_seed: this torch does not expose the default {self.name} generator, so "
                f"torchdevice cannot read its initial seed on the {self.name} target; keep the seed you passed to "
                f"torch.manual_seed instead.")
        return self.generator.initial_seed()


def _cpu_rng():
    gen = torch.default_generator
    return _TargetRng("cpu", lambda: gen, gen.manual_seed, gen.seed, gen.get_state, gen.set_state)


def _mps_rng():
    mps = torch.mps
    get_generator = getattr(mps, "_get_default_mps_generator", None)
    find = get_generator if get_generator is not None else (lambda: None)
    return _TargetRng("mps", find, mps.manual_seed, mps.seed, mps.get_rng_state, mps.set_rng_state)


def _is_cuda_state(state):
    return isinstance(state, torch.Tensor) and state.dtype == torch.uint8 and state.numel() == _CUDA_STATE_BYTES


def _cuda_state_seed(state):
    return int.from_bytes(bytes(state.reshape(-1)[:8].tolist()), "little")


def _rng_index(device, api):
    """The CUDA index torch.cuda.get/set_rng_state read from ``device`` (torch takes its index
    whatever its type; no index: the selected one), checked against the device count."""
    if isinstance(device, str):
        device = torch._C.device(device)
    elif isinstance(device, int):
        device = torch._C.device("cuda", device)
    index = device.index
    return _device.get_current_index() if index is None else _device.check_index(index, api)


def _api(rng, count):
    """The torch.cuda RNG functions, bound to ``rng``; ``count`` CUDA devices share it."""

    def manual_seed(seed):
        rng.manual_seed(int(seed))

    def manual_seed_all(seed):
        rng.manual_seed(int(seed))

    def seed():
        rng.seed()

    def seed_all():
        rng.seed()

    def initial_seed():
        return rng.initial_seed()

    def get_rng_state(device="cuda"):
        _rng_index(device, "torch.cuda.get_rng_state")
        return rng.get_state()

    def get_rng_state_all():
        return [rng.get_state() for _ in range(count)]

    def set_rng_state(new_state, device="cuda"):
        _rng_index(device, "torch.cuda.set_rng_state")
        try:
            rng.set_state(new_state)
        except RuntimeError:
            if not _is_cuda_state(new_state):
                raise
            cuda_seed = _cuda_state_seed(new_state)
            warn_once(("cuda-rng-state", rng.name),
                      f"torch.cuda.set_rng_state: this state was saved by a CUDA generator and cannot be restored "
                      f"into the {rng.name} generator (torchdevice redirects CUDA to {rng.name}); seeded it with "
                      f"that state's seed ({cuda_seed}) instead. Random numbers differ from the GPU run but are "
                      f"reproducible from here.")
            rng.manual_seed(cuda_seed)

    def set_rng_state_all(new_states):
        # All CUDA indices share one generator: the state saved for the selected
        # index wins (the one a single-device program would have used).
        states = list(new_states)
        if states:
            index = _device.get_current_index()
            set_rng_state(states[index] if index < len(states) else states[0])

    return {f.__name__: f for f in (manual_seed, manual_seed_all, seed, seed_all, initial_seed, get_rng_state,
                                    get_rng_state_all, set_rng_state, set_rng_state_all)}


# name -> note for the coverage table (all REDIRECTED: the target's generator does the work).
_NOTES = {
    "manual_seed": "seeds the target's default generator",
    "manual_seed_all": "seeds the target's default generator (all CUDA indices share it)",
    "seed": "seeds the target's default generator non-deterministically",
    "seed_all": "seeds the target's default generator non-deterministically",
    "initial_seed": "the target generator's initial seed",
    "get_rng_state": "the target generator's state (ByteTensor)",
    "get_rng_state_all": "the target generator's state, once per CUDA index",
    "set_rng_state": "restores the target generator; a GPU-saved Philox state seeds it with its seed (warns once)",
    "set_rng_state_all": "restores the state saved for the selected CUDA index",
}


def _adopt(function):
    """make(): give our function the original's name, docstring and __wrapped__."""
    def make(original):
        if original is not None and callable(original):
            functools.update_wrapper(function, original)
        return function
    return make


def records():
    target = _device.current()
    rng = _mps_rng() if target.type == "mps" else _cpu_rng()
    api = _api(rng, target.count)
    out = []
    for owner in ("torch.cuda", "torch.cuda.random"):
        for name, note in _NOTES.items():
            out.append(Patch(owner, name, _adopt(api[name]), kind=REDIRECTED, note=note))
    def generators(original):
        return () if rng.generator is None else (rng.generator,) * target.count

    out.append(Patch("torch.cuda", "default_generators", generators, kind=REDIRECTED,
                     note="the target's default generator, once per CUDA index"))
    return out


def apply_patches():
    """Apply the random area (fenced: a second call changes nothing)."""
    return REGISTRY.apply_area(AREA, records())
