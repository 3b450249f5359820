"""Coverage of torch.cuda and torch.accelerator: what every public name does while torchdevice redirects.

``coverage_rows()`` lists each name of the running torch's ``torch.cuda.__all__``
(as ``name``), then each name of its ``torch.accelerator.__all__`` (as
``torch.accelerator.name``; none before torch 2.6) and the device-generic entry
points ``torch.get_device_module``, ``torch.Stream`` and ``torch.Event`` where
this torch has them, with its class, taken from the ``kind`` of the registry
record that patches it (``namespace=`` picks one of ``NAMESPACES``):

* redirected: runs the target's equivalent;
* emulated: behaviour rebuilt on the target;
* no-op: nothing to do on the target, returns what CUDA code expects;
* unsupported: raises a clear error naming the API, the target and what to do;
* unchanged: correct without a patch (``UNCHANGED`` says why for each; for a
  submodule the note also lists how its own members are patched).

A name in none of these is "unclassified"; tests/test_coverage.py fails on it,
so a torch release that adds names is caught. ``render_markdown()`` builds
docs/cuda-coverage.md (both targets side by side); regenerate it with
``python -m torchdevice.coverage > docs/cuda-coverage.md``.

Which records apply can depend on the target (``synchronize`` is a no-op on the
CPU and ``torch.mps.synchronize`` on MPS). While torchdevice is active in this
process, ``coverage_rows()`` reports the records really applied. Otherwise, or
for the other target, each area declares its records for a hypothetical
target with default settings, without applying anything (in a fresh
interpreter when torchdevice is active here, so the live state is untouched).
"""
import importlib
import json
import os
import subprocess
import sys

from .core.patch import KINDS

UNCHANGED_KIND = "unchanged"
UNCLASSIFIED_KIND = "unclassified"
CLASSES = KINDS + (UNCHANGED_KIND,)

_SUBMODULE = "submodule; the module object itself is unchanged"
# Names that are right without a patch, with the reason.
UNCHANGED = {
    "amp": _SUBMODULE + " (autocast and GradScaler are torch.amp's CUDA front-ends)",
    "jiterator": _SUBMODULE,
    "graphs": _SUBMODULE,
    "graph_annotations": _SUBMODULE + " (torch >= 2.14: profiler labels for kernels captured in CUDA graphs; "
                         "the target's graphs capture no kernels)",
    "memory": _SUBMODULE,
    "nccl": _SUBMODULE,
    "nvtx": _SUBMODULE,
    "profiler": _SUBMODULE,
    "random": _SUBMODULE,
    "sparse": _SUBMODULE,
    "streams": _SUBMODULE,
    "tunable": _SUBMODULE,
    "has_half": "True: both targets compute float16 (the CPU in software, MPS natively)",
    "has_magma": "torch's build flag for MAGMA; code that checks it takes its non-MAGMA path, "
                 "and torch.linalg runs on the target",
    "cudaStatus": "constants (SUCCESS=0, ERROR_NOT_READY=34) that check_error and cudart() agree with",
    "OutOfMemoryError": "exception class (torch < 2.4 lists it here; later it is torch.OutOfMemoryError); "
                        "kept, so `except torch.cuda.OutOfMemoryError` stays valid",
    "DeferredCudaCallError": "exception class; raised only by CUDA's lazy initialisation, which never runs",
    "get_arch_list": "the CUDA architectures compiled into this torch binary ([] for CPU wheels): "
                     "true of the build whatever the target",
    "get_gencode_flags": "derived from get_arch_list() ('' for CPU wheels)",
}

_OWNER = "torch.cuda"
_ACCELERATOR = "torch.accelerator"
_GENERIC = "torch"
# The namespaces a coverage table lists, in order.
NAMESPACES = (_OWNER, _ACCELERATOR, _GENERIC)
# The device-generic entry points of torch itself that CUDA code reaches.
GENERIC_NAMES = ("Event", "Stream", "get_device_module")


def _by_name(names):
    return sorted(names, key=lambda name: (name.lower(), name))


def _public_names(namespace=_OWNER):
    import torch

    if namespace == _OWNER:
        return _by_name(torch.cuda.__all__)
    if namespace == _ACCELERATOR:
        module = getattr(torch, "accelerator", None)
        return _by_name(getattr(module, "__all__", ())) if module is not None else []
    return [name for name in GENERIC_NAMES if hasattr(torch, name)]


def _applied_records():
    """{(owner, name): (kind, note)} of the records in effect in this process."""
    from .core.patch import REGISTRY

    found = {}
    for _, applied in REGISTRY.applied_records():
        record = applied.record
        if record.key is None:
            found[(record.owner, record.name)] = (record.kind, record.note)
    return found


def _declared_here(device_type):
    """Records every area declares for a hypothetical ``device_type`` target (nothing is applied).

    Only valid while torchdevice is not active in this process: it swaps the
    current target and configuration for the duration of the call.
    """
    import torch

    from .core import config as _config
    from .core import device as _device
    from .core import patch as _patch

    if _patch.active_config() is not None:
        raise RuntimeError("_declared_here() needs torchdevice inactive in this process")
    real = torch._C.device
    target = _device.Target(device_type, real("mps", 0) if device_type == "mps" else real("cpu"), True,
                            "coverage declaration", device_type == "cpu", False)
    saved = _device._target
    found = {}
    try:
        _device._target = target
        _patch._active_config = _config.Config(device=device_type)
        for area, module_name in _patch.AREAS.items():
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name and module_name.startswith(exc.name):
                    continue  # area not implemented in this release
                raise
            try:
                declared = module.records()
            except Exception as exc:
                raise RuntimeError(f"area {area!r} could not declare its records for a {device_type} target: "
                                   f"{type(exc).__name__}: {exc}") from exc
            for record in declared:
                if record.key is None and _patch.would_apply(record):
                    found[(record.owner, record.name)] = (record.kind, record.note)
    finally:
        _device._target = saved
        _patch._active_config = None
    return found


def _declared(device_type):
    from .core.patch import active_config

    if active_config() is None:
        return _declared_here(device_type)
    code = ("import json, sys\nfrom torchdevice.coverage import _declared_here\n"
            "rows = [[o, n, k, t] for (o, n), (k, t) in _declared_here(sys.argv[1]).items()]\n"
            "print(json.dumps(rows))\n")
    env = dict(os.environ, TORCHDEVICE_DISABLE="1")
    done = subprocess.run([sys.executable, "-c", code, device_type], capture_output=True, text=True, env=env,
                          timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"declaring the {device_type} records failed:\n{done.stderr}")
    return {(owner, name): (kind, note) for owner, name, kind, note in json.loads(done.stdout)}


def _records_for(device):
    from .core import device as _device
    from .core.patch import active_config

    target = _device.current()
    active = active_config() is not None and target is not None and target.redirect
    if active and device in (None, target.type):
        return _applied_records()
    return _declared(device or "cpu")


def _members(submodule, records):
    """How a submodule's own members are patched, grouped by class."""
    owner = f"{_OWNER}.{submodule}"
    by_kind = {}
    mirrored = 0
    for (record_owner, name), (kind, note) in sorted(records.items()):
        if record_owner != owner:
            continue
        if records.get((_OWNER, name)) == (kind, note):
            mirrored += 1  # patched exactly like the torch.cuda name (listed in its own row)
        else:
            by_kind.setdefault(kind, []).append(name)
    parts = [f"{kind}: {', '.join(names)}" for kind, names in sorted(by_kind.items())]
    if mirrored:
        parts.insert(0, f"{mirrored} members patched as the torch.cuda names of the same name")
    return "; ".join(parts) if parts else "no members patched"


def _rows(records, namespace=_OWNER):
    rows = []
    for name in _public_names(namespace):
        if namespace != _OWNER:
            kind, note = records.get((namespace, name), (UNCLASSIFIED_KIND, "no registry record"))
            rows.append({"name": f"{namespace}.{name}", "kind": kind, "note": note})
            continue
        if (_OWNER, name) in records:
            kind, note = records[(_OWNER, name)]
        elif name in UNCHANGED:
            kind, note = UNCHANGED_KIND, UNCHANGED[name]
            if UNCHANGED[name].startswith(_SUBMODULE):
                note = f"{note}; {_members(name, records)}"
        else:
            kind, note = UNCLASSIFIED_KIND, "no registry record and no entry in coverage.UNCHANGED"
        rows.append({"name": name, "kind": kind, "note": note})
    return rows


def coverage_rows(device=None, namespace=None):
    """Every public name with its class: a list of {"name", "kind", "note"}, sorted by name per namespace.

    ``device`` ("cpu" or "mps") picks the target; by default the active one,
    or "cpu" when torchdevice is not active. ``namespace`` (one of
    ``NAMESPACES``) lists only that one; by default all, torch.cuda first.
    """
    if device not in (None, "cpu", "mps"):
        raise ValueError(f"coverage_rows(device=...) takes 'cpu' or 'mps', not {device!r}")
    if namespace is not None and namespace not in NAMESPACES:
        raise ValueError(f"coverage_rows(namespace=...) takes one of {NAMESPACES}, not {namespace!r}")
    records = _records_for(device)
    return [row for space in NAMESPACES if namespace in (None, space) for row in _rows(records, space)]


def _cell(text):
    return text.replace("|", "\\|")


def _summary(rows):
    counts = {}
    for row in rows:
        counts[row["kind"]] = counts.get(row["kind"], 0) + 1
    return ", ".join(f"{counts[kind]} {kind}" for kind in CLASSES + (UNCLASSIFIED_KIND,) if kind in counts)


def _table(cpu, mps):
    lines = ["| name | class | on cpu | on mps |", "|---|---|---|---|"]
    for on_cpu, on_mps in zip(cpu, mps):
        kind = on_cpu["kind"] if on_cpu["kind"] == on_mps["kind"] else \
            f"{on_cpu['kind']} (cpu), {on_mps['kind']} (mps)"
        lines.append(f"| `{on_cpu['name']}` | {kind} | {_cell(on_cpu['note'])} | {_cell(on_mps['note'])} |")
    return lines


def render_markdown():
    """docs/cuda-coverage.md for the running torch: name, class, what happens on cpu and on mps."""
    import torch

    cpu = {space: coverage_rows("cpu", space) for space in NAMESPACES}
    mps = {space: coverage_rows("mps", space) for space in NAMESPACES}
    version = torch.__version__.split("+")[0]
    lines = [
        "# torch.cuda coverage",
        "",
        f"Generated from torch {version} by `python -m torchdevice.coverage > docs/cuda-coverage.md`",
        "(`torchdevice.coverage.render_markdown()`); do not edit by hand. tests/test_coverage.py checks",
        "that it is current and that no name is unclassified.",
        "",
        f"{len(cpu[_OWNER])} public names in `torch.cuda.__all__` (cpu target: {_summary(cpu[_OWNER])}).",
        "",
        "Classes: **redirected** runs the target's equivalent; **emulated** rebuilds the behaviour on the",
        "target; **no-op** has nothing to do there and returns what CUDA code expects; **unsupported**",
        "raises a clear error naming the API, the target and what to do instead; **unchanged** is",
        "correct without a patch. Behaviour details: docs/cuda-api.md.",
        "",
        *_table(cpu[_OWNER], mps[_OWNER]),
        "",
        "## torch.accelerator and the device-generic entry points",
        "",
        "They answer user code as on a CUDA machine (what torch.cuda answers); torch's own modules get",
        "the real answers (docs/device-policy.md).",
        "",
    ]
    if cpu[_ACCELERATOR]:
        lines.append(f"{len(cpu[_ACCELERATOR])} public names in `torch.accelerator.__all__` "
                     f"(cpu target: {_summary(cpu[_ACCELERATOR])}).")
    else:
        lines.append(f"torch {version} has no `torch.accelerator` (torch >= 2.6): its records are skipped.")
    lines += ["", *_table(cpu[_ACCELERATOR] + cpu[_GENERIC], mps[_ACCELERATOR] + mps[_GENERIC])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render_markdown())
