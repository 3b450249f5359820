"""``torchdevice info``: what torchdevice sees and does in this environment.

``collect()`` gathers one JSON-ready dict (docs/cli.md lists its keys):
torchdevice and Python versions, the torch build (CPU-only, CUDA, ROCm, with
or without MPS), the hardware torch detects (real CUDA devices, MPS, CPU),
where the autoload ``.pth`` is installed and whether it was active when this
process started, every ``TORCHDEVICE_*`` variable of ``core/config.py`` with
its value and source, the target device and why, and per patch area its state,
the patches applied and those skipped with their reasons.

When autoload did not activate torchdevice in this process (disabled, or not
installed), ``info`` activates it itself so that it can show what would be
patched, and says so (``activated_by: "info"``). A bad configuration value is
reported and exits 2 before torch is imported.
"""
import json
import os
import platform
import sys

_PTH = "torchdevice_autoload.pth"


def _site_dirs():
    import site
    import sysconfig

    dirs = []
    try:
        dirs += list(site.getsitepackages())
    except AttributeError:
        pass
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    paths = sysconfig.get_paths()
    dirs += [paths["purelib"], paths["platlib"]]
    seen, out = set(), []
    for d in dirs:
        key = os.path.normcase(os.path.realpath(d))
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def autoload_state(environ=None):
    """Where the .pth is installed, and whether it armed the hook at this start."""
    from .core import config

    env = os.environ if environ is None else environ
    found = [os.path.join(d, _PTH) for d in _site_dirs() if os.path.isfile(os.path.join(d, _PTH))]
    disabled = env.get(config.DISABLE, "").strip().lower() in config.TRUE_WORDS
    if sys.flags.no_site:
        why = "python was started with -S, so site-packages .pth files were not read"
    elif not found:
        why = "the .pth is not installed in this environment's site-packages"
    elif disabled:
        why = f"{config.DISABLE}={env.get(config.DISABLE)}"
    else:
        why = "the .pth armed the import hook at interpreter start"
    return {"pth": found[0] if found else None, "active": bool(found) and not sys.flags.no_site and not disabled,
            "why": why}


def _torch_build(torch):
    cuda = getattr(torch.version, "cuda", None)
    hip = getattr(torch.version, "hip", None)
    mps = getattr(torch.backends, "mps", None)
    mps_built = bool(mps is not None and mps.is_built())
    if cuda:
        build = f"CUDA {cuda} build"
    elif hip:
        build = f"ROCm {hip} build"
    else:
        build = "CPU-only build"
    if mps_built:
        build += " with MPS"
    return {"version": torch.__version__, "build": build, "cuda": cuda, "hip": hip, "mps_built": mps_built,
            "path": os.path.dirname(torch.__file__)}


def _hardware(torch):
    from .core.patch import REGISTRY

    def original(name):
        try:
            return REGISTRY.original("torch.cuda", name)
        except Exception:
            return getattr(torch.cuda, name)

    cuda_devices = []
    try:
        if original("is_available")():
            for i in range(original("device_count")()):
                cuda_devices.append(original("get_device_name")(i))
    except Exception as exc:  # a broken driver: say so rather than fail
        cuda_devices = [f"error: {type(exc).__name__}: {exc}"]
    mps = getattr(torch.backends, "mps", None)
    return {"cuda_devices": cuda_devices, "mps_available": bool(mps is not None and mps.is_available())}


def _variables(environ=None):
    from .core import config

    env = os.environ if environ is None else environ
    out = {}
    for name, (accepted, default, meaning) in config.VARIABLES.items():
        present = name in env
        out[name] = {"value": env[name] if present else None, "source": "environment" if present else "default",
                     "default": default, "accepted": accepted}
    return out


def collect():
    """Everything ``info`` shows, as a JSON-ready dict.

    The torch-dependent part (build, what torch detects, target, patch areas)
    imports torch, unless a stored answer for this exact torch build,
    torchdevice code and configuration exists (``_cli_cache``).
    """
    from . import __version__, _cli_cache, _distribution
    from .core import config

    start = autoload_state()
    cfg = config.load()  # raises ConfigError for a bad value, before torch loads
    name = _cli_cache.key("info")
    part = _cli_cache.load(name, TORCH_PART)
    if part is None:
        part = _torch_part()
        _cli_cache.store(name, part)
    hardware = dict(part["hardware"])
    hardware.update({"cpu": f"{platform.machine() or 'unknown'}, {os.cpu_count()} logical cores",
                     "platform": platform.platform()})
    return {
        "torchdevice": __version__,
        "distribution": _distribution.describe(),
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        "torch": part["torch"],
        "hardware": hardware,
        "autoload": start,
        "activated_by": part["activated_by"],
        "target": part["target"],
        "accelerator": part["accelerator"],
        "config": _variables(),
        "strict": cfg.strict,
        "areas": part["areas"],
    }


_TEXT = (str, type(None))
_ITEMS = [{"target": str, "reason": str}]
# The shape of ``_torch_part()``: a stored answer of any other shape is computed again (_cli_cache.matches).
TORCH_PART = {
    "torch": {"version": str, "build": str, "cuda": _TEXT, "hip": _TEXT, "mps_built": bool, "path": str},
    "hardware": {"cuda_devices": [str], "mps_available": bool},
    "activated_by": str,
    "target": {"device": _TEXT, "redirect": bool, "reason": _TEXT},
    "accelerator": str,
    "areas": {str: {"state": str, "applied": [str], "skipped": _ITEMS, "deferred": _ITEMS, "reason": _TEXT}},
}


def _torch_part():
    """The sections of ``info`` that need torch (imports it, and activates torchdevice if autoload did not)."""
    import torch

    import torchdevice
    from .core import patch as _patch

    activated_by = "autoload" if _patch.active_config() is not None else None
    if activated_by is None:
        torchdevice.patch()
        activated_by = "info"
    status = torchdevice.status()
    if status["redirect"]:
        from .ops.device import redirect

        accelerator = redirect.accelerator()
    else:
        accelerator = "not applied: not redirecting"
    return {
        "torch": _torch_build(torch),
        "hardware": _hardware(torch),
        "activated_by": activated_by,
        "target": {"device": status["target"], "redirect": status["redirect"], "reason": status["reason"]},
        "accelerator": accelerator,
        "areas": status["areas"],
    }


def render(info) -> str:
    """The text form of ``collect()``."""
    lines = [f"torchdevice {info['torchdevice']}  ({info['python']})"]
    dist = info["distribution"]
    installed = f"{dist['version']} installed" if dist["version"] else "not installed (running from a checkout)"
    lines.append(f"distribution {dist['name']} {installed}")
    if dist["clash"]:
        lines.append(f"             WARNING: {dist['clash']}")
    t = info["torch"]
    lines.append(f"torch        {t['version']}, {t['build']}  ({t['path']})")
    hw = info["hardware"]
    cuda = ", ".join(hw["cuda_devices"]) if hw["cuda_devices"] else "none"
    lines.append(f"hardware     CUDA: {cuda}; MPS: {'available' if hw['mps_available'] else 'not available'}; "
                 f"CPU: {hw['cpu']}")
    target = info["target"]
    action = "redirecting CUDA to" if target["redirect"] else "not redirecting; target"
    lines.append(f"target       {action} {target['device']} ({target['reason']})")
    lines.append(f"accelerator  {info['accelerator']}")
    auto = info["autoload"]
    lines.append(f"autoload     .pth: {auto['pth'] or 'not installed'}")
    lines.append(f"             active in this process: {'yes' if auto['active'] else 'no'} ({auto['why']})")
    if info["activated_by"] == "info":
        lines.append("             (torchdevice was activated by `torchdevice info` to show what would be patched)")
    lines.append("")
    lines.append("configuration")
    width = max(len(name) for name in info["config"])
    for name, var in info["config"].items():
        if var["source"] == "environment":
            shown = f"{var['value']!r}  (environment)"
        else:
            shown = f"{var['default']}  (default)"
        lines.append(f"  {name.ljust(width)}  {shown}")
    lines.append("")
    lines.append("patch areas")
    for area, state in info["areas"].items():
        applied, skipped = len(state["applied"]), state["skipped"]
        detail = f"{applied} patches" if state["state"] == "applied" else state["reason"]
        deferred = state.get("deferred", [])
        if skipped:
            detail += f", {len(skipped)} skipped"
        if deferred:
            detail += f", {len(deferred)} deferred"
        lines.append(f"  {area.ljust(12)} {state['state']}: {detail}")
        for item in skipped:
            lines.append(f"      skipped {item['target']}: {item['reason']}")
        for item in deferred:
            lines.append(f"      deferred {item['target']}: {item['reason']}")
    return "\n".join(lines) + "\n"


def main(as_json: bool = False) -> int:
    from .core.config import ConfigError

    try:
        info = collect()
    except ConfigError as exc:
        sys.stderr.write(f"torchdevice info: {str(exc).replace('torchdevice: ', '', 1)}\n")
        return 2
    sys.stdout.write(json.dumps(info, indent=2) + "\n" if as_json else render(info))
    return 0
