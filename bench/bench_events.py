"""Cost of torch.cuda events and streams on the CPU target (not a test: prints numbers).

Run: TORCHDEVICE_DEVICE=cpu python bench/bench_events.py
Target: one Event.record() + Event.record() + elapsed_time() cycle < 2 us on CPU.
"""
import timeit

import torch
import torchdevice

torchdevice.patch(device="cpu")

start = torch.cuda.Event(enable_timing=True)
end = torch.cuda.Event(enable_timing=True)
stream = torch.cuda.Stream()


def event_cycle():
    start.record()
    end.record()
    return start.elapsed_time(end)


def stream_context():
    with torch.cuda.stream(stream):
        pass


CASES = {
    "event record+record+elapsed_time": event_cycle,
    "torch.cuda.current_stream()": torch.cuda.current_stream,
    "with torch.cuda.stream(s)": stream_context,
    "torch.cuda.Event(enable_timing=True)": lambda: torch.cuda.Event(enable_timing=True),
}

if __name__ == "__main__":
    number = 100_000
    for name, case in CASES.items():
        best = min(timeit.repeat(case, number=number, repeat=5)) / number
        print(f"{name:40s} {best * 1e6:7.3f} us")
