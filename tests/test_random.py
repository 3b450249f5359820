"""Area "random": torch.cuda's RNG API on the target generator (CPU here, fake MPS in test_mps_target.py)."""
import json
import warnings

import pytest
import torch
import torch.nn.functional as F

import torchdevice
from conftest import clean_env, run_python


def draw(n=6):
    return torch.randn(n, device="cuda")


def test_manual_seed_reproduces(patched):
    torch.cuda.manual_seed(1234)
    first = draw()
    torch.cuda.manual_seed(1234)
    again = draw()
    torch.cuda.manual_seed(4321)
    other = draw()
    assert first.device.type == "cpu"
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_state_round_trip_reproduces_identical_tensors(patched):
    torch.cuda.manual_seed(7)
    draw()  # move away from the seeded start
    state = torch.cuda.get_rng_state()
    assert state.dtype == torch.uint8 and state.device.type == "cpu"
    expected = (draw(), torch.rand(3, 3, device="cuda"), torch.randint(0, 100, (5,), device="cuda"))
    torch.cuda.set_rng_state(state)
    got = (draw(), torch.rand(3, 3, device="cuda"), torch.randint(0, 100, (5,), device="cuda"))
    for a, b in zip(expected, got):
        assert torch.equal(a, b)


def test_state_all_round_trip(patched):
    states = torch.cuda.get_rng_state_all()
    assert len(states) == torch.cuda.device_count() == 1
    expected = draw()
    torch.cuda.set_rng_state_all(states)
    assert torch.equal(draw(), expected)


def test_random_module_is_the_same_api(patched):
    import torch.cuda.random as cuda_random

    for name in ("manual_seed", "manual_seed_all", "seed", "seed_all", "initial_seed", "get_rng_state",
                 "get_rng_state_all", "set_rng_state", "set_rng_state_all"):
        assert getattr(cuda_random, name) is getattr(torch.cuda, name), name
    cuda_random.manual_seed(99)
    assert torch.cuda.initial_seed() == 99
    state = cuda_random.get_rng_state()
    expected = draw()
    cuda_random.set_rng_state(state)
    assert torch.equal(draw(), expected)


def test_seed_all_and_initial_seed(patched):
    torch.cuda.manual_seed_all(2024)
    assert torch.cuda.initial_seed() == 2024
    torch.cuda.seed()
    first = torch.cuda.initial_seed()
    torch.cuda.seed_all()
    second = torch.cuda.initial_seed()
    assert len({2024, first, second}) == 3, "seed()/seed_all() draw fresh non-deterministic seeds"


def test_target_generator_is_cpu_default_generator(patched):
    assert torch.cuda.default_generators == (torch.default_generator,)
    # One generator: CUDA and CPU random numbers share it, in both directions.
    torch.cuda.manual_seed(5)
    cpu_after_cuda_seed = torch.randn(4)
    torch.manual_seed(5)
    assert torch.equal(torch.randn(4), cpu_after_cuda_seed)
    torch.manual_seed(11)  # calls torch.cuda.manual_seed_all too
    assert torch.cuda.initial_seed() == 11 == torch.initial_seed()


def test_generator_on_cuda_drives_init_randperm_and_bernoulli(patched):
    def run(seed):
        gen = torch.Generator(device="cuda")
        gen.manual_seed(seed)
        weight = torch.empty(4, 4, device="cuda")
        torch.nn.init.normal_(weight, generator=gen)
        torch.nn.init.kaiming_uniform_(weight, generator=gen)
        perm = torch.randperm(10, generator=gen, device="cuda")
        mask = torch.bernoulli(torch.full((8,), 0.5, device="cuda"), generator=gen)
        return weight, perm, mask

    first, again, other = run(3), run(3), run(4)
    assert first[0].device.type == first[1].device.type == "cpu"
    assert sorted(first[1].tolist()) == list(range(10))
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], other[0])


def test_dropout_follows_cuda_seed(patched):
    x = torch.ones(64, device="cuda")
    torch.cuda.manual_seed(8)
    first = F.dropout(x, p=0.5, training=True)
    torch.cuda.manual_seed(8)
    again = F.dropout(x, p=0.5, training=True)
    assert torch.equal(first, again)
    assert 0 < int((first == 0).sum()) < 64


def test_fork_rng_restores_the_target_generator(patched):
    if hasattr(torch, "get_device_module"):  # what fork_rng asks (torch >= 2.3)
        assert torch.get_device_module("cuda") is torch.cuda
        assert torch.get_device_module("cuda:0") is torch.cuda
        assert torch.get_device_module("cpu") is torch.cpu
    torch.cuda.manual_seed(21)
    expected = draw()
    torch.cuda.manual_seed(21)
    with torch.random.fork_rng():
        draw(100)
    assert torch.equal(draw(), expected)
    torch.cuda.manual_seed(21)
    with torch.random.fork_rng(devices=[0], device_type="cuda"):
        draw(100)
    assert torch.equal(draw(), expected)


def test_gpu_saved_state_seeds_the_target_and_warns_once(patched):
    # What torch.cuda.get_rng_state() returns on a GPU: seed (uint64) then offset (int64).
    seed, offset = 123456789, 4
    gpu_state = torch.tensor(list(seed.to_bytes(8, "little") + offset.to_bytes(8, "little")), dtype=torch.uint8)
    from torchdevice.core import logger

    logger._warned.discard(("cuda-rng-state", "cpu"))
    with pytest.warns(torchdevice.TorchDeviceWarning, match=r"saved by a CUDA generator .* seed \(123456789\)"):
        torch.cuda.set_rng_state(gpu_state)
    assert torch.cuda.initial_seed() == seed
    first = draw()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.cuda.set_rng_state(gpu_state)  # second time: quiet
    assert torch.equal(draw(), first), "restoring the same GPU state twice gives the same numbers"


def test_wrong_state_keeps_torchs_error(patched):
    with pytest.raises(RuntimeError, match="size"):
        torch.cuda.set_rng_state(torch.zeros(10, dtype=torch.uint8))


def test_unpatch_restores_originals(unpatched):
    originals = {name: getattr(torch.cuda, name) for name in ("manual_seed", "get_rng_state", "default_generators")}
    module = getattr(torch, "get_device_module", None)
    torchdevice.patch(strict=True, device="cpu")
    assert torch.cuda.manual_seed is not originals["manual_seed"]
    torchdevice.unpatch()
    for name, value in originals.items():
        assert getattr(torch.cuda, name) is value
    assert getattr(torch, "get_device_module", None) is module


SEEDED_RUN = """
import json, torch, torchdevice
torch.cuda.manual_seed(31337)
a = torch.randn(5, device="cuda")
b = torch.nn.functional.dropout(torch.ones(8, device="cuda"), 0.5)
print(json.dumps({"a": a.tolist(), "b": b.tolist(), "device": str(a.device)}))
"""


def test_seeding_gives_identical_runs():
    runs = []
    for _ in range(2):
        result = run_python(SEEDED_RUN, env=clean_env(TORCHDEVICE_DEVICE="cpu", TORCHDEVICE_STRICT="1"))
        assert result.returncode == 0, result.stderr
        runs.append(json.loads(result.stdout))
    assert runs[0]["device"] == "cpu"
    assert runs[0] == runs[1]
