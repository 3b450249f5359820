"""Area "streams": torch.cuda streams and events on the CPU target."""
import json
import threading
import time

import pytest
import torch

import torchdevice
from conftest import clean_env, run_python
from torch_features import needs

SLEEP_MS = 50.0


def test_event_measures_a_known_sleep(patched):
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    time.sleep(SLEEP_MS / 1000)
    end.record()
    end.synchronize()
    elapsed = start.elapsed_time(end)
    assert isinstance(elapsed, float)
    # sleep() never returns early; the upper bound leaves room for a loaded 2-core machine.
    assert SLEEP_MS * 0.99 <= elapsed < SLEEP_MS + 250
    assert end.elapsed_time(start) == pytest.approx(-elapsed)


def test_event_on_a_stream_and_via_record_event(patched):
    s = torch.cuda.Stream()
    start = s.record_event(torch.cuda.Event(enable_timing=True))
    time.sleep(0.02)
    end = torch.cuda.Event(enable_timing=True)
    end.record(s)
    assert 19.8 <= start.elapsed_time(end) < 270
    made = s.record_event()
    assert isinstance(made, torch.cuda.Event) and made.query() is True


def test_event_state_queries(patched):
    event = torch.cuda.Event(blocking=True)
    assert event.query() is True  # never-recorded events count as complete, as on CUDA
    event.record()
    assert event.query() is True
    assert event.synchronize() is None and event.wait() is None
    assert event.device == torch.device("cpu")
    assert "recorded on cpu" in repr(event)


def test_elapsed_time_errors_match_cuda(patched):
    untimed_a, untimed_b = torch.cuda.Event(), torch.cuda.Event()
    untimed_a.record()
    untimed_b.record()
    with pytest.raises(RuntimeError, match="enable_timing=True"):
        untimed_a.elapsed_time(untimed_b)
    timed_a, timed_b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    timed_a.record()
    with pytest.raises(RuntimeError, match="both events must be recorded"):
        timed_a.elapsed_time(timed_b)
    with pytest.raises(TypeError, match="end_event must be a torch.cuda.Event"):
        timed_a.elapsed_time(object())


@pytest.mark.parametrize("call, api", [
    (lambda: torch.cuda.Event(interprocess=True).ipc_handle(), "torch.cuda.Event.ipc_handle"),
    (lambda: torch.cuda.Event.from_ipc_handle(0, b"handle"), "torch.cuda.Event.from_ipc_handle"),
])
def test_ipc_is_a_clear_error(patched, call, api):
    with pytest.raises(RuntimeError) as info:
        call()
    message = str(info.value)
    assert message.startswith(api + ":") and "cpu target" in message and "torch.multiprocessing" in message


@pytest.mark.parametrize("call, api", [
    (lambda: torch.cuda.ExternalStream(0x1234), "torch.cuda.ExternalStream"),
    (lambda: torch.cuda.streams.ExternalStream(0x1234, device=0), "torch.cuda.ExternalStream"),
    pytest.param(lambda: torch.cuda.get_stream_from_external(0x1234), "torch.cuda.get_stream_from_external",
                 marks=needs("torch.cuda.get_stream_from_external")),
    (lambda: torch.cuda.Stream().cuda_stream, "torch.cuda.Stream.cuda_stream"),
    (lambda: torch.cuda.Event().cuda_event, "torch.cuda.Event.cuda_event"),
])
def test_raw_cuda_handles_are_clear_errors(patched, call, api):
    with pytest.raises(RuntimeError) as info:
        call()
    message = str(info.value)
    assert message.startswith(api + ":") and "cpu target" in message and "instead" in message


def test_stream_attributes(patched):
    s = torch.cuda.Stream(priority=-1)
    t = torch.cuda.Stream(device="cuda:0", priority=-100)
    assert torch.cuda.Stream.priority_range() == (0, -3)
    assert (s.priority, t.priority, torch.cuda.Stream(priority=5).priority) == (-1, -3, 0)
    assert s.device == torch.device("cpu") and s.device_index == 0
    assert s.stream_id != t.stream_id and s != t and s == s
    assert len({s, t, s}) == 2
    assert s.query() is True and s.synchronize() is None
    assert "torch.cuda.Stream" in repr(s)


def test_wait_event_waits_on_the_event(patched):
    waited = []

    class Recording(torch.cuda.Event):
        def wait(self, stream=None):
            waited.append(stream)

    s = torch.cuda.Stream()
    event = Recording()
    s.wait_event(event)
    assert waited == [s]
    assert s.wait_stream(torch.cuda.current_stream()) is None


def test_default_and_current_stream(patched):
    default = torch.cuda.default_stream()
    assert default.stream_id == 0 and default == torch.cuda.default_stream(0)
    assert torch.cuda.current_stream() == default
    s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
    with torch.cuda.stream(s1):
        assert torch.cuda.current_stream() == s1
        with torch.cuda.stream(s2):
            assert torch.cuda.current_stream() == s2
        assert torch.cuda.current_stream() == s1
        with torch.cuda.stream(None):  # a no-op, as in torch
            assert torch.cuda.current_stream() == s1
    assert torch.cuda.current_stream() == default
    with s2:
        assert torch.cuda.current_stream() is s2
    assert torch.cuda.current_stream() == default
    torch.cuda.set_stream(s1)
    assert torch.cuda.current_stream() is s1
    torch.cuda.set_stream(None)
    assert torch.cuda.current_stream() is s1
    torch.cuda.set_stream(default)
    assert isinstance(torch.cuda.StreamContext(s1), torch.cuda.StreamContext)


def test_current_stream_is_per_thread_and_per_index(unpatched):
    torchdevice.patch(strict=True, device="cpu", device_count=2)  # index 1 must exist
    s = torch.cuda.Stream()
    seen = {}

    def other_thread():
        seen["stream"] = torch.cuda.current_stream()

    with torch.cuda.stream(s):
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
        assert torch.cuda.current_stream(1) == torch.cuda.default_stream(1)
        assert torch.cuda.default_stream(1).device_index == 1
    assert seen["stream"] == torch.cuda.default_stream()


def test_record_stream_is_accepted(patched):
    x = torch.arange(4.0, device="cuda")
    assert x.record_stream(torch.cuda.Stream()) is None
    assert x.record_stream(torch.cuda.current_stream()) is None
    assert x.tolist() == [0.0, 1.0, 2.0, 3.0]


needs_generic_event = needs("torch.Event")


@needs_generic_event
def test_isinstance_checks(patched):
    s, e = torch.cuda.Stream(), torch.cuda.Event()
    assert isinstance(s, torch.cuda.Stream) and isinstance(s, torch.cuda.streams.Stream)
    assert isinstance(e, torch.cuda.Event) and isinstance(e, torch.cuda.streams.Event)
    assert isinstance(s, torch.Stream) and isinstance(e, torch.Event)
    assert issubclass(torch.cuda.Stream, torch.Stream)
    assert not isinstance(e, torch.Stream) and not isinstance(s, torch.Event)


@needs_generic_event
def test_generic_stream_and_event_api(patched):
    s = torch.Stream(device="cuda")
    assert isinstance(s, torch.cuda.Stream)
    assert isinstance(torch.Stream(device=torch.device("cuda", 0), priority=-1), torch.cuda.Stream)
    assert isinstance(torch.Stream(), torch.cuda.Stream)
    with torch.Stream(device="cuda") as inside:
        assert torch.cuda.current_stream() is inside
    start = torch.Event(device="cuda", enable_timing=True)
    end = torch.Event(device="cuda", enable_timing=True)
    start.record(s)
    time.sleep(0.02)
    end.record(s)
    assert isinstance(start, torch.cuda.Event) and 19.8 <= start.elapsed_time(end) < 270
    real = torch.Stream(device="meta")
    assert type(real) is torch._C.Stream and isinstance(real, torch.Stream)


@needs_generic_event
def test_unpatch_restores_stream_names(unpatched):
    names = ("Stream", "Event", "current_stream", "stream", "CUDAGraph", "is_current_stream_capturing")
    originals = {name: getattr(torch.cuda, name) for name in names}
    generic = (torch.Stream, torch.Event, torch.Tensor.record_stream)
    torchdevice.patch(strict=True, device="cpu")
    assert torch.cuda.Stream is not originals["Stream"]
    torchdevice.unpatch()
    assert {name: getattr(torch.cuda, name) for name in names} == originals
    assert (torch.Stream, torch.Event, torch.Tensor.record_stream) == generic
    assert "record_stream" not in vars(torch.Tensor)


def test_selected_stream_does_not_outlive_an_activation(unpatched):
    torchdevice.patch(strict=True, device="cpu")
    torch.cuda.set_stream(torch.cuda.Stream())
    assert torch.cuda.current_stream().stream_id != 0
    torchdevice.unpatch()
    torchdevice.patch(strict=True, device="cpu")
    assert torch.cuda.current_stream().stream_id == 0
    assert isinstance(torch.cuda.current_stream(), torch.cuda.Stream)


CUDA_TIMING_SCRIPT = """
import json, time, torch
assert torch.cuda.is_available()
side = torch.cuda.Stream()
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
side.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(side):
    start.record()
    x = torch.randn(128, 128, device="cuda")
    y = x @ x
    time.sleep(0.03)
    end.record()
y.record_stream(side)
torch.cuda.current_stream().wait_stream(side)
torch.cuda.synchronize()
print(json.dumps({"ms": start.elapsed_time(end), "device": str(y.device),
                  "back_on_default": torch.cuda.current_stream() == torch.cuda.default_stream()}))
"""


def test_cuda_timing_script_runs_unmodified():
    result = run_python(CUDA_TIMING_SCRIPT, env=clean_env(TORCHDEVICE_DEVICE="cpu"))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = json.loads(result.stdout)
    assert out["device"] == "cpu" and out["back_on_default"] is True
    assert 29.7 <= out["ms"] < 300
