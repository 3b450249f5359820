"""NCCL's semantics for the collectives of process groups torchdevice moved from NCCL to gloo.

A CUDA program that asked for NCCL gets NCCL's results, whatever gloo does natively. Measured
with tests/programs/dist_collectives.py run natively on gloo (torch 2.13 and 2.2, two ranks),
gloo differs from NCCL in:

* AVG: integers fail ("result type Float can't be cast to the desired output type Long",
  torch 2.13) or AVG is missing altogether (torch 2.2). NCCL sums integers in their type and
  divides by the number of ranks rounding toward zero; floating types are pre-multiplied by
  ``1/nranks`` in their type, then summed. Composed here exactly so.
* PREMUL_SUM (``_make_nccl_premul_sum(factor)``): gloo has none. Composed: input times the
  factor (in the input's type), then SUM.
* bool SUM: NCCL computes MAX (logical or); so does the composition.
* ``reduce``: gloo of torch 2.2 overwrites the input of ranks other than ``dst``; NCCL leaves
  it unchanged. Composed: an all_reduce of a copy on those ranks.
* ``reduce_scatter``/``reduce_scatter_tensor``: missing (2.2), wrong for ops other than SUM
  and overwriting the input (2.2's fallback), a Work that never reports completion (2.13).
  Composed: all_reduce of a copy of the whole input, each rank keeps its chunk.
* ``all_to_all`` (list form): missing in 2.2. Composed from ``all_to_all_single``.
* float8 tensors: gloo moves none ("Invalid scalar type"). Every data-moving collective moves
  bytes (a ``uint8`` view of the same memory), which also serves every other type.
* ``all_gather_into_tensor`` into a stacked ``(world, *shape)`` output: gloo takes only the
  concatenated form; the flat views of both are what it takes.

Where NCCL raises, user code gets NCCL's error (type and message): bitwise ops, AVG of bool,
PREMUL_SUM of non-floating types, reductions of float8, dtypes NCCL has no type for (int16,
...), ``monitored_barrier``. torch's own modules (which are told the group is gloo) keep
gloo's behaviour for those, as they would on a real gloo group.

A composed call with ``async_op=True`` runs to completion and returns a completed ``Work``
(``wait()`` True, ``is_completed()`` True, ``get_future()`` done); where the last step is one
native call (AVG/PREMUL_SUM of floating types, byte-view moves), that call's own Work is
returned. Point-to-point calls (``send``/``recv``/``isend``/``irecv``/``batch_isend_irecv``)
are left to gloo, which moves every NCCL type: ``P2POp`` accepts only torch's own
``isend``/``irecv`` functions, so they are not wrapped.
"""
import functools
import inspect
import weakref

import torch

_PREMUL_FACTORS = {}  # id(ReduceOp) -> factor, for torch releases whose ReduceOp has no .factor
_NCCL_DTYPES = frozenset(getattr(torch, name) for name in (
    "bool", "uint8", "int8", "int32", "int64", "float16", "bfloat16", "float32", "float64",
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz") if hasattr(torch, name))
_FLOAT8 = frozenset(t for t in _NCCL_DTYPES if t.is_floating_point and t.itemsize == 1)
_PREMUL_DTYPES = frozenset((torch.float16, torch.bfloat16, torch.float32, torch.float64))
_BITWISE = ("BAND", "BOR", "BXOR")
# torch's names of scalar types, as its NCCL backend prints them ("... process group: Short")
_C10_NAMES = {torch.int16: "Short", torch.complex32: "ComplexHalf"}


def _c10():
    import torch.distributed.distributed_c10d as c10d

    return c10d


# -- reduce ops ---------------------------------------------------------------------------------------------
def premul_sum_maker(original):
    """``_make_nccl_premul_sum(factor)``: remember the factor where torch's ReduceOp does not expose it."""
    @functools.wraps(original)
    def _make_nccl_premul_sum(factor):
        op = original(factor)
        if not hasattr(op, "factor"):
            key = id(op)
            _PREMUL_FACTORS[key] = (weakref.ref(op, lambda _ref, k=key: _PREMUL_FACTORS.pop(k, None)), factor)
        return op
    return _make_nccl_premul_sum


def _op_name(op):
    """('SUM' | 'AVG' | ... | 'PREMUL_SUM', factor or None) for a ReduceOp or a RedOpType."""
    kind = getattr(op, "op", op)
    name = getattr(kind, "name", None) or str(kind).rpartition(".")[2]
    if name != "PREMUL_SUM":
        return name, None
    factor = getattr(op, "factor", None)
    if factor is None:
        entry = _PREMUL_FACTORS.get(id(op))
        factor = entry[1] if entry is not None and entry[0]() is op else None
    if factor is None:
        raise ValueError("ReduceOp.PREMUL_SUM needs its factor: pass torch.distributed._make_nccl_premul_sum(factor), "
                         "as torch's NCCL backend requires")
    return name, factor


def _dtype_name(dtype):
    return _C10_NAMES.get(dtype, str(dtype).rpartition(".")[2])


def _check_dtype(dtype):
    if dtype.is_complex:
        return  # torch hands complex tensors to NCCL as real views
    if dtype not in _NCCL_DTYPES:
        raise TypeError(f"Input tensor data type is not supported for NCCL process group: {_dtype_name(dtype)}")


def _reduction_error(name, dtype):
    """The error torch's NCCL backend raises for reduction ``name`` on ``dtype``, or None."""
    if not dtype.is_complex and dtype not in _NCCL_DTYPES:
        return TypeError(f"Input tensor data type is not supported for NCCL process group: {_dtype_name(dtype)}")
    if dtype in _FLOAT8:
        return RuntimeError("Float8 dtypes are not currently supported for NCCL reductions")
    if name in _BITWISE:
        return ValueError(f"Cannot use ReduceOp.{name} with NCCL")
    if name == "AVG" and dtype == torch.bool:
        return TypeError("Cannot use ReduceOp.AVG with boolean inputs")
    if name == "PREMUL_SUM" and dtype not in _PREMUL_DTYPES and not dtype.is_complex:
        return TypeError("PreMulSum Data type must be half, float, bfloat16 or double")
    return None


def _nccl_refuses(name, tensors, user):
    """True when NCCL refuses the reduction: user code gets NCCL's error (raised here), torch's own
    code gloo's behaviour (the caller then hands the call to gloo unchanged)."""
    for tensor in tensors:
        error = _reduction_error(name, tensor.dtype)
        if error is not None:
            if user:
                raise error
            return True
    return False


def _world(group):
    return _c10().get_world_size(group)


def _reduce_in_place(tensor, op, group, async_op=False):
    """all_reduce ``tensor`` in place with NCCL's arithmetic for ``op``; the native Work when async."""
    c10d = _c10()
    name, factor = _op_name(op)
    native = c10d.ReduceOp.SUM
    post_divide = None
    if name == "AVG":
        world = _world(group)
        if tensor.dtype.is_floating_point or tensor.dtype.is_complex:
            tensor.mul_(torch.tensor(1.0 / world, dtype=_real(tensor.dtype)))
        else:
            post_divide = world
    elif name == "PREMUL_SUM":
        scale = factor.to(dtype=_real(tensor.dtype), device=tensor.device) if isinstance(factor, torch.Tensor) \
            else torch.tensor(factor, dtype=_real(tensor.dtype))
        tensor.mul_(scale.reshape(()) if scale.numel() == 1 else scale)
    elif name == "SUM" and tensor.dtype == torch.bool:
        native = c10d.ReduceOp.MAX  # NCCL's sum of bool: a logical or
    else:
        native = op
    if post_divide is None:
        return c10d.all_reduce(tensor, op=native, group=group, async_op=async_op)
    c10d.all_reduce(tensor, op=native, group=group)
    tensor.div_(post_divide, rounding_mode="trunc")
    return _done() if async_op else None


def _real(dtype):
    return {torch.complex64: torch.float32, torch.complex128: torch.float64}.get(dtype, dtype)


def _done(value=None):
    """A completed Work (wait() and is_completed() True; its future holds ``value``)."""
    future = torch.futures.Future()
    future.set_result(value)
    return torch._C._distributed_c10d._create_work_from_future(future)


def _bytes(tensor):
    """A uint8 view of ``tensor``'s memory (gloo moves bytes of every type); None if it has none."""
    if not tensor.is_contiguous() or tensor.is_complex() and tensor.is_conj():
        return None
    flat = tensor.reshape(-1)
    return flat if flat.dtype == torch.uint8 else flat.view(torch.uint8)


def _all_bytes(tensors):
    views = [_bytes(t) for t in tensors]
    return None if any(v is None for v in views) else views


# -- the collectives ----------------------------------------------------------------------------------------
# Each takes the bound arguments of torch's function (defaults applied), the original and whether
# the caller is user code; it returns what torch's function returns.
def all_reduce(a, original, user):
    tensor, op = a["tensor"], a["op"]
    name, _ = _op_name(op)
    if _nccl_refuses(name, [tensor], user):
        return original(**a)  # torch's own call: what gloo does
    return _reduce_in_place(tensor, op, a["group"], a["async_op"])


def all_reduce_coalesced(a, original, user):
    tensors, op = a["tensors"], a["op"]
    name, _ = _op_name(op)
    if _nccl_refuses(name, tensors, user):
        return original(**a)
    for t in tensors:
        _reduce_in_place(t, op, a["group"])
    if a["async_op"]:
        future = torch.futures.Future()
        future.set_result(list(tensors))
        return future  # torch returns the Work's future here, on every backend
    return None


def _is_root(a, rank_key, group_key):
    c10d = _c10()
    if a.get(group_key) is not None:
        return c10d.get_rank(a["group"]) == a[group_key]
    root = a.get(rank_key)
    return c10d.get_rank() == (0 if root is None else root)


def reduce(a, original, user):
    tensor, op = a["tensor"], a["op"]
    name, _ = _op_name(op)
    if _nccl_refuses(name, [tensor], user):
        return original(**a)
    if _is_root(a, "dst", "group_dst"):
        return _reduce_in_place(tensor, op, a["group"], a["async_op"])
    _reduce_in_place(tensor.clone(), op, a["group"])  # NCCL leaves the other ranks' input as it was
    return _done() if a["async_op"] else None


def _scatter_reduced(output, whole, op, group, async_op):
    c10d = _c10()
    _reduce_in_place(whole, op, group)
    mine = whole.reshape(c10d.get_world_size(group), -1)[c10d.get_rank(group)]
    output.copy_(mine.view(output.shape))
    return _done() if async_op else None


def reduce_scatter(a, original, user):
    output, inputs, op = a["output"], a["input_list"], a["op"]
    name, _ = _op_name(op)
    if _nccl_refuses(name, [output], user):
        return original(**a)
    whole = torch.cat([t.reshape(-1) for t in inputs])
    return _scatter_reduced(output, whole, op, a["group"], a["async_op"])


def reduce_scatter_tensor(a, original, user):
    output, whole, op = a["output"], a["input"], a["op"]
    name, _ = _op_name(op)
    if _nccl_refuses(name, [output], user):
        return original(**a)
    return _scatter_reduced(output, whole.clone(), op, a["group"], a["async_op"])


def _moving(tensor_keys, list_keys=()):
    """A data-moving collective: its tensors travel as byte views (same memory, any type)."""
    def compose(a, original, user):
        tensors = [a[k] for k in tensor_keys if a.get(k) is not None]
        lists = [list(a[k]) for k in list_keys if a.get(k) is not None]
        if user:
            for t in (*tensors, *(t for group in lists for t in group)):
                _check_dtype(t.dtype)
        views = _all_bytes(tensors)
        list_views = [_all_bytes(group) for group in lists]
        if views is None or any(v is None for v in list_views):
            return original(**a)  # non-contiguous: torch's own error (NCCL needs contiguous tensors too)
        moved = dict(a)
        for key, view in zip([k for k in tensor_keys if a.get(k) is not None], views):
            moved[key] = view
        for key, group in zip([k for k in list_keys if a.get(k) is not None], list_views):
            moved[key] = group
        return original(**moved)
    return compose


broadcast = _moving(("tensor",))
all_gather = _moving(("tensor",), ("tensor_list",))
all_gather_into_tensor = _moving(("output_tensor", "input_tensor"))
gather = _moving(("tensor",), ("gather_list",))
scatter = _moving(("tensor",), ("scatter_list",))


def all_to_all_single(a, original, user):
    output, source = a["output"], a["input"]
    if user:
        _check_dtype(output.dtype)
        _check_dtype(source.dtype)
    out, inp = _bytes(output), _bytes(source)
    if out is None or inp is None or output.dim() == 0 or source.dim() == 0:
        return original(**a)
    moved = dict(a, output=out, input=inp)
    for key, tensor in (("output_split_sizes", output), ("input_split_sizes", source)):
        if a.get(key) is not None:
            row = tensor[0].numel() * tensor.element_size() if tensor.shape[0] else 0
            moved[key] = [int(s) * row for s in a[key]]
    return original(**moved)


def all_to_all(a, original, user):
    outputs, inputs = list(a["output_tensor_list"]), list(a["input_tensor_list"])
    if user:
        for t in (*outputs, *inputs):
            _check_dtype(t.dtype)
    out_views, in_views = _all_bytes(outputs), _all_bytes(inputs)
    if out_views is None or in_views is None:
        return original(**a)
    c10d = _c10()
    received = torch.empty(sum(v.numel() for v in out_views), dtype=torch.uint8)
    c10d.all_to_all_single(received, torch.cat(in_views), output_split_sizes=[v.numel() for v in out_views],
                           input_split_sizes=[v.numel() for v in in_views], group=a["group"])
    start = 0
    for view in out_views:
        view.copy_(received[start:start + view.numel()])
        start += view.numel()
    return _done() if a["async_op"] else None


def all_gather_coalesced(a, original, user):
    outputs, inputs = [list(o) for o in a["output_tensor_lists"]], list(a["input_tensor_list"])
    if user:
        for t in (*inputs, *(t for o in outputs for t in o)):
            _check_dtype(t.dtype)
    in_views, out_views = _all_bytes(inputs), [_all_bytes(o) for o in outputs]
    if in_views is None or any(v is None for v in out_views):
        return original(**a)
    return original(**dict(a, output_tensor_lists=out_views, input_tensor_list=in_views))


def monitored_barrier(a, original, user):
    if user:
        raise ValueError("monitored_barrier is only implemented for GLOO backend.")
    return original(**a)


# collective -> composition; every name NCCL offers that gloo does differently (module docstring)
COMPOSED = {
    "all_reduce": all_reduce,
    "all_reduce_coalesced": all_reduce_coalesced,
    "reduce": reduce,
    "reduce_scatter": reduce_scatter,
    "reduce_scatter_tensor": reduce_scatter_tensor,
    "reduce_scatter_single": reduce_scatter_tensor,
    "broadcast": broadcast,
    "all_gather": all_gather,
    "all_gather_into_tensor": all_gather_into_tensor,
    "all_gather_single": all_gather_into_tensor,
    "all_gather_coalesced": all_gather_coalesced,
    "all_to_all": all_to_all,
    "all_to_all_single": all_to_all_single,
    "gather": gather,
    "scatter": scatter,
    "monitored_barrier": monitored_barrier,
}


def nccl_semantics(name, asked_for, sees_truth):
    """Patch maker: ``torch.distributed.<name>`` with NCCL's semantics on groups ``asked_for`` names."""
    compose = COMPOSED[name]

    def make(original):
        signature = inspect.signature(original)

        def collective(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = bound.arguments
            group = arguments.get("group")
            if asked_for(group) is None or _c10()._rank_not_in_group(group):
                return original(*args, **kwargs)
            return compose(arguments, original, not sees_truth())
        return functools.wraps(original)(collective)
    return make
