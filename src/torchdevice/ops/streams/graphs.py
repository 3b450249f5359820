"""CUDA graphs on the target: capture records the work, replay runs it again.

``torch.cuda.CUDAGraph`` / ``torch.cuda.graph`` keep CUDA's contract: work
issued inside the capture is recorded, not done, and ``replay()`` runs it on
whatever the static input tensors hold now, writing into the same output
tensors the capture returned.

How: during capture a ``TorchDispatchMode`` sees every ATen op (forward,
autograd backward and optimizer steps alike) and records it with its
arguments. Ops run once at capture so that outputs exist with the right shapes
and dtypes (their values are as meaningless as CUDA's uninitialised capture
outputs); ops that write to an argument run on a clone at capture, so that
capturing changes no existing tensor (as on CUDA, where capture launches
nothing). ``replay()`` calls the recorded ops in order on the recorded
arguments (in-place ops mutate the real tensors now) and copies each fresh
result into the tensor the capture returned; views need nothing (they alias
tensors that are refreshed in place). Random ops draw new numbers at every
replay, as graph-safe CUDA RNG does. Replay dispatches below autograd, so, as
a GPU replay, it bumps no version counters and builds no autograd graph.

As on CUDA, anything needing tensor values on the host during capture
(``.item()``, ``nonzero``, data-dependent shapes, ...) is an error, and Python
control flow is frozen at capture time. Replay runs with autograd and autocast
off: the recorded ops are already the differentiated, cast ones.

``make_graphed_callables`` returns the callables themselves (modules with
their forward untouched): they run eagerly, so outputs and gradients are those
of eager execution. No warm-up iterations run (they would change BatchNorm
statistics for nothing). Its argument checks match torch's.

``is_current_stream_capturing()`` is True only inside a capture on this
thread. ``graph_pool_handle()`` returns an opaque token; memory pools are not
shared (nothing to share on the target).
"""
import itertools
import threading

import torch

from ...core import compat
from ...core.patch import EMULATED, UNSUPPORTED, Patch
from ..device.errors import raiser
from . import synchronize as _sync

_pool_ids = itertools.count(1)
_capture = threading.local()  # .graph: the CUDAGraph capturing on this thread
_active = {"stream_class": None, "context_class": None}

_NO_REPLAY = frozenset({"aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty",
                        "aten::new_empty_strided"})
# Ops that write to arguments without saying so in their schema: name -> (argument positions, training flag position)
_HIDDEN_WRITES = {"aten::native_batch_norm": ((3, 4), 5)}
_HOST_TAGS = tuple(tag for tag in (getattr(torch.Tag, "data_dependent_output", None),
                                   getattr(torch.Tag, "dynamic_output_shape", None)) if tag is not None)


def _autocast_keys():
    keys = None
    for name in ("AutocastCPU", "AutocastCUDA", "AutocastMPS", "AutocastXPU", "AutocastXLA", "AutocastHPU",
                 "AutocastPrivateUse1", "AutocastMTIA", "AutocastMAIA", "AutocastIPU"):
        key = getattr(torch._C.DispatchKey, name, None)
        if key is not None:
            one = torch._C.DispatchKeySet(key)
            keys = one if keys is None else keys | one
    return keys


def is_current_stream_capturing():
    r"""Return True if a CUDA graph capture is underway on this thread, False otherwise."""
    return getattr(_capture, "graph", None) is not None


def graph_pool_handle():
    r"""Return an opaque token representing the id of a graph memory pool."""
    return (next(_pool_ids), 0)


def _capture_error(api, detail):
    target = _sync._target_name()
    return RuntimeError(f"{api}: {detail} (torchdevice emulates CUDA graphs on the {target} target)")


# -- recording ------------------------------------------------------------------------------
def _written(func, args, kwargs):
    """[(in_kwargs, key)] for every argument ``func`` writes to."""
    schema = func._schema
    slots = []
    for position, argument in enumerate(schema.arguments):
        alias = argument.alias_info
        if alias is not None and alias.is_write:
            slots.append(_slot(position, argument.name, args, kwargs))
    hidden = _HIDDEN_WRITES.get(schema.name)
    if hidden is not None:
        positions, training = hidden
        flag = _value(_slot(training, schema.arguments[training].name, args, kwargs), args, kwargs)
        if flag:
            slots += [_slot(p, schema.arguments[p].name, args, kwargs) for p in positions]
    return [s for s in slots if s is not None and _value(s, args, kwargs) is not None]


def _slot(position, name, args, kwargs):
    if position < len(args):
        return (False, position)
    if name in kwargs:
        return (True, name)
    return None


def _value(slot, args, kwargs):
    if slot is None:
        return None
    in_kwargs, key = slot
    return kwargs[key] if in_kwargs else args[key]


def _clone_written(slots, args, kwargs):
    """Args/kwargs with every written tensor replaced by a clone; {id(clone): original}."""
    args, kwargs = list(args), dict(kwargs)
    originals = {}

    def clone(value):
        if isinstance(value, torch.Tensor):
            copy = value.clone()
            originals[id(copy)] = (copy, value)
            return copy
        if isinstance(value, (list, tuple)):
            return type(value)(clone(v) for v in value)
        return value

    for in_kwargs, key in slots:
        if in_kwargs:
            kwargs[key] = clone(kwargs[key])
        else:
            args[key] = clone(args[key])
    return tuple(args), kwargs, originals


def _tensor_leaves(tree):
    return [leaf for leaf in torch.utils._pytree.tree_leaves(tree) if isinstance(leaf, torch.Tensor)]


def _recorder(owner):
    from torch.utils._python_dispatch import TorchDispatchMode

    tree_map = torch.utils._pytree.tree_map

    class _Recorder(TorchDispatchMode):
        """Records the ATen ops of a capture (see the module docstring)."""

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if _HOST_TAGS and any(tag in func.tags for tag in _HOST_TAGS):
                raise _capture_error(
                    "torch.cuda.graph capture",
                    f"{func} needs tensor values on the host, which CUDA graph capture does not allow "
                    f"(CUDA fails with 'operation not permitted when stream is capturing'); move it out of the "
                    f"captured region")
            slots = _written(func, args, kwargs)
            if slots:
                run_args, run_kwargs, clones = _clone_written(slots, args, kwargs)
                out = func(*run_args, **run_kwargs)
                for copy, original in clones.values():
                    if copy.shape != original.shape:
                        original.resize_(copy.shape)  # allocation is a host action: CUDA resizes at capture too

                def back(value):
                    pair = clones.get(id(value)) if isinstance(value, torch.Tensor) else None
                    return pair[1] if pair is not None and pair[0] is value else value
                out = tree_map(back, out)
            else:
                out = func(*args, **kwargs)
                if func.is_view or func._schema.name in _NO_REPLAY:
                    return out
            leaves = _tensor_leaves(out)
            if not slots and not leaves:
                return out  # a metadata query: nothing to redo
            inputs = {id(t) for t in _tensor_leaves((args, kwargs))}
            fresh = tuple((i, leaf) for i, leaf in enumerate(leaves) if id(leaf) not in inputs)
            owner._steps.append((func, args, kwargs, fresh))
            return out

    return _Recorder()


class CUDAGraph:
    r"""torch.cuda.CUDAGraph on the torchdevice target: capture records the ATen ops, replay re-runs them.

    Arguments:
        keep_graph (bool, optional): accepted; there is no cudaGraph_t to keep.
    """

    def __init__(self, keep_graph=False):
        self._steps = None
        self._recording = None
        self._pool = None
        self._debug = False

    def capture_begin(self, pool=None, capture_error_mode="global", check_input_liveness=False):
        r"""Begin recording the work issued on this thread."""
        if is_current_stream_capturing():
            raise _capture_error("torch.cuda.CUDAGraph.capture_begin", "a capture is already underway on this thread")
        self._steps = []
        self._pool = pool if pool is not None else graph_pool_handle()
        self._recording = _recorder(self)
        self._recording.__enter__()
        _capture.graph = self

    def capture_end(self):
        r"""End recording; ``replay`` may be called afterwards."""
        if self._recording is None:
            raise _capture_error("torch.cuda.CUDAGraph.capture_end", "no capture is underway for this graph")
        recording, self._recording = self._recording, None
        _capture.graph = None
        recording.__exit__(None, None, None)

    def instantiate(self):
        r"""Nothing to instantiate: the recorded work is replayed as is."""

    def replay(self):
        r"""Run the recorded work again, on what the static inputs hold now."""
        steps = self._steps
        if steps is None or self._recording is not None:
            raise _capture_error("torch.cuda.CUDAGraph.replay", "the graph has no finished capture to replay")
        with compat.below_ad_inplace_or_view(), torch._C._ExcludeDispatchKeyGuard(_AUTOCAST):
            for func, args, kwargs, fresh in steps:
                out = func(*args, **kwargs)
                if fresh:
                    leaves = _tensor_leaves(out)
                    for i, captured in fresh:
                        captured.copy_(leaves[i])

    def reset(self):
        r"""Delete the recorded work."""
        if self._recording is not None:
            self.capture_end()
        self._steps = None

    def pool(self):
        r"""Return an opaque token representing the id of this graph's memory pool."""
        if self._pool is None:
            self._pool = graph_pool_handle()
        return self._pool

    def enable_debug_mode(self):
        r"""Allow ``debug_dump``."""
        self._debug = True

    def debug_dump(self, debug_path):
        r"""Write the recorded ops, one per line, to ``debug_path``."""
        with open(debug_path, "w", encoding="utf-8") as handle:
            for func, _args, _kwargs, _fresh in self._steps or ():
                handle.write(f"{func}\n")

    def _raw(self, api):
        raise _capture_error(api, "there is no cudaGraph_t off CUDA; use capture and replay() only")

    def raw_cuda_graph(self):
        self._raw("torch.cuda.CUDAGraph.raw_cuda_graph")

    def raw_cuda_graph_exec(self):
        self._raw("torch.cuda.CUDAGraph.raw_cuda_graph_exec")

    def get_graph_data(self):
        self._raw("torch.cuda.CUDAGraph.get_graph_data")


_AUTOCAST = _autocast_keys()


class graph:
    r"""Context-manager that captures work into a :class:`torch.cuda.CUDAGraph` for later replay.

    Arguments:
        cuda_graph (torch.cuda.CUDAGraph): graph object used for capture.
        pool (optional): accepted (memory pools are not shared on the target).
        stream (torch.cuda.Stream, optional): selected during the capture
            (default: a side stream shared by all captures, as torch does).
        capture_error_mode (str, optional): accepted; capture records this thread only.
    """

    default_capture_stream = None

    def __init__(self, cuda_graph, pool=None, stream=None, capture_error_mode="global", enable_annotations=False,
                 check_input_liveness=False):
        if stream is None and self.__class__.default_capture_stream is None:
            self.__class__.default_capture_stream = _active["stream_class"]()
        self.pool = () if pool is None else (pool,)
        self.capture_stream = stream if stream is not None else self.__class__.default_capture_stream
        self.stream_ctx = _active["context_class"](self.capture_stream)
        self.cuda_graph = cuda_graph
        self.capture_error_mode = capture_error_mode

    def __enter__(self):
        self.stream_ctx.__enter__()
        try:
            self.cuda_graph.capture_begin(*self.pool, capture_error_mode=self.capture_error_mode)
        except BaseException:
            self.stream_ctx.__exit__(None, None, None)
            raise

    def __exit__(self, exc_type, exc, tb):
        try:
            self.cuda_graph.capture_end()
            if exc_type is not None:
                self.cuda_graph.reset()  # a failed capture leaves nothing to replay, as on CUDA
        finally:
            self.stream_ctx.__exit__(exc_type, exc, tb)


def _autocast_on():
    """Autocast for CUDA, or for the target CUDA autocast is redirected to."""
    return compat.is_autocast_enabled("cuda") or compat.is_autocast_enabled(_sync._target_name())


def make_graphed_callables(callables, sample_args, num_warmup_iters=3, allow_unused_input=False, pool=None):
    r"""Return the callables unchanged: they run eagerly with eager outputs and gradients.

    The arguments are checked as torch checks them (no autocast caching, no
    module hooks, only parameters trainable, tensor-only sample args).
    """
    if _autocast_on() and torch.is_autocast_cache_enabled():
        raise RuntimeError(
            "make_graphed_callables does not support the autocast caching. Please set `cache_enabled=False`.")
    just_one = not isinstance(callables, tuple)
    group = (callables,) if just_one else callables
    group_args = (sample_args,) if just_one else sample_args
    for func, args in zip(group, group_args):
        if isinstance(func, torch.nn.Module):
            if func._backward_hooks or func._forward_hooks or func._forward_pre_hooks:
                raise AssertionError(
                    "Modules must not have hooks registered at the time they are passed. However, registering "
                    "hooks on modules after passing them through make_graphed_callables is allowed.")
            if any(b.requires_grad for b in func.buffers()):
                raise AssertionError(
                    "In any :class:`~torch.nn.Module` passed to :func:`~make_graphed_callables`, only parameters "
                    "may be trainable. All buffers must have ``requires_grad=False``.")
        if not all(isinstance(arg, torch.Tensor) for arg in torch.utils._pytree.arg_tree_leaves(*args)):
            raise AssertionError(
                "In the beta API, sample_args for each callable must contain only Tensors. Other types are not "
                "allowed.")
    return callables


def _publish(obj):
    return lambda original: obj


def records(stream_class, context_class):
    """The graph records of the streams area."""
    _active["stream_class"] = stream_class
    _active["context_class"] = context_class
    graph.default_capture_stream = None
    out = []
    for owner in ("torch.cuda", "torch.cuda.graphs"):
        out += [
            Patch(owner, "CUDAGraph", _publish(CUDAGraph), kind=EMULATED,
                  note="capture records the ATen ops; replay re-runs them on the static tensors"),
            Patch(owner, "graph", _publish(graph), kind=EMULATED, note="captures into a CUDAGraph"),
            Patch(owner, "make_graphed_callables", _publish(make_graphed_callables), kind=EMULATED,
                  note="returns the callables: they run eagerly"),
            Patch(owner, "is_current_stream_capturing", _publish(is_current_stream_capturing), kind=EMULATED,
                  note="True only inside a capture on this thread"),
            Patch(owner, "graph_pool_handle", _publish(graph_pool_handle), kind=EMULATED,
                  note="opaque token; pools are not shared"),
        ]
        # torch >= 2.14: hooks that dump the captured cudaGraph_t (DOT file, pickled graph data).
        for name, what in (("export_dot", "a DOT dump"), ("export_graph_data", "the graph data")):
            out.append(Patch(owner, name, lambda original, name=name, what=what: raiser(
                f"torch.cuda.{name}", _sync._target_name(), f"{what} describes a captured cudaGraph_t, and the "
                "target's graphs record ATen ops instead", "Inspect the captured work with torch.profiler; "
                "capture and replay() work as on CUDA.", original), kind=UNSUPPORTED, note="clear error"))
    return out

