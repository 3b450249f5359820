"""Every environment variable torchdevice reads, parsed in one place, once.

Each variable is a module constant with its documentation in ``VARIABLES``
(docs/configuration.md and the README table are checked against it by
tests/test_config.py). ``load()`` parses the environment into a frozen
``Config``; patch code receives that object and never reads ``os.environ``.
A bad value raises ``ConfigError`` naming the variable, the value and what is
accepted. Precedence: explicit arguments > environment > defaults.

Only the standard library is imported here: the autoload hook parses the
configuration before torch is loaded, so that a bad value fails fast.
"""
import os
from dataclasses import dataclass, field, fields, replace
from typing import Dict, FrozenSet, Mapping, Optional, Tuple

DISABLE = "TORCHDEVICE_DISABLE"
DEVICE = "TORCHDEVICE_DEVICE"
LOG_LEVEL = "TORCHDEVICE_LOG_LEVEL"
DISABLE_PATCHES = "TORCHDEVICE_DISABLE_PATCHES"
STRICT = "TORCHDEVICE_STRICT"
MASQUERADE = "TORCHDEVICE_MASQUERADE"
DEVICE_COUNT = "TORCHDEVICE_DEVICE_COUNT"
TRUTHFUL_MODULES = "TORCHDEVICE_TRUTHFUL_MODULES"
MPS_FLOAT64 = "TORCHDEVICE_MPS_FLOAT64"
REPORT = "TORCHDEVICE_REPORT"
PURE_PYTHON = "TORCHDEVICE_PURE_PYTHON"

# name -> (accepted values, default, meaning). The order is the documentation order.
VARIABLES: Dict[str, Tuple[str, str, str]] = {
    DISABLE: ("1/true/yes/on or 0/false/no/off (any case)", "off",
              "Turn torchdevice off entirely: the autoload hook arms nothing and "
              "`import torchdevice` patches nothing."),
    DEVICE: ("auto, cpu, mps, cuda", "auto",
             "Target device. auto: real CUDA if present (then nothing is patched), "
             "else MPS, else CPU. cpu/mps force that target even on a CUDA machine; "
             "cuda requires real CUDA and patches nothing."),
    LOG_LEVEL: ("DEBUG, INFO, WARNING, ERROR, CRITICAL", "WARNING",
                "Level of the `torchdevice` logger (stderr handler)."),
    DISABLE_PATCHES: ("comma list of areas, or * for all", "(none)",
                      "Patch areas to leave out, e.g. `amp,streams`."),
    STRICT: ("1/true/yes/on or 0/false/no/off", "off",
             "Raise instead of logging when a patch area fails to apply."),
    MASQUERADE: ("1/true/yes/on or 0/false/no/off", "on",
                 "Answer `torch.cuda.is_available()` and friends as a CUDA machine "
                 "would when code outside torch asks."),
    DEVICE_COUNT: ("integer >= 1", "1",
                   "What `torch.cuda.device_count()` reports to user code while redirecting."),
    TRUTHFUL_MODULES: ("comma list of top-level package names", "(none)",
                       "Packages that see the real CUDA answers (no masquerade), as torch itself does."),
    MPS_FLOAT64: ("downcast, cpu, error", "downcast",
                  "float64 tensors headed to MPS: downcast to float32 with a one-time "
                  "warning, keep them on the CPU, or raise."),
    REPORT: ("1 (stderr) or a file path ending in .json", "(off)",
             "Write the migration report at exit."),
    PURE_PYTHON: ("1/true/yes/on or 0/false/no/off", "off",
                  "Leave out the optional C accelerator (`torchdevice._speedups`): every wrapper runs "
                  "as Python code. For debugging and tests; read once, when torchdevice activates."),
}

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})
DEVICES = ("auto", "cpu", "mps", "cuda")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MPS_FLOAT64_POLICIES = ("downcast", "cpu", "error")
# Patch areas in application order. core/patch.py owns the area table; this
# tuple is the list of names a user may switch off, and the two are checked
# against each other in tests/test_registry.py.
AREAS = ("device", "cuda", "random", "memory", "streams", "amp", "nn", "distributed")


class ConfigError(ValueError):
    """An environment variable holds a value torchdevice does not accept."""


def _error(name: str, value: str, accepted: str) -> ConfigError:
    return ConfigError(f"torchdevice: {name}={value!r} is not valid; accepted values: {accepted}.")


def parse_bool(name: str, value: Optional[str], default: bool) -> bool:
    if value is None:
        return default
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return default if word == "" else False
    raise _error(name, value, "1, true, yes, on, 0, false, no, off (any case)")


def _parse_choice(name: str, value: Optional[str], choices, default: str, fold=str.lower) -> str:
    if value is None or not value.strip():
        return default
    word = fold(value.strip())
    if word not in choices:
        raise _error(name, value, ", ".join(choices))
    return word


def _parse_list(value: Optional[str]) -> Tuple[str, ...]:
    if not value:
        return ()
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _parse_areas(value: Optional[str]) -> FrozenSet[str]:
    items = _parse_list(value)
    if "*" in items:
        return frozenset(AREAS)
    unknown = [item for item in items if item.lower() not in AREAS]
    if unknown:
        raise _error(DISABLE_PATCHES, value or "", "a comma list of " + ", ".join(AREAS) + ", or *")
    return frozenset(item.lower() for item in items)


def _parse_count(value: Optional[str]) -> int:
    if value is None or not value.strip():
        return 1
    try:
        count = int(value.strip())
    except ValueError:
        count = 0
    if count < 1:
        raise _error(DEVICE_COUNT, value, "an integer >= 1")
    return count


def _parse_modules(value: Optional[str]) -> FrozenSet[str]:
    items = _parse_list(value)
    bad = [item for item in items if not item.replace("_", "a").replace(".", "a").isalnum()]
    if bad:
        raise _error(TRUTHFUL_MODULES, value or "", "a comma list of package names such as lightning,accelerate")
    return frozenset(items)


def _parse_report(value: Optional[str]) -> Optional[str]:
    if value is None or value.strip().lower() in FALSE_WORDS:
        return None
    word = value.strip()
    if word.lower() in TRUE_WORDS:
        return "-"
    if not word.lower().endswith(".json"):
        raise _error(REPORT, value, "1/true/yes/on (report on stderr), 0/false/no/off, or a path ending in .json")
    return _report_path(REPORT, value, word)


def _report_path(name: str, value: str, word: str) -> str:
    """``word`` with ``~`` expanded, checked now rather than when the report is written at exit.

    The report can be written only if the path is not a directory and its
    nearest existing ancestor is a writable directory (the missing ones are
    created at exit). A relative path stays relative: it is resolved against
    the working directory when the report starts (core/report.py).
    """
    path = os.path.expanduser(word)
    problem = None
    if path.startswith("~"):
        problem = "~ cannot be expanded here (no home directory)"
    elif os.path.isdir(path):
        problem = f"{os.path.abspath(path)} is a directory"
    else:
        ancestor = os.path.dirname(os.path.abspath(path))
        while not os.path.exists(ancestor) and os.path.dirname(ancestor) != ancestor:
            ancestor = os.path.dirname(ancestor)
        if not os.path.isdir(ancestor):
            problem = f"{ancestor} is not a directory"
        elif not os.access(ancestor, os.W_OK | os.X_OK):
            problem = f"the directory {ancestor} is not writable"
    if problem is not None:
        raise ConfigError(f"torchdevice: {name}={value!r} cannot be written: {problem}; give a .json path "
                          "in a writable directory (missing directories are created), or 1 for a table on stderr.")
    return path


@dataclass(frozen=True)
class Config:
    """The parsed configuration. Build it with ``load()``."""

    disable: bool = False
    device: str = "auto"
    log_level: str = "WARNING"
    disabled_areas: FrozenSet[str] = frozenset()
    strict: bool = False
    masquerade: bool = True
    device_count: int = 1
    truthful_modules: FrozenSet[str] = frozenset()
    mps_float64: str = "downcast"
    report: Optional[str] = None
    pure_python: bool = False
    # Which settings came from the environment (for `torchdevice info`).
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def with_overrides(self, **overrides) -> "Config":
        """Return a copy with explicit settings applied (explicit > env > default)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown torchdevice setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        sources = dict(self.sources)
        sources.update({name: "argument" for name in overrides})
        return replace(self, sources=sources, **overrides)


def load(environ: Optional[Mapping[str, str]] = None) -> Config:
    """Parse the environment (``os.environ`` by default) into a ``Config``."""
    env = os.environ if environ is None else environ
    get = env.get
    sources = {name: "environment" for name in VARIABLES if name in env}
    return Config(
        disable=parse_bool(DISABLE, get(DISABLE), False),
        device=_parse_choice(DEVICE, get(DEVICE), DEVICES, "auto"),
        log_level=_parse_choice(LOG_LEVEL, get(LOG_LEVEL), LOG_LEVELS, "WARNING", fold=str.upper),
        disabled_areas=_parse_areas(get(DISABLE_PATCHES)),
        strict=parse_bool(STRICT, get(STRICT), False),
        masquerade=parse_bool(MASQUERADE, get(MASQUERADE), True),
        device_count=_parse_count(get(DEVICE_COUNT)),
        truthful_modules=_parse_modules(get(TRUTHFUL_MODULES)),
        mps_float64=_parse_choice(MPS_FLOAT64, get(MPS_FLOAT64), MPS_FLOAT64_POLICIES, "downcast"),
        report=_parse_report(get(REPORT)),
        pure_python=parse_bool(PURE_PYTHON, get(PURE_PYTHON), False),
        sources=sources,
    )
