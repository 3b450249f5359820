"""The patch registry: every change torchdevice makes to torch goes through here.

Area modules (``ops/...``) declare their changes as ``Patch`` records and end
with an ``apply_patches()`` that hands them to ``REGISTRY.apply_area``. The
registry resolves each dotted target at apply time, keeps the exact original
(the raw object from the owner's own ``__dict__``, or ``MISSING`` when the owner
did not define the name itself), sets the replacement, and can put every
original back by identity. An area applies all or none: if one record fails,
the records of that area already set are restored before the error propagates.

``activate()`` runs the areas in ``AREAS`` order, each isolated: a failing area
is logged once as a WARNING and marked failed (its dependants are skipped), the
others still apply, and ``import torch`` still succeeds. ``strict=True`` (or
``TORCHDEVICE_STRICT=1``) re-raises instead; the tests always run strict.

Our own code reaches torch's real functions through ``REGISTRY.original()``,
never through the patched public names.
"""
import importlib
import sys
import threading
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Hashable, List, Optional, Tuple

from . import config as _config
from .logger import configure as _configure_logging
from .logger import get_logger

log = get_logger("patch")

# Area name -> module that declares it. Order is application order:
# - device first: every other area maps device specs through it;
# - cuda (torch.cuda device queries) before random/memory/streams, which read
#   the current index it keeps;
# - amp, nn and distributed last: they build on redirected tensors and devices.
AREAS: Dict[str, str] = {
    "device": "torchdevice.ops.device.redirect",
    "cuda": "torchdevice.ops.device.cuda",
    "random": "torchdevice.ops.random.generators",
    "memory": "torchdevice.ops.memory.management",
    "streams": "torchdevice.ops.streams.cuda",
    "amp": "torchdevice.ops.amp",
    "nn": "torchdevice.ops.nn",
    "distributed": "torchdevice.ops.distributed",
}
assert tuple(AREAS) == _config.AREAS, "core/config.py AREAS and core/patch.py AREAS disagree"
# Which areas each area needs (core/config.py, where switching one off alone is refused):
# an area is also skipped when an area it needs failed to apply.
DEPENDS = _config.DEPENDS

# Coverage classes (docs/cuda-coverage.md, `torchdevice coverage`).
REDIRECTED = "redirected"   # runs the target's equivalent
EMULATED = "emulated"       # behaviour rebuilt on the target (e.g. event timing measured)
NOOP = "no-op"              # nothing to do on the target; returns what CUDA code expects
UNSUPPORTED = "unsupported"  # raises a clear error naming the API, the target and what to do
KINDS = (REDIRECTED, EMULATED, NOOP, UNSUPPORTED)


class _Missing:
    """Marker for 'the owner did not define this attribute itself'."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self):
        return "MISSING"

    def __bool__(self):
        return False


MISSING = _Missing()
MARK = "__torchdevice_patch__"

# The migration report's apply-time hook (core/report.py), set by activate()
# only when TORCHDEVICE_REPORT is on: it wraps each replacement in a call-site
# recorder. While it is None, exactly the objects make() returned are installed.
_report_hook: Optional[Callable[[Any, Any, Any, Any, Any], Any]] = None


@dataclass(frozen=True)
class Patch:
    """One change: set ``owner.name`` to ``make(current value)``.

    ``owner`` is a dotted path resolved when the area applies (declaring a record
    imports nothing). ``make`` receives the value the owner currently exposes
    (``MISSING`` if none) and returns the replacement. ``create`` allows setting
    a name the owner lacks; otherwise a missing target is skipped and listed in
    ``status()``. With ``key``, the owner is a dict and ``key()`` names the entry.
    ``kind`` classifies the replacement for the coverage table; ``note`` says in
    a few words what it does there.

    ``recording`` is used only when the migration report is on:
    ``recording(original, site)`` returns the same replacement as ``make`` with
    the report's call-site counting built in (one Python frame per call instead
    of a recorder around the replacement). It must pass ``site.seen`` exactly
    the ``device`` argument the report reads for this API (core/report.py).
    """

    owner: str
    name: str
    make: Callable[[Any], Any]
    kind: str = REDIRECTED
    create: bool = False
    key: Optional[Callable[[], Hashable]] = None
    note: str = ""
    recording: Optional[Callable[[Any, Any], Any]] = None

    @property
    def target(self) -> str:
        return f"{self.owner}.{self.name}"


@dataclass
class _Applied:
    record: Patch
    owner: Any
    slot: Hashable      # attribute name, or dict key
    raw: Any            # what the owner held itself before (or MISSING)
    original: Any       # the value code saw before (what make() received)
    replacement: Any    # what we stored


@dataclass
class AreaState:
    name: str
    state: str = "pending"   # applied | failed | disabled | skipped | unpatched | passthrough
    applied: List[_Applied] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    deferred: List[Tuple[str, str]] = field(default_factory=list)
    reason: str = ""

    def describe(self) -> Dict[str, Any]:
        return {
            "state": self.state,
            "applied": [a.record.target for a in self.applied],
            "skipped": [{"target": t, "reason": r} for t, r in self.skipped],
            "deferred": [{"target": t, "reason": r} for t, r in self.deferred],
            "reason": self.reason,
        }


class _Absent(LookupError):
    """The target does not exist in the running torch."""


class _NotYetImported(_Absent):
    """The target lives in a module that exists but is not imported yet."""

    def __init__(self, module: str):
        super().__init__(f"applies when {module} is imported")
        self.module = module


def resolve(path: str) -> Any:
    """Resolve a dotted path through already-imported modules and attributes.

    Imports nothing: a module that is not loaded yet raises ``_NotYetImported``
    if it can be imported, ``_Absent`` if it does not exist. (A package's
    module-level ``__getattr__`` may import a submodule on attribute access, as
    torch does for ``torch._dynamo``: submodules are looked up in ``sys.modules``,
    never through ``getattr``.)
    """
    parts = path.split(".")
    obj = sys.modules.get(parts[0])
    if obj is None:
        raise _Absent(f"{parts[0]} is not imported")
    for i, part in enumerate(parts[1:], start=2):
        if isinstance(obj, types.ModuleType):
            name = ".".join(parts[:i])
            module = sys.modules.get(name)
            if module is not None:
                obj = module
                continue
            if part not in vars(obj) and _module_exists(name):
                raise _NotYetImported(name)
        try:
            obj = getattr(obj, part)
        except AttributeError:
            name = ".".join(parts[:i])
            module = sys.modules.get(name)
            if module is None:
                if _module_exists(name):
                    raise _NotYetImported(name) from None
                raise _Absent(f"{name} does not exist in this torch") from None
            obj = module
    return obj


def _module_exists(name: str) -> bool:
    parent, _, child = name.rpartition(".")
    search = getattr(sys.modules.get(parent), "__path__", None)
    if search is None:
        return False
    from importlib.machinery import PathFinder

    return PathFinder.find_spec(name, search) is not None


def would_apply(record: "Patch") -> bool:
    """Whether ``record`` has a target in this torch (applied now, or deferred until its module loads)."""
    try:
        owner = resolve(record.owner)
    except _NotYetImported:
        return True
    except _Absent:
        return False
    if record.key is not None or record.create:
        return True
    return hasattr(owner, record.name)


def _raw(owner: Any, name: str) -> Any:
    """The object ``owner`` itself stores under ``name`` (not inherited), or MISSING."""
    try:
        namespace = vars(owner)
    except TypeError:
        return MISSING
    return namespace.get(name, MISSING)


def _mark(replacement: Any, original: Any) -> None:
    try:
        setattr(replacement, MARK, True)
        if original is not MISSING and not hasattr(replacement, "__wrapped__"):
            replacement.__wrapped__ = original
    except (AttributeError, TypeError):
        pass  # builtins and slotted objects cannot carry marks; identity still identifies them


class Registry:
    """Applies, reports and undoes patch records, under one lock."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._areas: Dict[str, AreaState] = {}
        self._order: List[str] = []
        self._by_target: Dict[Tuple[int, Hashable], _Applied] = {}
        self._pending: set = set()   # modules with deferred records waiting for their import
        self._generation = 0         # bumped by unpatch(), so stale deferred hooks do nothing

    # -- applying ---------------------------------------------------------
    def apply_area(self, area: str, records) -> AreaState:
        """Apply ``records`` as area ``area``, once. All or none."""
        with self._lock:
            current = self._areas.get(area)
            if current is not None and current.state == "applied":
                return current
            state = AreaState(area)
            try:
                for record in records:
                    self._apply_one(state, record)
            except BaseException as exc:
                for applied in reversed(state.applied):
                    self._restore(applied)
                state.applied.clear()
                state.state = "failed"
                state.reason = f"{type(exc).__name__}: {exc}"
                self._set_state(state)
                raise
            state.state = "applied"
            self._set_state(state)
            return state

    def _apply_one(self, state: AreaState, record: Patch) -> None:
        if record.kind not in KINDS:
            raise ValueError(f"{record.target}: kind {record.kind!r} is not one of {KINDS}")
        try:
            owner = resolve(record.owner)
        except _NotYetImported as exc:
            self._defer(state.name, record, exc.module)
            state.deferred.append((record.target, str(exc)))
            log.debug("defer %s: %s", record.target, exc)
            return
        except _Absent as exc:
            state.skipped.append((record.target, str(exc)))
            log.debug("skip %s: %s", record.target, exc)
            return
        if record.key is not None:
            slot = record.key()
            raw = owner.get(slot, MISSING)
            original = raw
        else:
            slot = record.name
            raw = _raw(owner, slot)
            original = getattr(owner, slot, MISSING)
            if original is MISSING and not record.create:
                reason = f"{record.name} does not exist in this torch"
                state.skipped.append((record.target, reason))
                log.debug("skip %s: %s", record.target, reason)
                return
        ident = (id(owner), slot)
        if ident in self._by_target:
            other = self._by_target[ident]
            raise RuntimeError(f"{record.target} is already patched by another record ({other.record.target})")
        replacement = record.make(original)
        if _report_hook is not None:
            replacement = _report_hook(record, owner, raw, replacement, original)
        _mark(replacement, original)
        stored = staticmethod(replacement) if isinstance(raw, staticmethod) else replacement
        if record.key is not None:
            owner[slot] = stored
        else:
            setattr(owner, slot, stored)
        applied = _Applied(record, owner, slot, raw, original, stored)
        state.applied.append(applied)
        self._by_target[ident] = applied

    def _defer(self, area: str, record: Patch, module: str) -> None:
        """Apply ``record`` when ``module`` is imported (a post-import hook; imports nothing now)."""
        from .. import _autoload

        def apply_later(_module, generation=self._generation):
            with self._lock:
                state = self._areas.get(area)
                if generation != self._generation or state is None or state.state != "applied":
                    return  # unpatched (or failed) since: nothing to do
                try:
                    self._apply_one(state, record)
                except Exception:
                    log.warning("deferred patch %s failed to apply", record.target, exc_info=True)
                    return
                state.deferred = [d for d in state.deferred if d[0] != record.target]

        self._pending.add(module)
        _autoload.when_imported(module, apply_later, chain=True)

    def _restore(self, applied: _Applied) -> bool:
        owner, slot = applied.owner, applied.slot
        self._by_target.pop((id(owner), slot), None)
        keyed = applied.record.key is not None
        current = owner.get(slot, MISSING) if keyed else _raw(owner, slot)
        if current is not applied.replacement:
            log.warning("not restoring %s: it was replaced after torchdevice patched it", applied.record.target)
            return False
        if applied.raw is MISSING:
            if keyed:
                del owner[slot]
            else:
                delattr(owner, slot)
        elif keyed:
            owner[slot] = applied.raw
        else:
            setattr(owner, slot, applied.raw)
        return True

    def _set_state(self, state: AreaState) -> None:
        self._areas[state.name] = state
        if state.name not in self._order:
            self._order.append(state.name)

    def mark(self, area: str, state: str, reason: str = "") -> None:
        """Record an area that was not applied (disabled, skipped, passthrough)."""
        with self._lock:
            self._set_state(AreaState(area, state=state, reason=reason))

    # -- undoing ----------------------------------------------------------
    def unpatch(self) -> None:
        """Restore every patched attribute to its identical original, newest first."""
        with self._lock:
            for area in reversed(self._order):
                state = self._areas[area]
                if state.state != "applied":
                    continue
                for applied in reversed(state.applied):
                    self._restore(applied)
                state.applied.clear()
                state.state = "unpatched"
            self._areas.clear()
            self._order.clear()
            self._generation += 1
            if self._pending:
                from .. import _autoload

                for module in self._pending:
                    _autoload.cancel(module)
                self._pending.clear()

    # -- queries ----------------------------------------------------------
    def state(self, area: str) -> Optional[AreaState]:
        return self._areas.get(area)

    def is_applied(self, area: str) -> bool:
        state = self._areas.get(area)
        return state is not None and state.state == "applied"

    def applied_records(self):
        """Every record now in effect, with its area."""
        with self._lock:
            return [(area, a) for area in self._order for a in self._areas[area].applied]

    def is_patched(self, owner: str, name: str) -> bool:
        try:
            obj = resolve(owner)
        except _Absent:
            return False
        return (id(obj), name) in self._by_target

    def original(self, owner: str, name: str) -> Any:
        """What ``owner.name`` was before torchdevice patched it (or is now, if unpatched)."""
        obj = resolve(owner)
        applied = self._by_target.get((id(obj), name))
        return applied.original if applied is not None else getattr(obj, name)

    def report(self) -> Dict[str, Dict[str, Any]]:
        with self._lock:
            return {area: self._areas[area].describe() for area in self._order}


REGISTRY = Registry()

_activation_lock = threading.RLock()
_active_config: Optional[_config.Config] = None


def active_config() -> Optional[_config.Config]:
    """The configuration of the current activation (None when not active)."""
    return _active_config


def activate(config: Optional[_config.Config] = None, strict: Optional[bool] = None) -> Dict[str, Any]:
    """Apply every enabled area against the loaded torch; return ``status()``.

    Idempotent: areas already applied are left alone. With the same config a
    second call changes nothing; a different config while active only warns
    (call ``unpatch()`` first to switch).
    """
    global _active_config, _report_hook
    from . import device as _device

    with _activation_lock:
        cfg = config if config is not None else _config.load()
        if strict is not None:
            cfg = cfg.with_overrides(strict=strict)
        _configure_logging(cfg.log_level)
        if _active_config is not None and _active_config != cfg:
            log.warning("torchdevice is already active with another configuration; keeping it "
                        "(call torchdevice.unpatch() before patching with new settings)")
            return status()
        target = _device.select(cfg)
        first = _active_config is None
        _active_config = cfg
        if cfg.report:
            from . import report as _report

            _report_hook = _report.start(cfg, target)
        else:
            _report_hook = None
        if not target.redirect:
            for area in AREAS:
                REGISTRY.mark(area, "passthrough", target.reason)
            if first:
                log.info("not redirecting: %s", target.reason)
            return status()
        for area, module_name in AREAS.items():
            if REGISTRY.is_applied(area):
                continue
            if area in cfg.disabled_areas:
                REGISTRY.mark(area, "disabled", f"{_config.DISABLE_PATCHES} lists it")
                continue
            missing = [dep for dep in DEPENDS.get(area, ()) if not REGISTRY.is_applied(dep)]
            if missing:
                REGISTRY.mark(area, "skipped", f"needs area(s) {', '.join(missing)}, which did not apply")
                continue
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if not (exc.name and module_name.startswith(exc.name)):
                    raise
                REGISTRY.mark(area, "skipped", "not implemented in this release")
                continue
            try:
                module.apply_patches()
            except Exception as exc:
                if cfg.strict:
                    raise
                log.warning("patch area %r failed and was rolled back (%s: %s); the other areas still apply",
                            area, type(exc).__name__, exc)
                log.debug("area %r failure", area, exc_info=True)
        if first:
            log.info("CUDA calls run on %s (%s)", target.device, target.reason)
        return status()


def deactivate() -> None:
    """Undo every patch (``torchdevice.unpatch()``)."""
    global _active_config, _report_hook
    from . import device as _device

    with _activation_lock:
        REGISTRY.unpatch()
        _active_config = None
        _report_hook = None
        _device.reset()


def status() -> Dict[str, Any]:
    """A structured description of what torchdevice did in this process."""
    from . import device as _device

    target = _device.current()
    cfg = _active_config
    return {
        "active": cfg is not None,
        "target": None if target is None else str(target.device),
        "redirect": bool(target and target.redirect),
        "reason": None if target is None else target.reason,
        "areas": REGISTRY.report(),
    }
