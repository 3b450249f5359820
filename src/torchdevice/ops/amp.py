"""Area "amp": CUDA mixed precision (autocast, GradScaler, custom_fwd/bwd) runs on the target.

Autocast. ``torch.autocast("cuda")``, ``torch.amp.autocast("cuda")`` and
``torch.cuda.amp.autocast()`` keep their class (decorators, ``isinstance`` and
torch.compile's special handling of autocast all keep working); only
``autocast.__init__``, ``__enter__`` and ``__exit__`` are wrapped. A "cuda"
autocast region switches on autocast for the target device type (that is what
casts the target's tensors) and, in addition, sets torch's own CUDA autocast
state to the same values, so ``torch.is_autocast_enabled()``,
``torch.is_autocast_enabled("cuda")``, ``torch.get_autocast_gpu_dtype()`` and
``torch.get_autocast_dtype("cuda")`` answer inside the region exactly what
they answer on a GPU. Those query functions are not wrapped. The object keeps
``device == "cuda"``, so a pre-built autocast object that torch.compile meets
is re-created through the same mapping.

The dtype a region asks for (float16 unless given, as on CUDA) is kept when
this torch's autocast for the target supports it. Otherwise the nearest
supported one is used (float16 <-> bfloat16) with a one-time
``TorchDeviceWarning``; with neither, the region runs in float32 (autocast off)
with a one-time warning. Support is discovered by asking torch's own autocast
for the target, not from a version number. ``enabled=False`` stays disabled and
switches the target's autocast off inside the region, as on a GPU.

GradScaler. ``torch.amp.GradScaler("cuda")`` and ``torch.cuda.amp.GradScaler()``
become torch's scaler for the target device type. Where this torch has only
the older device-less ``torch.cuda.amp.GradScaler`` and its ``scale()`` accepts
CUDA tensors only (probed, torch 2.2), ``scale()`` is replaced by the same
arithmetic without that check, and so is the constructor of the helper that
serves the scale and the inf flag to ``unscale_()``/``step()``
(``_MultiDeviceReplicator``). If this torch has no
target kernel for ``_amp_foreach_non_finite_check_and_unscale_`` or
``_amp_update_scale_`` (probed once, on the target), those two functions get a
Python implementation for target tensors, so unscaling, inf/nan step skipping
and scale growth/backoff still work. ``amp_definitely_not_available()`` answers
False: mixed precision is available on the target.

``custom_fwd``/``custom_bwd`` with ``device_type="cuda"`` (and the
``torch.cuda.amp`` versions) work unchanged through the autocast class above;
their input cast (``cast_inputs=``) goes through ``autocast_mode._cast``,
which is told that "cuda" tensors are the target's tensors (torch 2.2 has only
``torch.cuda.amp``'s own ``_cast``, which casts ``is_cuda`` tensors: it is
replaced by one that casts the target's).
"""
import functools
import inspect
import warnings
from collections import abc

import torch

from ..core import compat
from ..core import device as _device
from ..core.logger import warn_once
from ..core.patch import EMULATED, REGISTRY, Patch
from . import autocast_numerics as _numerics
from . import precision as _precision

AREA = "amp"
_CUDA = "cuda"
_HALF_TYPES = (torch.float16, torch.bfloat16)


# -- what the target's autocast supports ------------------------------------------------
def _autocast_dtypes(device_type):
    """The low-precision dtypes torch's own autocast accepts for ``device_type``."""
    autocast = torch.amp.autocast_mode.autocast
    supported = []
    for dtype in _HALF_TYPES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                probe = autocast(device_type, dtype=dtype)
        except (RuntimeError, AssertionError, ValueError):
            continue  # no autocast at all for this device type in this torch
        if probe._enabled:
            supported.append(dtype)
    return tuple(supported)


def _dtype_plan(device_type, supported):
    """requested dtype -> (dtype to run, warning or None), decided once."""
    plan = {}
    for requested in _HALF_TYPES:
        if requested in supported:
            plan[requested] = (requested, None)
        elif supported:
            chosen = supported[0]
            plan[requested] = (chosen, (
                f"torchdevice: autocast('cuda', dtype={requested}) runs as {chosen} on {device_type}: "
                f"this torch's {device_type} autocast does not support {requested}."))
        else:
            plan[requested] = (None, (
                f"torchdevice: autocast('cuda', dtype={requested}) is off on {device_type}: this torch has no "
                f"{device_type} autocast for float16 or bfloat16, so the region runs in float32."))
    plan[torch.float32] = (torch.float32 if torch.float32 in supported else None, None)  # float32 "autocast" = none
    return plan


# -- autocast ----------------------------------------------------------------------------------
def _runner(target_type, plan, policy):
    """requested dtype -> (dtype the target's autocast runs, or None for float32; warning or None)."""
    def run(requested):
        if requested in _HALF_TYPES:
            decided, _ = policy.decide(requested)
            if decided is None:
                return None, None
            return plan[decided]
        return plan.get(requested, (None, None))
    return run


def _autocast_init(target_type, plan, policy, supported):
    run = _runner(target_type, plan, policy)
    idle = supported[0] if supported else torch.float32  # a dtype the target accepts, for a region that is off

    def make(original):
        scripting = torch._jit_internal.is_scripting
        get_dtype = compat.get_autocast_dtype

        def __init__(self, device_type, dtype=None, enabled=True, cache_enabled=None):
            if device_type != _CUDA or scripting():
                return original(self, device_type, dtype, enabled, cache_enabled)
            requested = get_dtype(_CUDA) if dtype is None else dtype
            chosen, warning = run(requested)
            if warning is not None and enabled:
                warn_once(("autocast", target_type, requested), warning)
            if enabled and chosen is None and requested not in plan:
                warn_once(("autocast", target_type, requested),
                          f"torchdevice: autocast('cuda', dtype={requested}) is off on {target_type}: "
                          f"autocast supports only float16 and bfloat16 there.")
            if chosen is None:
                original(self, target_type, idle, False, cache_enabled)
            else:
                original(self, target_type, chosen, enabled, cache_enabled)
            # What the target's autocast runs; the object itself keeps CUDA's identity and the
            # requested state: queries, nested regions, custom_bwd and torch.compile (which
            # re-creates autocast objects from their attributes) see what a GPU shows.
            # A region the policy upcasts runs the target's autocast in float32: ops keep
            # CUDA's per-op policy (exp of a float16 tensor computes in float32) without
            # casting anything down.
            upcast = chosen is None and requested in _HALF_TYPES and bool(supported)
            self._torchdevice_run = (bool(enabled) and (chosen is not None or upcast),
                                     chosen if chosen is not None else torch.float32)
            self._torchdevice_target = target_type
            self.device = _CUDA
            self.fast_dtype = requested
            self._enabled = enabled
        return functools.wraps(original)(__init__)
    return make


def _autocast_enter(kernels):
    def make(original):
        set_enabled, set_dtype = compat.set_autocast_enabled, compat.set_autocast_dtype
        is_enabled, get_dtype = compat.is_autocast_enabled, compat.get_autocast_dtype

        def __enter__(self):
            target = getattr(self, "_torchdevice_target", None)
            if target is not None:
                on, dtype = self._torchdevice_run
                if on and kernels.ops is None:
                    kernels.ensure()  # CUDA's per-op policies, registered on the first region that casts
                self._torchdevice_prev = (is_enabled(target), get_dtype(target))
                set_enabled(target, on)
                set_dtype(target, dtype)
            return original(self)  # sets torch's CUDA state, nesting, cache, export tracing
        return functools.wraps(original)(__enter__)
    return make


def _autocast_exit(original):
    set_enabled, set_dtype = compat.set_autocast_enabled, compat.set_autocast_dtype

    def __exit__(self, exc_type, exc_val, exc_tb):
        result = original(self, exc_type, exc_val, exc_tb)
        previous = getattr(self, "_torchdevice_prev", None)
        if previous is not None:
            target = self._torchdevice_target
            set_enabled(target, previous[0])
            set_dtype(target, previous[1])
        return result
    return functools.wraps(original)(__exit__)


def _cast(target_type, plan, policy):
    run = _runner(target_type, plan, policy)

    def make(original):
        def _cast(value, device_type, dtype):
            if device_type == _CUDA:
                # custom_fwd(cast_inputs=...) casts to what the region really runs in.
                return original(value, target_type, run(dtype)[0] or torch.float32)
            return original(value, device_type, dtype)
        return functools.wraps(original)(_cast)
    return make


def _legacy_cast(target_type):
    def make(original):
        amp_cast = torch.amp.autocast_mode._cast  # the 3-argument version (patched by then)

        def _cast(value, dtype):
            return amp_cast(value, _CUDA, dtype)  # "cuda": the target's tensors, the policy's dtype
        return functools.wraps(original)(_cast)
    return make


def _tensor_cast(target_type, plan, policy):
    """torch.cuda.amp's own 2-argument ``_cast`` where torch.amp has none (torch < 2.4).

    That version casts only ``value.is_cuda`` tensors and recurses through the
    module-level name for containers; this replacement casts the target's
    floating-point tensors (float64 excepted, as there) and hands everything
    else to the original, whose recursion comes back here.
    """
    run = _runner(target_type, plan, policy)

    def make(original):
        float64 = torch.float64

        def _cast(value, dtype):
            if isinstance(value, torch.Tensor):
                eligible = (value.is_floating_point() and value.device.type == target_type
                            and value.dtype is not float64)
                return value.to(run(dtype)[0] or torch.float32) if eligible else value
            return original(value, dtype)
        return functools.wraps(original)(_cast)
    return make


def _available(original):
    def amp_definitely_not_available():
        return False  # mixed precision runs on the torchdevice target
    return functools.wraps(original)(amp_definitely_not_available)


# -- GradScaler ------------------------------------------------------------------------------
def _scaler_init(target_type):
    def make(original):
        def __init__(self, device=_CUDA, *args, **kwargs):
            if device == _CUDA:
                device = target_type
            return original(self, device, *args, **kwargs)
        return functools.wraps(original)(__init__)
    return make


def _scale_any_device(original):
    """GradScaler.scale without the CUDA-only check of older torch (same arithmetic)."""
    def scale(self, outputs):
        if not self._enabled:
            return outputs

        def apply(value):
            if isinstance(value, torch.Tensor):
                if self._scale is None:
                    self._lazy_init_scale_growth_tracker(value.device)
                return value * self._scale.to(device=value.device, non_blocking=True)
            if isinstance(value, (list, tuple)):
                return type(value)(apply(v) for v in value)
            if isinstance(value, abc.Iterable):
                return map(apply, value)
            raise ValueError("outputs must be a Tensor or an iterable of Tensors")
        return apply(outputs)
    return functools.wraps(original)(scale)


def _replicator_init(original):
    """_MultiDeviceReplicator.__init__ without the CUDA-only assertion of older torch (same state)."""
    def __init__(self, master_tensor):
        self.master = master_tensor
        self._per_device_tensors = {}
    return functools.wraps(original)(__init__)


def _legacy_scaler_scales(device):
    """Whether the device-less (pre torch.amp.GradScaler) scaler accepts ``device`` tensors."""
    scaler = torch.cuda.amp.GradScaler
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probe = scaler(init_scale=2.0)
    probe._enabled = True  # it disabled itself: CUDA is missing and the patches are not applied yet
    try:
        return bool(probe.scale(torch.ones((), device=device)) == 2.0)
    except (AssertionError, RuntimeError):
        return False


def _scaler_kernels_work(device):
    """Whether this torch has target kernels for the two GradScaler ops."""
    try:
        grads = [torch.ones(2, device=device)]
        found_inf = torch.zeros((), device=device)
        inv_scale = torch.ones((), device=device)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv_scale)
        scale = torch.ones((), device=device)
        tracker = torch.zeros((), dtype=torch.int32, device=device)
        torch._amp_update_scale_(scale, tracker, found_inf, 2.0, 0.5, 2000)
        return True
    except (RuntimeError, NotImplementedError):
        return False


def _unscale_and_check(grads, found_inf, inv_scale):
    """Python version of ``_amp_foreach_non_finite_check_and_unscale_``.

    Multiplies every gradient by ``inv_scale`` in place and sets ``found_inf``
    to 1.0 if any gradient holds an inf or nan. Runs without host syncs.
    """
    for grad in grads:
        bad = torch.logical_not(torch.isfinite(grad)).any()
        found_inf.copy_(torch.maximum(found_inf, bad.to(found_inf.dtype)))
        grad.mul_(inv_scale.to(grad.dtype))


def _update_scale(scale, growth_tracker, found_inf, growth_factor, backoff_factor, growth_interval):
    """Python version of ``_amp_update_scale_`` (same rule, in place, no host syncs).

    After an inf/nan step the scale is multiplied by ``backoff_factor`` and the
    tracker resets; after ``growth_interval`` clean steps in a row it is
    multiplied by ``growth_factor`` (unless that would overflow) and the tracker
    resets; otherwise the tracker counts the clean step.
    """
    had_inf = found_inf > 0
    clean = growth_tracker + 1
    grow = torch.logical_and(torch.logical_not(had_inf), clean == growth_interval)
    grown = scale * growth_factor
    grown = torch.where(torch.isfinite(grown), grown, scale)
    new_scale = torch.where(had_inf, scale * backoff_factor, torch.where(grow, grown, scale))
    new_tracker = torch.where(torch.logical_or(had_inf, grow), torch.zeros_like(clean), clean)
    scale.copy_(new_scale)
    growth_tracker.copy_(new_tracker)
    return scale


def _kernel_fallback(python_version, target_type, first_tensor):
    def make(original):
        def kernel(*args, **kwargs):
            if first_tensor(args).device.type == target_type:
                return python_version(*args, **kwargs)
            return original(*args, **kwargs)
        return functools.wraps(original)(kernel)
    return make


# -- half weights -----------------------------------------------------------------------------------
def _half_weights(target_type, policy, dtype_of):
    """Module.half/bfloat16/to as torch has them, plus one warning when the weights become a slow half dtype."""
    def make(original):
        warned = _precision.warned_half_weights

        def convert(self, *args, **kwargs):
            result = original(self, *args, **kwargs)
            if policy.mode != "keep":
                dtype = dtype_of(args, kwargs)
                if dtype in _HALF_TYPES and not warned(dtype):
                    _precision.warn_half_weights(dtype, target_type)
            return result
        return functools.wraps(original)(convert)
    return make


def _to_dtype(args, kwargs):
    dtype = kwargs.get("dtype")
    if dtype is None:
        dtype = next((arg for arg in args if isinstance(arg, torch.dtype)), None)
    return dtype


# -- records ---------------------------------------------------------------------------------------
def _takes_device(cls):
    try:
        return "device" in inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return False


def records():
    from ..core.patch import active_config

    target = _device.current()
    target_type = target.type
    cfg = active_config()
    supported = _autocast_dtypes(target_type)
    plan = _dtype_plan(target_type, supported)
    policy = _precision.Policy(cfg.precision if cfg is not None else "auto", target_type, supported)
    kernels = _numerics.Kernels(target_type)
    autocast = "torch.amp.autocast_mode.autocast"
    out = [
        Patch("torchdevice.ops.precision", "_current", lambda _: policy, create=True,
              note="the precision policy (TORCHDEVICE_PRECISION)"),
        # CUDA's per-op autocast policies where the target's differ (torch.library kernels,
        # registered on the first region; removing the entry unregisters them).
        Patch("torchdevice.ops.autocast_numerics.REGISTRATIONS", target_type, lambda _: kernels,
              key=lambda: target_type, kind=EMULATED, note="CUDA's autocast dtype for every op"),
        Patch(autocast, "__init__", _autocast_init(target_type, plan, policy, supported),
              note="'cuda' autocast runs on the target in the dtype the precision policy picks"),
        Patch(autocast, "__enter__", _autocast_enter(kernels), note="sets the target's and CUDA's autocast state"),
        Patch(autocast, "__exit__", _autocast_exit, note="restores both"),
        # custom_fwd(cast_inputs=...) casts through _cast, which only casts
        # tensors of the given device type: "cuda" means the target's tensors.
        Patch("torch.amp.autocast_mode", "_cast", _cast(target_type, plan, policy),
              note="custom_fwd casts the target's tensors"),
        # Weights the program makes half stay half; one warning says this target computes them slowly.
        Patch("torch.nn.Module", "half", _half_weights(target_type, policy, lambda a, k: torch.float16),
              note="unchanged; one warning when the target computes float16 slowly"),
        Patch("torch.nn.Module", "bfloat16", _half_weights(target_type, policy, lambda a, k: torch.bfloat16),
              note="unchanged; one warning when the target computes bfloat16 slowly"),
        Patch("torch.nn.Module", "to", _half_weights(target_type, policy, _to_dtype),
              note="unchanged; one warning when it makes weights a half dtype the target computes slowly"),
        Patch("torch.cuda.amp.common", "amp_definitely_not_available", _available, kind=EMULATED,
              note="False: mixed precision is available on the target"),
        # Older torch bound the name into the scaler module itself.
        Patch("torch.cuda.amp.grad_scaler", "amp_definitely_not_available", _available, kind=EMULATED),
    ]
    if hasattr(torch.amp.autocast_mode, "_cast"):
        out.append(Patch("torch.cuda.amp.autocast_mode", "_cast", _legacy_cast(target_type)))
    else:
        out.append(Patch("torch.cuda.amp.autocast_mode", "_cast", _tensor_cast(target_type, plan, policy),
                         note="custom_fwd casts the target's tensors"))
    scaler = getattr(getattr(torch.amp, "grad_scaler", None), "GradScaler", None)
    if scaler is not None and _takes_device(scaler):
        out.append(Patch("torch.amp.grad_scaler.GradScaler", "__init__", _scaler_init(target_type),
                         note="GradScaler('cuda') is the target's scaler"))
    elif not _legacy_scaler_scales(target.device):
        out += [
            Patch("torch.cuda.amp.grad_scaler.GradScaler", "scale", _scale_any_device, kind=EMULATED,
                  note="scales target tensors (this torch's scaler accepts CUDA tensors only)"),
            # unscale_/step hand the scale and the inf flag around through this helper.
            Patch("torch.cuda.amp.grad_scaler._MultiDeviceReplicator", "__init__", _replicator_init,
                  kind=EMULATED, note="serves target tensors (this torch's accepts CUDA tensors only)"),
        ]
    if not _scaler_kernels_work(target.device):
        out += [
            Patch("torch", "_amp_foreach_non_finite_check_and_unscale_",
                  _kernel_fallback(_unscale_and_check, target_type, lambda args: args[1]), kind=EMULATED,
                  note="Python version for target tensors (no target kernel in this torch)"),
            Patch("torch", "_amp_update_scale_",
                  _kernel_fallback(_update_scale, target_type, lambda args: args[0]), kind=EMULATED,
                  note="Python version for target tensors (no target kernel in this torch)"),
        ]
    return out


def apply_patches():
    """Apply the amp area (fenced: a second call changes nothing)."""
    return REGISTRY.apply_area(AREA, records())
