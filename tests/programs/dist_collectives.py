"""Every collective NCCL offers, x ReduceOp x dtype x async_op, on an NCCL group of two ranks.

Run with ``torchrun --nproc_per_node=2 dist_collectives.py OUT_DIR [BACKEND]`` (BACKEND defaults
to ``nccl``, as a CUDA program asks; ``gloo`` measures what gloo does natively). Each rank
runs the whole matrix and writes OUT_DIR/rank<R>.json: ``{cell: outcome}`` where a cell is
``collective/op/dtype/async`` and the outcome ``"ok"`` or what differed. The expected result of
every cell is computed here, locally, from the known inputs of every rank, with NCCL's
semantics (the oracle below); a cell where NCCL raises expects the error torch's NCCL
backend raises (type and message).

NCCL's semantics, from NCCL's and torch's sources (src/enqueue.cc ``hostToDevRedOp``,
src/device/reduce_kernel.h, torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp
``getNcclReduceOp``/``getNcclDataType``):

* AVG: integers are summed in their own type (wrapping) and divided by the number of ranks,
  rounding toward zero (``FuncSumPostDiv``); floating types are pre-multiplied by
  ``1/nranks`` in their own type and summed (``FuncPreMulSum``). AVG of bool: TypeError.
* SUM of bool is MAX (logical or); PRODUCT/MIN/MAX of bool act on 0/1.
* PREMUL_SUM (``_make_nccl_premul_sum(factor)``, a number or a one-element tensor): every
  input times the factor (in the input's type), summed; half/float/bfloat16/double only,
  other types: TypeError.
* BAND/BOR/BXOR: ValueError ("Cannot use ReduceOp.BAND with NCCL").
* dtypes: bool, uint8, int8, int32, int64, float16, bfloat16, float32, float64, and float8
  for data movement (reductions of float8: RuntimeError); other dtypes (int16, ...): TypeError.
* ``reduce`` leaves the input of ranks other than ``dst`` unchanged.
* ``monitored_barrier`` is gloo's only: ValueError on an NCCL group.
"""
import json
import os
import sys
import traceback

import torch
import torch.distributed as dist

N = 4  # elements per rank's chunk
INTS = ([-3, 5, 100, 7, 12, -1, 64, 9], [0, -2, 100, 4, -7, -1, 64, 3])
FLOATS = ([1.5, -2.25, 3.0, 0.125, 2.0, -0.5, 8.0, 1.0], [0.5, 4.0, -1.75, 2.0, -3.0, 0.25, 0.5, -1.0])
FACTOR = 0.25  # PREMUL_SUM factor: exact in every floating type

REDUCING = ("all_reduce", "all_reduce_coalesced", "reduce", "reduce_scatter", "reduce_scatter_tensor",
            "reduce_scatter_single")
MOVING = ("broadcast", "all_gather", "all_gather_coalesced", "all_gather_into_tensor", "all_gather_into_tensor_stacked",
          "all_gather_single", "all_to_all", "all_to_all_single", "all_to_all_single_uneven", "gather", "scatter",
          "send_recv", "batch_isend_irecv")
PLAIN = ("barrier", "monitored_barrier", "all_gather_object", "gather_object", "broadcast_object_list",
         "scatter_object_list", "send_recv_object_list")
# Point-to-point calls stay gloo's (torch's P2POp accepts only its own isend/irecv functions, so
# torchdevice does not wrap them): a dtype NCCL has no type for is delivered, not refused.
P2P = ("send_recv", "batch_isend_irecv")
# Functions NCCL does not have: torch's NCCL backend raises (cell expects the error).
NOT_ON_NCCL = {"monitored_barrier": (ValueError, "monitored_barrier is only implemented for GLOO backend.")}
OPS = ("SUM", "AVG", "PRODUCT", "MIN", "MAX", "PREMUL_SUM", "PREMUL_SUM_TENSOR", "BAND", "BOR", "BXOR")
DTYPES = ("bool", "uint8", "int8", "int32", "int64", "float16", "bfloat16", "float32", "float64",
          "float8_e4m3fn", "float8_e5m2", "int16")
NCCL_DTYPES = {"bool", "uint8", "int8", "int32", "int64", "float16", "bfloat16", "float32", "float64",
               "float8_e4m3fn", "float8_e5m2"}
FLOAT8 = {"float8_e4m3fn", "float8_e5m2"}
PREMUL_DTYPES = {"float16", "bfloat16", "float32", "float64"}


def value(rank, dtype, count, chunk=0):
    """Rank ``rank``'s input: ``count`` elements of chunk ``chunk`` (known to every rank)."""
    dtype = getattr(torch, dtype)
    i = torch.arange(count) + chunk * count
    if dtype == torch.bool:
        return ((i >> (rank % 2)) & 1).bool() if rank < 2 else (i % 3 == rank % 3)
    if dtype.is_floating_point:
        table = torch.tensor(FLOATS[rank % 2], dtype=torch.float64)
        return (table[i % 8] + (i // 8) * 0.5 + (rank // 2)).to(dtype)
    table = torch.tensor(INTS[rank % 2], dtype=torch.int64)
    return (table[i % 8] + (i // 8) + (rank // 2)).to(dtype)


def reduce_op(op):
    if op == "PREMUL_SUM":
        return dist._make_nccl_premul_sum(FACTOR)
    if op == "PREMUL_SUM_TENSOR":
        return dist._make_nccl_premul_sum(torch.tensor([FACTOR], dtype=torch.float64))
    return getattr(dist.ReduceOp, op)


def nccl_error(op, dtype):
    """The error torch's NCCL backend raises for a reduction ``op`` on ``dtype``, or None."""
    if dtype not in NCCL_DTYPES:
        return TypeError, f"Input tensor data type is not supported for NCCL process group: {_c10_name(dtype)}"
    if dtype in FLOAT8:
        return RuntimeError, "Float8 dtypes are not currently supported for NCCL reductions"
    if op in ("BAND", "BOR", "BXOR"):
        return ValueError, f"Cannot use ReduceOp.{op} with NCCL"
    if op == "AVG" and dtype == "bool":
        return TypeError, "Cannot use ReduceOp.AVG with boolean inputs"
    if op.startswith("PREMUL_SUM") and dtype not in PREMUL_DTYPES:
        return TypeError, "PreMulSum Data type must be half, float, bfloat16 or double"
    return None


def _c10_name(dtype):
    return {"int16": "Short"}.get(dtype, dtype)


def oracle(op, dtype, inputs, world):
    """NCCL's reduction of ``inputs`` (one tensor per rank, in rank order)."""
    kind = getattr(torch, dtype)
    if kind == torch.bool:
        stacked = torch.stack(inputs).to(torch.uint8)
        fold = {"SUM": "amax", "MAX": "amax", "MIN": "amin", "PRODUCT": "prod"}[op]
        return getattr(stacked, fold)(0).bool()
    if kind.is_floating_point:
        if op in ("SUM", "AVG", "PREMUL_SUM", "PREMUL_SUM_TENSOR"):
            scale = {"SUM": None, "AVG": 1.0 / world}.get(op, FACTOR)
            total = None
            for x in inputs:
                x = x if scale is None else x * torch.tensor(scale, dtype=kind)
                total = x if total is None else total + x  # rounded in the type at each step
            return total
        if op == "PRODUCT":
            total = inputs[0]
            for x in inputs[1:]:
                total = total * x
            return total
        fold = torch.minimum if op == "MIN" else torch.maximum
        total = inputs[0]
        for x in inputs[1:]:
            total = fold(total, x)
        return total
    wide = torch.stack(inputs).to(torch.int64)
    if op in ("SUM", "AVG"):
        total = wide.sum(0).to(kind)  # wraps in the type, as NCCL's sum does
        if op == "AVG":
            total = torch.div(total.to(torch.int64), world, rounding_mode="trunc").to(kind)
        return total
    if op == "PRODUCT":
        return wide.prod(0).to(kind)
    return (wide.amin(0) if op == "MIN" else wide.amax(0)).to(kind)


class Mismatch(AssertionError):
    pass


def check(got, expected, what):
    if isinstance(got, torch.Tensor):
        if got.dtype != expected.dtype or got.shape != expected.shape or not torch.equal(
                got.view(torch.uint8) if got.dtype in _FLOAT8_TYPES else got,
                expected.view(torch.uint8) if expected.dtype in _FLOAT8_TYPES else expected):
            raise Mismatch(f"{what}: got {got.tolist() if got.dtype not in _FLOAT8_TYPES else got.float().tolist()} "
                           f"{got.dtype}, expected {expected.float().tolist()} {expected.dtype}")
    elif got != expected:
        raise Mismatch(f"{what}: got {got!r}, expected {expected!r}")


_FLOAT8_TYPES = {getattr(torch, name) for name in FLOAT8 if hasattr(torch, name)}


def finish(work, async_op):
    """An async call's Work: wait() and is_completed() as on NCCL."""
    if not async_op:
        if work is not None:
            raise Mismatch(f"a synchronous call returned {work!r}")
        return
    if work is None:
        raise Mismatch("async_op=True returned no Work")
    works = work if isinstance(work, list) else [work]
    for w in works:
        w.wait()
        # torch answers all_reduce_coalesced(async_op=True) with the Work's Future, on every backend
        done = w.is_completed() if hasattr(w, "is_completed") else w.done()
        if not done:
            raise Mismatch(f"{type(w).__name__} not completed after wait()")


# -- the cells -----------------------------------------------------------------------------------------------
def run_reducing(name, op, dtype, async_op, rank, world):
    red = reduce_op(op)
    if name == "all_reduce":
        t = value(rank, dtype, N)
        finish(dist.all_reduce(t, op=red, async_op=async_op), async_op)
        check(t, oracle(op, dtype, [value(r, dtype, N) for r in range(world)], world), "tensor")
    elif name == "all_reduce_coalesced":
        ts = [value(rank, dtype, N), value(rank, dtype, 2 * N, chunk=1)]
        finish(dist.all_reduce_coalesced(ts, op=red, async_op=async_op), async_op)
        check(ts[0], oracle(op, dtype, [value(r, dtype, N) for r in range(world)], world), "tensors[0]")
        check(ts[1], oracle(op, dtype, [value(r, dtype, 2 * N, chunk=1) for r in range(world)], world), "tensors[1]")
    elif name == "reduce":
        t = value(rank, dtype, N)
        finish(dist.reduce(t, dst=0, op=red, async_op=async_op), async_op)
        if rank == 0:
            check(t, oracle(op, dtype, [value(r, dtype, N) for r in range(world)], world), "dst tensor")
        else:
            check(t, value(rank, dtype, N), "a non-dst rank's tensor is left unchanged")
    elif name == "reduce_scatter":
        out = torch.zeros(N, dtype=getattr(torch, dtype))
        inputs = [value(rank, dtype, N, chunk=j) for j in range(world)]
        finish(dist.reduce_scatter(out, inputs, op=red, async_op=async_op), async_op)
        check(out, oracle(op, dtype, [value(r, dtype, N, chunk=rank) for r in range(world)], world), "output")
        check(inputs[0], value(rank, dtype, N, chunk=0), "input_list unchanged")
    elif name in ("reduce_scatter_tensor", "reduce_scatter_single"):
        out = torch.zeros(N, dtype=getattr(torch, dtype))
        full = value(rank, dtype, world * N)
        finish(getattr(dist, name)(out, full, op=red, async_op=async_op), async_op)
        expected = oracle(op, dtype, [value(r, dtype, world * N)[rank * N:(rank + 1) * N] for r in range(world)],
                          world)
        check(out, expected, "output")
        check(full, value(rank, dtype, world * N), "input unchanged")
    else:
        raise KeyError(name)


def run_moving(name, dtype, async_op, rank, world):
    kind = getattr(torch, dtype)
    if name == "broadcast":
        src = world - 1
        t = value(rank, dtype, N)
        finish(dist.broadcast(t, src=src, async_op=async_op), async_op)
        check(t, value(src, dtype, N), "tensor")
    elif name == "all_gather":
        out = [torch.zeros(N, dtype=kind) for _ in range(world)]
        finish(dist.all_gather(out, value(rank, dtype, N), async_op=async_op), async_op)
        for r in range(world):
            check(out[r], value(r, dtype, N), f"tensor_list[{r}]")
    elif name == "all_gather_coalesced":
        inputs = [value(rank, dtype, N), value(rank, dtype, 2 * N, chunk=1)]
        out = [[torch.zeros(t.shape, dtype=kind) for t in inputs] for _ in range(world)]  # [rank][input]
        finish(dist.all_gather_coalesced(out, inputs, async_op=async_op), async_op)
        for i, size in enumerate((N, 2 * N)):
            for r in range(world):
                check(out[r][i], value(r, dtype, size, chunk=i), f"output_tensor_lists[{r}][{i}]")
    elif name in ("all_gather_into_tensor", "all_gather_single", "all_gather_into_tensor_stacked"):
        stacked = name.endswith("stacked")
        out = torch.zeros((world, N) if stacked else (world * N,), dtype=kind)
        function = dist.all_gather_into_tensor if stacked else getattr(dist, name)
        finish(function(out, value(rank, dtype, N), async_op=async_op), async_op)
        expected = torch.stack if stacked else torch.cat
        check(out, expected([value(r, dtype, N) for r in range(world)]), "output_tensor")
    elif name == "all_to_all":
        out = [torch.zeros(N, dtype=kind) for _ in range(world)]
        finish(dist.all_to_all(out, [value(rank, dtype, N, chunk=j) for j in range(world)], async_op=async_op),
               async_op)
        for r in range(world):
            check(out[r], value(r, dtype, N, chunk=rank), f"output_tensor_list[{r}]")
    elif name == "all_to_all_single":
        out = torch.zeros(world * N, dtype=kind)
        finish(dist.all_to_all_single(out, value(rank, dtype, world * N), async_op=async_op), async_op)
        check(out, torch.cat([value(r, dtype, world * N)[rank * N:(rank + 1) * N] for r in range(world)]), "output")
    elif name == "all_to_all_single_uneven":
        # rank r sends (j + 1) * (r + 1) elements to rank j
        def splits(r):
            return [(j + 1) * (r + 1) for j in range(world)]

        def source(r):
            return value(r, dtype, sum(splits(r)))

        def piece(r, j):
            start = sum(splits(r)[:j])
            return source(r)[start:start + splits(r)[j]]
        received = [splits(r)[rank] for r in range(world)]
        out = torch.zeros(sum(received), dtype=kind)
        finish(dist.all_to_all_single(out, source(rank), output_split_sizes=received, input_split_sizes=splits(rank),
                                      async_op=async_op), async_op)
        check(out, torch.cat([piece(r, rank) for r in range(world)]), "output")
    elif name == "gather":
        gather_list = [torch.zeros(N, dtype=kind) for _ in range(world)] if rank == 0 else None
        finish(dist.gather(value(rank, dtype, N), gather_list, dst=0, async_op=async_op), async_op)
        if rank == 0:
            for r in range(world):
                check(gather_list[r], value(r, dtype, N), f"gather_list[{r}]")
    elif name == "scatter":
        t = torch.zeros(N, dtype=kind)
        scatter_list = [value(0, dtype, N, chunk=j) for j in range(world)] if rank == 0 else None
        finish(dist.scatter(t, scatter_list, src=0, async_op=async_op), async_op)
        check(t, value(0, dtype, N, chunk=rank), "tensor")
    elif name == "send_recv":
        peer = rank + 1 if rank % 2 == 0 else rank - 1
        if peer >= world:
            return
        if rank % 2 == 0:
            t = value(rank, dtype, N)
            if async_op:
                finish(dist.isend(t, dst=peer), True)
            else:
                dist.send(t, dst=peer)
        else:
            t = torch.zeros(N, dtype=kind)
            if async_op:
                finish(dist.irecv(t, src=peer), True)
            else:
                dist.recv(t, src=peer)
            check(t, value(peer, dtype, N), "received tensor")
    elif name == "batch_isend_irecv":
        if not async_op:
            return  # batch_isend_irecv is asynchronous only
        t = torch.zeros(N, dtype=kind)
        ops = [dist.P2POp(dist.isend, value(rank, dtype, N), (rank + 1) % world),
               dist.P2POp(dist.irecv, t, (rank - 1) % world)]
        finish(dist.batch_isend_irecv(ops), True)
        check(t, value((rank - 1) % world, dtype, N), "received tensor")
    else:
        raise KeyError(name)


def run_plain(name, async_op, rank, world):
    if name == "barrier":
        finish(dist.barrier(async_op=async_op), async_op)
    elif name == "monitored_barrier":
        dist.monitored_barrier()
    elif name == "all_gather_object":
        out = [None] * world
        dist.all_gather_object(out, {"rank": rank})
        check(out, [{"rank": r} for r in range(world)], "object_list")
    elif name == "gather_object":
        out = [None] * world if rank == 0 else None
        dist.gather_object(("from", rank), out, dst=0)
        if rank == 0:
            check(out, [("from", r) for r in range(world)], "object_gather_list")
    elif name == "broadcast_object_list":
        objects = [rank, f"rank {rank}"]
        dist.broadcast_object_list(objects, src=world - 1)
        check(objects, [world - 1, f"rank {world - 1}"], "object_list")
    elif name == "scatter_object_list":
        out = [None]
        dist.scatter_object_list(out, [{"to": r} for r in range(world)] if rank == 0 else None, src=0)
        check(out, [{"to": rank}], "scatter_object_output_list")
    elif name == "send_recv_object_list":
        if rank == 0:
            dist.send_object_list([{"a": 1}, "two"], dst=1)
        elif rank == 1:
            objects = [None, None]
            dist.recv_object_list(objects, src=0)
            check(objects, [{"a": 1}, "two"], "object_list")
    else:
        raise KeyError(name)


def cells():
    """(cell name, callable(rank, world), expected error or None) for the whole matrix."""
    for name in REDUCING:
        if not hasattr(dist, name):
            continue
        for op in OPS:
            for dtype in DTYPES:
                for async_op in (False, True):
                    yield (f"{name}/{op}/{dtype}/{int(async_op)}",
                           lambda r, w, a=(name, op, dtype, async_op): run_reducing(*a, r, w), nccl_error(op, dtype))
    for name in MOVING:
        if not hasattr(dist, name.replace("_stacked", "").replace("_uneven", "").replace("send_recv", "send")):
            continue
        for dtype in DTYPES:
            for async_op in ((True,) if name == "batch_isend_irecv" else (False, True)):
                error = None if dtype in NCCL_DTYPES or name in P2P else nccl_error("SUM", dtype)
                yield (f"{name}/-/{dtype}/{int(async_op)}",
                       lambda r, w, a=(name, dtype, async_op): run_moving(*a, r, w), error)
    for name in PLAIN:
        if name == "send_recv_object_list" and not hasattr(dist, "send_object_list"):
            continue  # torch < 2.3
        for async_op in ((False, True) if name == "barrier" else (False,)):
            yield f"{name}/-/-/{int(async_op)}", lambda r, w, a=(name, async_op): run_plain(*a, r, w), \
                NOT_ON_NCCL.get(name)


def outcome(call, rank, world, error):
    try:
        call(rank, world)
    except Mismatch as e:
        return f"wrong: {e}"
    except Exception as e:  # noqa: BLE001 - the matrix records every failure
        if error is not None and isinstance(e, error[0]) and error[1] in str(e):
            return "ok"
        text = str(e).strip().splitlines()
        where = traceback.extract_tb(e.__traceback__)[-1]
        return f"raised {type(e).__name__}: {text[0] if text else ''} [{os.path.basename(where.filename)}:{where.lineno}]"
    if error is not None:
        return f"no error, expected {error[0].__name__}: {error[1]}"
    return "ok"


def main(out_dir, backend="nccl"):
    import datetime

    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=20))
    rank, world = dist.get_rank(), dist.get_world_size()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    # Cells end together (a cell that fails on one rank only leaves no peer waiting in the next one).
    fence = dist.new_group(backend="gloo")
    results = {}
    for cell, call, error in cells():
        results[cell] = outcome(call, rank, world, error)
        dist.barrier(group=fence)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "world": world, "backend": str(dist.get_backend()), "cells": results}, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
