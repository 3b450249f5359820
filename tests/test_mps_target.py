"""RNG, streams and events on the MPS target, through the fake torch.mps surface (tests/fake_mps.py)."""
import time

import pytest
import torch

import torchdevice
from fake_mps import activate, fake_mps  # noqa: F401  (fake_mps is a fixture)


def draw(fake, n=5):
    """What a random op on MPS would produce: numbers from the MPS generator."""
    return torch.randn(n, generator=fake.generator)


def test_seeding_goes_to_torch_mps(fake_mps):
    torch.cuda.manual_seed(77)
    assert fake_mps.calls[-1] == ("manual_seed", 77)
    assert torch.cuda.initial_seed() == 77 == fake_mps.generator.initial_seed()
    torch.cuda.manual_seed_all(78)
    assert fake_mps.calls[-1] == ("manual_seed", 78)
    torch.cuda.seed()
    torch.cuda.seed_all()
    assert fake_mps.count("seed") == 2
    assert torch.cuda.initial_seed() != 78


def test_state_round_trip_through_torch_mps(fake_mps):
    torch.cuda.manual_seed(3)
    state = torch.cuda.get_rng_state()
    expected = draw(fake_mps)
    torch.cuda.set_rng_state(state)
    assert torch.equal(draw(fake_mps), expected)
    states = torch.cuda.get_rng_state_all()
    expected = draw(fake_mps)
    torch.cuda.set_rng_state_all(states)
    assert torch.equal(draw(fake_mps), expected)
    assert fake_mps.count("get_rng_state") == 2 and fake_mps.count("set_rng_state") == 2


def test_default_generators_are_the_mps_generator(fake_mps):
    assert torch.cuda.default_generators == (fake_mps.generator,)


def test_gpu_saved_state_seeds_mps(fake_mps):
    from torchdevice.core import logger

    logger._warned.discard(("cuda-rng-state", "mps"))
    gpu_state = torch.tensor(list((555).to_bytes(8, "little") + (0).to_bytes(8, "little")), dtype=torch.uint8)
    with pytest.warns(torchdevice.TorchDeviceWarning, match="into the mps generator"):
        torch.cuda.set_rng_state(gpu_state)
    assert fake_mps.calls[-1] == ("manual_seed", 555)


def test_event_uses_torch_mps_event(fake_mps):
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    time.sleep(0.03)
    end.record()
    end.synchronize()
    assert 29.7 <= start.elapsed_time(end) < 280
    assert fake_mps.calls[:2] == [("Event", True), ("Event", True)]
    assert fake_mps.count("Event.record") == 2 and fake_mps.count("Event.elapsed_time") == 1
    assert fake_mps.count("Event.synchronize") == 1
    assert start.query() is True and fake_mps.count("Event.query") == 1
    start.wait()
    assert fake_mps.count("Event.wait") == 1
    untimed = torch.cuda.Event()
    untimed.record()
    with pytest.raises(RuntimeError, match="enable_timing=True"):
        untimed.elapsed_time(end)
    assert isinstance(start, torch.cuda.Event)
    assert not hasattr(torch, "Event") or isinstance(start, torch.Event)  # torch.Event: torch >= 2.3
    assert start.device == torch.device("mps", 0)


def test_stream_synchronizes_mps(fake_mps):
    s = torch.cuda.Stream()
    assert s.device == torch.device("mps", 0)
    s.synchronize()
    assert fake_mps.count("synchronize") == 1
    assert s.query() is True and fake_mps.count("Event.query") == 1
    event = s.record_event()
    assert isinstance(event, torch.cuda.Event) and fake_mps.count("Event.record") == 2
    with torch.cuda.stream(s):
        assert torch.cuda.current_stream() is s
    assert torch.cuda.default_stream().query() is True


def test_errors_name_the_mps_target(fake_mps):
    with pytest.raises(RuntimeError, match="no CUDA streams on the mps target"):
        torch.cuda.ExternalStream(1)
    with pytest.raises(RuntimeError, match="do not exist on the mps target"):
        torch.cuda.Event(interprocess=True).ipc_handle()


def test_without_mps_events_times_after_synchronizing(monkeypatch):
    fake = activate(monkeypatch, events=False)
    try:
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        time.sleep(0.03)
        end.record()
        assert fake.count("synchronize") == 2, "each record waits for queued MPS work first"
        assert 29.7 <= start.elapsed_time(end) < 280
        assert torch.cuda.Stream().query() is True and fake.count("synchronize") == 3
    finally:
        torchdevice.unpatch()
