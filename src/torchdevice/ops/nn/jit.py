"""TorchScript (torch.jit.script / trace / load) of CUDA code on the target.

* Builtins. TorchScript compiles a call to ``torch.zeros`` by looking the
  function object up in its builtin table, which torch fills when it is
  imported, before torchdevice wraps ``torch.zeros``. Every torchdevice
  replacement of a function TorchScript knows as an aten op is entered in that
  table under the same op, so scripted code that calls a wrapped factory
  compiles as it would unpatched.
* Device constants. TorchScript turns ``device="cuda"``, ``torch.device("cuda:0")``,
  ``x.to("cuda")`` into constants and ``x.cuda()`` into the op ``aten::cuda``,
  which the Python patches never see. After ``torch.jit.script`` (and
  ``torch.jit.load``) the compiled graphs are rewritten: CUDA device constants
  become the target device and ``aten::cuda`` becomes ``aten::to(target)``.
  ``torch.jit.load`` also maps ``map_location`` None or CUDA to the target, so
  a model saved on a GPU loads.
* ``torch.jit.trace`` records what the patched Python code did, which is
  already on the target; nothing to do.

torch.compile: dynamo folds ``torch.device("cuda")`` through the device
stand-in, and ``torch.cuda.is_available()`` answers for the code being compiled
(core/device.py ``caller_sees_truth``). Dynamo keeps a table of torch functions
it folds to constants at trace time (``constant_fold_functions``), filled with
the function objects present when dynamo is imported. When dynamo was imported
before torchdevice activated, the table names the originals; each torchdevice
replacement of a listed function is added to it, so it folds as the original
did (otherwise torch 2.2 puts ``torch.cuda.is_available()`` in the graph and
fails on its bool result).
"""
import functools

import torch

from ...core import device as _device
from ...core.patch import MISSING, REDIRECTED, REGISTRY, Patch

_BUILTIN_TABLE = "torch.jit._builtins._builtin_table"


def _rewrite_graph(graph, target_device):
    """Retarget CUDA device constants and ``aten::cuda`` calls in one TorchScript graph."""
    for node in graph.findAllNodes("prim::Constant"):
        value = node.output()
        if value.type().kind() == "DeviceObjType" and value.toIValue().type == "cuda":
            new = graph.insertConstant(target_device)
            new.node().moveBefore(node)
            value.replaceAllUsesWith(new)
            node.destroy()
    for node in graph.findAllNodes("aten::cuda"):
        if len(list(node.inputs())) != 1:
            continue
        constants = [graph.insertConstant(v) for v in (target_device, None, False)]
        for constant in constants:
            constant.node().moveBefore(node)
        device, none, false = constants
        to = graph.create("aten::to", [node.input(), device, none, false, false], 1)
        to.insertBefore(node)
        to.output().setType(node.output().type())
        node.output().replaceAllUsesWith(to.output())
        node.destroy()


def _retarget(obj, target_device):
    """Rewrite every graph reachable from a scripted function or module."""
    graphs = []
    if isinstance(obj, torch.jit.ScriptModule):
        for module in obj.modules():
            if isinstance(module, torch.jit.ScriptModule):
                graphs += [module._c._get_method(name).graph for name in module._c._method_names()]
    elif isinstance(obj, torch.jit.ScriptFunction):
        graphs.append(obj.graph)
    state = getattr(torch.jit, "_state", None)
    unit = getattr(state, "_python_cu", None)
    if unit is not None:  # free functions scripted along with obj
        graphs += [function.graph for function in unit.get_functions()]
    for graph in graphs:
        _rewrite_graph(graph, target_device)
    return obj


def _script(target):
    def make(original):
        def script(obj, optimize=None, _frames_up=0, _rcb=None, example_inputs=None):
            # One frame more: TorchScript resolves names from the caller's frame.
            result = original(obj, optimize, _frames_up + 1, _rcb, example_inputs)
            return _retarget(result, target.device)
        return functools.wraps(original)(script)
    return make


def _load(target):
    def make(original):
        def load(f, map_location=None, _extra_files=None, _restore_shapes=False):
            if map_location is None or _device.is_cuda_spec(map_location):
                map_location = target.device
            result = original(f, map_location, _extra_files, _restore_shapes)
            return _retarget(result, target.device)
        return functools.wraps(original)(load)
    return make


def _builtin_aliases():
    """Records entering each torchdevice replacement of an aten builtin into TorchScript's table."""
    from torch.jit import _builtins

    table = getattr(_builtins, "_builtin_table", None)
    if not isinstance(table, dict):
        return []  # not built yet: when torch builds it, it reads the patched names
    out = []
    for _, applied in REGISTRY.applied_records():
        if applied.record.key is not None or applied.original is MISSING:
            continue
        op = table.get(id(applied.original))
        function = getattr(applied.replacement, "__func__", applied.replacement)
        if op is None or id(function) in table:
            continue
        out.append(Patch(_BUILTIN_TABLE, applied.record.target, (lambda original, op=op: op),
                         key=(lambda ident=id(function): ident), create=True,
                         note="scripted code compiles the wrapper as its aten op"))
    return out


_CONSTANT_FOLD = "torch._dynamo.variables.torch"


def _constant_fold(original):
    """dynamo's constant-fold table (a list, or a dict of keys) plus the replacements of its functions."""
    listed = set(map(id, original))
    extra = [applied.replacement for _, applied in REGISTRY.applied_records()
             if applied.record.key is None and id(applied.original) in listed
             and id(applied.replacement) not in listed]
    if isinstance(original, dict):
        return {**original, **dict.fromkeys(extra)}
    return type(original)(list(original) + extra)


def _signature_matches(function, names):
    import inspect

    try:
        return tuple(inspect.signature(function).parameters)[:len(names)] == names
    except (TypeError, ValueError):
        return False


def records():
    target = _device.current()
    out = _builtin_aliases()
    out.append(Patch(_CONSTANT_FOLD, "constant_fold_functions", _constant_fold,
                     note="torch.compile folds torchdevice's replacements as it folds the originals"))
    if _signature_matches(torch.jit.script, ("obj", "optimize", "_frames_up", "_rcb", "example_inputs")):
        out.append(Patch("torch.jit", "script", _script(target), kind=REDIRECTED,
                         note="CUDA device constants and .cuda() in scripted graphs run on the target"))
    if _signature_matches(torch.jit.load, ("f", "map_location", "_extra_files", "_restore_shapes")):
        out.append(Patch("torch.jit", "load", _load(target), kind=REDIRECTED,
                         note="GPU-saved TorchScript models load onto the target"))
    return out
