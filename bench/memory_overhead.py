"""Does the memory area slow tensor creation? (It should not: it tracks nothing per allocation.)

Runs factory calls with the memory area off, on, and on with peak tracking in use,
alternating three rounds, and prints the best time per call; then the cost of the
memory queries themselves. Run: TORCHDEVICE_DISABLE=1 python bench/memory_overhead.py
"""
import time

import torch

import torchdevice


def per_call_ns(calls=5000, repeats=7):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            torch.empty(256)
            torch.ones(256, device="cuda")
        best = min(best, time.perf_counter() - start)
    return best / (2 * calls) * 1e9


def query_us(function, calls=2000):
    function()
    start = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - start) / calls * 1e6


def main():
    results = {"memory area off": [], "memory area on": [], "on, peaks in use": []}
    for _ in range(3):
        for label, disabled in (("memory area off", frozenset({"memory"})), ("memory area on", frozenset())):
            torchdevice.unpatch()
            torchdevice.patch(strict=True, device="cpu", disabled_areas=disabled)
            results[label].append(per_call_ns())
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.max_memory_allocated()
        results["on, peaks in use"].append(per_call_ns())
    for label, values in results.items():
        print(f"{label:18s} best {min(values):6.0f} ns per factory call (rounds: "
              f"{', '.join(f'{v:.0f}' for v in values)})")
    for name in ("memory_allocated", "max_memory_allocated", "memory_stats", "mem_get_info"):
        print(f"torch.cuda.{name}(): {query_us(getattr(torch.cuda, name), 200):7.1f} us")


if __name__ == "__main__":
    main()
