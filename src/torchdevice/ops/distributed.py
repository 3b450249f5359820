"""Area "distributed": NCCL process groups of CUDA scripts run on gloo.

* ``init_process_group("nccl")``, ``backend="cuda:nccl,cpu:gloo"`` (any
  ``device:backend`` list), ``new_group``/``new_subgroups*`` with NCCL: the
  NCCL part becomes gloo (entries for ``cuda`` are dropped, ``cpu:gloo`` is
  kept or added). NCCL-only ``pg_options`` are dropped with the NCCL backend.
  ``device_id`` naming a CUDA device names the target (on a CPU target it is
  dropped: a CPU process group binds no device). ``init_method`` (``env://``
  under torchrun, ``tcp://``, a store) is untouched.
* What user code is told (consistent with the ``torch.cuda`` masquerade, and
  only while ``TORCHDEVICE_MASQUERADE`` is on): ``dist.get_backend()`` answers
  the backend the program asked for (``"nccl"``) for groups torchdevice
  rewrote, and ``dist.is_nccl_available()`` answers True. torch itself (DDP,
  FSDP, c10d) gets the real answers ("gloo", False), as for ``is_available``.
  Code that branches on them takes its CUDA path, which lands on the target.
* ``barrier(device_ids=[local_rank])``: CUDA device ids name the one target
  device; gloo's barrier takes no device, so they are dropped.
* ``init_device_mesh("cuda", ...)`` / ``DeviceMesh("cuda", ...)``: a mesh of the
  target's device type. ``FullyShardedDataParallel(device_id=<CUDA index or
  device>)`` initialises and computes on the target device.
* Collectives on target tensors: gloo takes CPU tensors, so on a CPU target
  ``all_reduce``/``broadcast``/``all_gather`` & co. need nothing. On a target
  whose tensors gloo cannot take (MPS), these collectives stage through CPU
  copies (copied back after the operation; with ``async_op=True`` the
  operation is waited for before returning).
"""
import functools
import inspect

import torch

from ..core import device as _device
from ..core.logger import get_logger
from ..core.patch import EMULATED, REGISTRY, Patch, active_config
from . import collectives as _collectives

AREA = "distributed"
log = get_logger(AREA)
_RealDevice = torch._C.device
# Process group -> the backend string the program asked for, where torchdevice changed it
# (None: the program asked for a backend of its own choice, e.g. "gloo", which stays as it is).
_asked = {}
_INHERIT = object()


def asked_for(group=None):
    """The backend the program asked for on ``group`` where torchdevice rewrote it, else None.

    Groups made without a backend of their own (``new_group(ranks)``, a DeviceMesh's groups,
    which torch makes internally) inherit from the default group, as they take its NCCL on a
    GPU: a gloo group made while the default group's NCCL was rewritten counts as rewritten.
    """
    if not _asked:
        return None
    import torch.distributed as dist

    key = dist.group.WORLD if group is None else group
    asked = _asked.get(key, _INHERIT)
    if asked is _INHERIT:
        world = _asked.get(dist.group.WORLD)
        asked = world if world is not None and _real_backend(key) == "gloo" else None
        _asked[key] = asked
    return asked


def _real_backend(group):
    import torch.distributed.distributed_c10d as c10d

    try:
        return str(c10d.get_backend(group))
    except (RuntimeError, ValueError):
        return None


def _gloo_backend(backend):
    """Map a backend request to one this machine has: NCCL -> gloo. Returns (backend, changed)."""
    if backend is None:
        return None, False
    text = str(backend).strip().lower()
    if ":" not in text:
        return ("gloo", True) if text == "nccl" else (backend, False)
    pairs = [item.split(":", 1) for item in text.split(",") if item.strip()]
    kept = [(dev.strip(), name.strip()) for dev, name in pairs if dev.strip() != "cuda"]
    if not any(dev == "cpu" for dev, _ in kept):
        kept.insert(0, ("cpu", "gloo"))
    kept = [(dev, "gloo" if name == "nccl" else name) for dev, name in kept]
    mapped = ",".join(f"{dev}:{name}" for dev, name in kept)
    return mapped, mapped != text


def _device_id(spec, target):
    if spec is None or not (_device.is_cuda_spec(spec) or (type(spec) is _RealDevice and spec.type == target.type)):
        return spec
    return None if target.type == "cpu" else target.device


def _rewriting(names, remember, target):
    """Wrapper for functions taking ``backend``/``pg_options``/``device_id`` arguments."""
    def make(original):
        signature = inspect.signature(original)

        def wrapper(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            arguments = bound.arguments
            asked = arguments.get("backend")
            mapped, changed = _gloo_backend(asked)
            if changed:
                arguments["backend"] = mapped
                if arguments.get("pg_options") is not None:
                    arguments["pg_options"] = None  # NCCL options mean nothing to gloo
                log.debug("%s: backend %r runs as %r", original.__name__, asked, mapped)
            if "device_id" in names and arguments.get("device_id") is not None:
                arguments["device_id"] = _device_id(arguments["device_id"], target)
            result = original(*bound.args, **bound.kwargs)
            if changed:
                remember(result, str(asked))
            elif asked is not None and remember is not _remember_default:
                remember(result, None)  # a backend of the program's own choice: left as it is
            return result
        return functools.wraps(original)(wrapper)
    return make


def _remember_default(result, asked):
    import torch.distributed as dist

    _asked[dist.group.WORLD] = asked


def _remember_group(result, asked):
    if result is not None:
        _asked[result] = asked


def _remember_subgroups(result, asked):
    current, groups = result
    for group in groups:
        _asked[group] = asked
    if current is not None:
        _asked[current] = asked


def _get_backend(truthful):
    sees_truth = _device.caller_sees_truth

    def make(original):
        def get_backend(group=None):
            real = original(group)
            if not _asked or sees_truth(truthful):
                return real
            import torch.distributed as dist

            asked = asked_for(group)
            return real if asked is None else dist.Backend(asked)
        return functools.wraps(original)(get_backend)
    return make


def _is_nccl_available(truthful):
    sees_truth = _device.caller_sees_truth

    def make(original):
        def is_nccl_available():
            return original() if sees_truth(truthful) else True
        return functools.wraps(original)(is_nccl_available)
    return make


def _barrier(target):
    def make(original):
        signature = inspect.signature(original)

        def barrier(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            ids = bound.arguments.get("device_ids")
            if ids is not None and all(_device.is_cuda_spec(i) for i in ids):
                bound.arguments["device_ids"] = None  # one target device; gloo's barrier takes none
            return original(*bound.args, **bound.kwargs)
        return functools.wraps(original)(barrier)
    return make


def _fsdp_init(target):
    """FullyShardedDataParallel(device_id=<CUDA index or device>) initialises on the target."""
    def make(original):
        signature = inspect.signature(original)

        def __init__(self, *args, **kwargs):
            bound = signature.bind(self, *args, **kwargs)
            spec = bound.arguments.get("device_id")
            if spec is not None and (_device.is_cuda_spec(spec)
                                     or (type(spec) is _RealDevice and spec.type == target.type)):
                bound.arguments["device_id"] = target.device
            return original(*bound.args, **bound.kwargs)
        return functools.wraps(original)(__init__)
    return make


def _mesh_function(target):
    def make(original):
        def init_device_mesh(device_type, *args, **kwargs):
            return original(target.type if device_type == "cuda" else device_type, *args, **kwargs)
        return functools.wraps(original)(init_device_mesh)
    return make


def _mesh_init(target):
    def make(original):
        def __init__(self, device_type, *args, **kwargs):
            return original(self, target.type if device_type == "cuda" else device_type, *args, **kwargs)
        return functools.wraps(original)(__init__)
    return make


# -- staging through the CPU (targets whose tensors the backend cannot take) -----------------------
# collective -> (arguments it writes, arguments it only reads)
_STAGED = {
    "all_reduce": (("tensor",), ()),
    "broadcast": (("tensor",), ()),
    "reduce": (("tensor",), ()),
    "all_gather": (("tensor_list",), ("tensor",)),
    "all_gather_into_tensor": (("output_tensor",), ("input_tensor",)),
    "reduce_scatter_tensor": (("output",), ("input",)),
    "all_to_all_single": (("output",), ("input",)),
}


def _staged(device_type, written, read):
    """Wrap a collective so that ``device_type`` tensors travel as CPU copies."""
    def on_device(value):
        if isinstance(value, torch.Tensor):
            return value.device.type == device_type
        return isinstance(value, (list, tuple)) and any(on_device(v) for v in value)

    def to_cpu(value):
        if isinstance(value, torch.Tensor):
            return value.to("cpu", copy=True) if value.device.type == device_type else value
        return [to_cpu(v) for v in value]

    def copy_back(home, copy):
        if isinstance(home, torch.Tensor):
            if home is not copy:
                home.copy_(copy)
        else:
            for h, c in zip(home, copy):
                copy_back(h, c)

    def make(original):
        signature = inspect.signature(original)

        def collective(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            arguments = bound.arguments
            names = [n for n in (*written, *read) if on_device(arguments.get(n))]
            if not names:
                return original(*args, **kwargs)
            homes = {n: arguments[n] for n in names}
            for name in names:
                arguments[name] = to_cpu(arguments[name])
            result = original(*bound.args, **bound.kwargs)
            if result is not None and hasattr(result, "wait"):
                result.wait()
            for name in written:
                if name in homes:
                    copy_back(homes[name], arguments[name])
            return result
        return functools.wraps(original)(collective)
    return make


def _backend_takes(device_type, backend="gloo"):
    import torch.distributed as dist

    capability = getattr(dist.Backend, "backend_capability", {}).get(backend)
    return capability is None or device_type in capability


def records():
    import torch.distributed as dist

    if not dist.is_available():
        return []
    target = _device.current()
    cfg = active_config()
    c10d = "torch.distributed"
    out = [
        Patch(c10d, "init_process_group", _rewriting(("device_id",), _remember_default, target),
              note="nccl -> gloo; CUDA device_id -> target"),
        Patch(c10d, "new_group", _rewriting(("device_id",), _remember_group, target), note="nccl -> gloo"),
        Patch(c10d, "new_subgroups", _rewriting((), _remember_subgroups, target), note="nccl -> gloo"),
        Patch(c10d, "new_subgroups_by_enumeration", _rewriting((), _remember_subgroups, target),
              note="nccl -> gloo"),
        Patch(c10d, "barrier", _barrier(target), note="CUDA device_ids name the one target device"),
        Patch(c10d, "init_device_mesh", _mesh_function(target), note="'cuda' meshes use the target type"),
        Patch("torch.distributed.device_mesh", "init_device_mesh", _mesh_function(target)),
        Patch("torch.distributed.device_mesh.DeviceMesh", "__init__", _mesh_init(target)),
        # torch.distributed.fsdp is imported by the program, after torch: a
        # registry that defers records to their module's import applies it then.
        Patch("torch.distributed.fsdp.FullyShardedDataParallel", "__init__", _fsdp_init(target),
              note="CUDA device_id names the target"),
    ]
    if cfg.masquerade:
        out += [
            Patch(c10d, "get_backend", _get_backend(cfg.truthful_modules), kind=EMULATED,
                  note="user code: the backend it asked for ('nccl'); torch: the real one"),
            Patch(c10d, "is_nccl_available", _is_nccl_available(cfg.truthful_modules), kind=EMULATED,
                  note="True for user code, the real answer for torch itself"),
        ]
    staging = not _backend_takes(target.type)
    sees_truth = functools.partial(_device.caller_sees_truth, cfg.truthful_modules, 2)
    for name in _collectives.COMPOSED:
        if name not in dist.__dict__:
            continue  # not in this torch release
        make = _collectives.nccl_semantics(name, asked_for, sees_truth)
        note = "NCCL's semantics on groups moved from NCCL to gloo"
        if staging and name in _STAGED:
            make = _then(make, _staged(target.type, *_STAGED[name]))
            note += f"; {target.type} tensors travel as CPU copies (gloo takes CPU tensors)"
        out.append(Patch(c10d, name, make, kind=EMULATED, note=note))
    if "_make_nccl_premul_sum" in dist.__dict__:
        out.append(Patch(c10d, "_make_nccl_premul_sum", _collectives.premul_sum_maker,
                         note="PREMUL_SUM's factor, for the composition on gloo"))
    return out


def _then(inner, outer):
    """A patch maker applying ``inner`` to the original, then ``outer`` around it."""
    return lambda original: outer(inner(original))


def apply_patches():
    """Apply the distributed area (fenced: a second call changes nothing)."""
    return REGISTRY.apply_area(AREA, records())
