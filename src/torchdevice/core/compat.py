"""The one place that knows how torch releases differ in APIs torchdevice calls itself.

Everything else adapts by asking torch (``getattr`` with a default, probing a
call once at activation); the functions here cover the differences that
cannot be probed from one attribute: the same question is asked through a
different function, or with a different signature, depending on the release.

Autocast state. torch 2.4 added the device-generic ``is_autocast_enabled(device_type)``,
``set_autocast_enabled(device_type, enabled)``, ``get_autocast_dtype(device_type)``
and ``set_autocast_dtype(device_type, dtype)``. Earlier releases have one pair of
functions per device kind: ``*_autocast_cpu_*`` for "cpu", the argument-less
``is_autocast_enabled()``/``set_autocast_enabled(bool)`` plus
``*_autocast_gpu_dtype`` for "cuda", and no autocast state for other device
types (on those releases "mps" has no autocast; its state reads as off and
setting it changes nothing, which is what such a torch does).

Stream and event base classes. torch 2.2 to 2.4 have abstract bases
``torch._streambase._StreamBase``/``_EventBase`` and torch.compile's device
registry (``torch._dynamo.device_interface``) asserts that ``torch.cuda.Stream``
and ``torch.cuda.Event`` derive from them; later releases dropped that check.
``register_stream_classes`` registers torchdevice's classes as virtual
subclasses where the bases exist.

Dispatching below autograd. ``torch._C._AutoDispatchBelowADInplaceOrView``
(run ops without autograd and without the in-place/view bookkeeping) arrived
after torch 2.2; there the same state is ``_AutoDispatchBelowAutograd`` plus
excluding the ADInplaceOrView key (``below_ad_inplace_or_view``).

Which callables torch.compile puts into its graphs. From torch 2.3 dynamo asks
``torch._dynamo.trace_rules.is_callable_allowed``; torch 2.2 instead reads the torch
namespace once, when ``torch._dynamo`` is imported (``allowed_functions``), and keeps the
ids of the callables it finds there (``DYNAMO_ASKS_IS_CALLABLE_ALLOWED``).

macOS version on MPS. ``torch.backends.mps.is_macos_or_newer(major, minor)``
arrived in torch 2.3; torch 2.2 can only ask about macOS 13
(``is_macos13_or_newer``), and its MPS backend has no bfloat16.
"""
import contextlib
import sys

import torch

__all__ = ["DYNAMO_ASKS_IS_CALLABLE_ALLOWED", "below_ad_inplace_or_view", "get_autocast_dtype", "is_autocast_enabled", "mps_macos_at_least", "register_stream_classes",
           "set_autocast_dtype", "set_autocast_enabled"]

_DEVICE_GENERIC_AUTOCAST = hasattr(torch, "get_autocast_dtype")
_RELEASE = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
DYNAMO_ASKS_IS_CALLABLE_ALLOWED = _RELEASE >= (2, 3)

if _DEVICE_GENERIC_AUTOCAST:
    is_autocast_enabled = torch.is_autocast_enabled
    set_autocast_enabled = torch.set_autocast_enabled
    get_autocast_dtype = torch.get_autocast_dtype
    set_autocast_dtype = torch.set_autocast_dtype
else:
    _LEGACY = {
        # device type: (is_enabled, set_enabled, get_dtype, set_dtype)
        "cpu": (torch.is_autocast_cpu_enabled, torch.set_autocast_cpu_enabled,
                torch.get_autocast_cpu_dtype, torch.set_autocast_cpu_dtype),
        "cuda": (torch.is_autocast_enabled, torch.set_autocast_enabled,
                 torch.get_autocast_gpu_dtype, torch.set_autocast_gpu_dtype),
    }

    def is_autocast_enabled(device_type="cuda"):
        """Whether autocast is on for ``device_type`` (False where this torch has none)."""
        functions = _LEGACY.get(device_type)
        return functions[0]() if functions is not None else False

    def set_autocast_enabled(device_type, enabled):
        """Switch autocast for ``device_type`` (nothing to switch where this torch has none)."""
        functions = _LEGACY.get(device_type)
        if functions is not None:
            functions[1](enabled)

    def get_autocast_dtype(device_type):
        """The autocast dtype of ``device_type`` (torch's float16 default where it has no state)."""
        functions = _LEGACY.get(device_type)
        return functions[2]() if functions is not None else torch.float16

    def set_autocast_dtype(device_type, dtype):
        """Set the autocast dtype of ``device_type`` (nothing to set where this torch has none)."""
        functions = _LEGACY.get(device_type)
        if functions is not None:
            functions[3](dtype)


def register_stream_classes(stream_class, event_class):
    """Make ``stream_class``/``event_class`` count as torch's stream/event bases where this torch has them."""
    bases = sys.modules.get("torch._streambase")
    if bases is None:
        return
    if hasattr(bases, "_StreamBase"):
        bases._StreamBase.register(stream_class)
    if hasattr(bases, "_EventBase"):
        bases._EventBase.register(event_class)


def mps_macos_at_least(major, minor=0):
    """Whether the MPS host runs macOS ``major.minor`` or newer, as far as this torch can tell."""
    backends = torch.backends.mps
    ask = getattr(backends, "is_macos_or_newer", None)
    if ask is not None:
        return bool(ask(major, minor))
    if major == 13 and hasattr(backends, "is_macos13_or_newer"):
        return bool(backends.is_macos13_or_newer(minor))
    return False  # this torch cannot ask, and has no MPS feature that needs a newer macOS


if hasattr(torch._C, "_AutoDispatchBelowADInplaceOrView"):
    def below_ad_inplace_or_view():
        """A guard that runs ops below autograd and the ADInplaceOrView key."""
        return torch._C._AutoDispatchBelowADInplaceOrView()
else:
    _AD_INPLACE_OR_VIEW = torch._C.DispatchKeySet(torch._C.DispatchKey.ADInplaceOrView)

    @contextlib.contextmanager
    def below_ad_inplace_or_view():
        """A guard that runs ops below autograd and the ADInplaceOrView key."""
        with torch._C._AutoDispatchBelowAutograd(), torch._C._ExcludeDispatchKeyGuard(_AD_INPLACE_OR_VIEW):
            yield
