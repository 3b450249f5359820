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
from dataclasses import dataclass, field, replace
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
PRECISION = "TORCHDEVICE_PRECISION"

# The largest device count torch can index: c10::DeviceIndex is an int8_t, so CUDA
# ordinals are 0..127 (torch.device("cuda", 128) wraps to cuda:-128). tests/test_faults.py
# checks the bound against the running torch.
MAX_DEVICE_COUNT = 128

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
                      "Patch areas to leave out, e.g. `amp,streams`. An area another enabled area needs "
                      "cannot be left out alone (cuda, random, memory and streams need device; random, "
                      "memory and streams need cuda; amp, nn and distributed need device): the error names "
                      "the list to give instead."),
    STRICT: ("1/true/yes/on or 0/false/no/off", "off",
             "Raise instead of logging when a patch area fails to apply."),
    MASQUERADE: ("1/true/yes/on or 0/false/no/off", "on",
                 "Answer `torch.cuda.is_available()` and friends as a CUDA machine "
                 "would when code outside torch asks."),
    DEVICE_COUNT: (f"integer from 1 to {MAX_DEVICE_COUNT} (plain digits)", "1",
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
    PRECISION: ("auto, keep, float32, bfloat16, float16", "auto",
                "What `autocast(\"cuda\")` regions compute in. auto: the requested half dtype where the target "
                "computes it fast (decided from the hardware, cached), else float32; keep: the requested dtype; "
                "or that dtype for every region. The program still sees the requested autocast state."),
}

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})
DEVICES = ("auto", "cpu", "mps", "cuda")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MPS_FLOAT64_POLICIES = ("downcast", "cpu", "error")
PRECISIONS = ("auto", "keep", "float32", "bfloat16", "float16")
# Patch areas in application order. core/patch.py owns the area table; this
# tuple is the list of names a user may switch off, and the two are checked
# against each other in tests/test_registry.py.
AREAS = ("device", "cuda", "random", "memory", "streams", "amp", "nn", "distributed")


# Which areas an area cannot work without (application order is core/patch.py AREAS).
# - cuda answers torch.cuda.is_available() True and device_count() N: without the device
#   area every CUDA factory then fails deep in the dispatcher ("... 'CUDA' backend").
# - random, memory and streams rebuild torch.cuda APIs on the target: they read the
#   current device and the device count the cuda area keeps, and a program reaches them
#   only after the masquerade has told it CUDA exists.
# - amp, nn and distributed build on redirected tensors and devices.
# Switching off an area that an enabled one needs is refused (``_parse_areas``), so every
# accepted combination is coherent: tests/test_faults.py runs every subset.
DEPENDS: Dict[str, Tuple[str, ...]] = {
    "cuda": ("device",),
    "random": ("device", "cuda"),
    "memory": ("device", "cuda"),
    "streams": ("device", "cuda"),
    "amp": ("device",),
    "nn": ("device",),
    "distributed": ("device",),
}


class ConfigError(ValueError):
    """An environment variable or a setting given in code holds a value torchdevice does not accept."""


def _error(name: str, value, accepted: str) -> ConfigError:
    return ConfigError(f"torchdevice: {name}={value!r} is not valid; accepted values: {accepted}.")


_BOOL_ACCEPTED = "1, true, yes, on, 0, false, no, off (any case)"


def parse_bool(name: str, value: Optional[str], default: bool) -> bool:
    if value is None:
        return default
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return default if word == "" else False
    raise _error(name, value, _BOOL_ACCEPTED)


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


def dependants(disabled) -> Tuple[str, ...]:
    """The enabled areas that need an area of ``disabled`` (directly or through another), in area order."""
    off = set(disabled)
    changed = True
    while changed:
        changed = False
        for area in AREAS:
            if area not in off and any(dep in off for dep in DEPENDS.get(area, ())):
                off.add(area)
                changed = True
    return tuple(area for area in AREAS if area in off and area not in disabled)


def _parse_areas(value: Optional[str], name: str = DISABLE_PATCHES) -> FrozenSet[str]:
    items = _parse_list(value)
    if "*" in items:
        return frozenset(AREAS)
    unknown = [item for item in items if item.lower() not in AREAS]
    if unknown:
        raise _error(name, value or "", "a comma list of " + ", ".join(AREAS) + ", or *")
    disabled = frozenset(item.lower() for item in items)
    needing = dependants(disabled)
    if needing:
        needs = "; ".join(f"{area} needs {', '.join(d for d in DEPENDS[area] if d in disabled or d in needing)}"
                          for area in needing)
        full = ",".join(area for area in AREAS if area in disabled or area in needing)
        raise ConfigError(f"torchdevice: {name}={value!r} would leave areas on that cannot work without the ones "
                          f"it switches off ({needs}); switch those off too ({full}), or keep the others on.")
    return disabled


def _parse_count(value: Optional[str], name: str = DEVICE_COUNT) -> int:
    if value is None or not value.strip():
        return 1
    word = value.strip()
    # Plain ASCII digits only: int() would also take "1_000", "+3" and non-ASCII digits.
    count = int(word) if word.isascii() and word.isdigit() and len(word) <= 4 else 0
    if not 1 <= count <= MAX_DEVICE_COUNT:
        raise _error(name, value, f"an integer from 1 to {MAX_DEVICE_COUNT} (plain digits)")
    return count


def _parse_modules(value: Optional[str], name: str = TRUTHFUL_MODULES) -> FrozenSet[str]:
    items = _parse_list(value)
    bad = [item for item in items if not item.replace("_", "a").replace(".", "a").isalnum()]
    if bad:
        raise _error(name, value or "", "a comma list of package names such as lightning,accelerate")
    return frozenset(items)


def _parse_report(value: Optional[str], name: str = REPORT) -> Optional[str]:
    if value is None or value.strip().lower() in FALSE_WORDS:
        return None
    word = value.strip()
    if word.lower() in TRUE_WORDS:
        return "-"
    if not word.lower().endswith(".json"):
        raise _error(name, value, "1/true/yes/on (report on stderr), 0/false/no/off, or a path ending in .json")
    return _report_path(name, value, word)


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


# -- settings given in code: torchdevice.patch(**settings) ---------------------------------
# keyword -> (the variable it stands for, the types it takes, the parser of that variable). A string is parsed exactly as the variable's value is, with the
# same accepted values and messages; a value of the listed types is checked by the same
# rules. TORCHDEVICE_DISABLE has no keyword: an explicit patch() always applies.
def _bool_parser(default):
    return lambda value, name: parse_bool(name, value, default)


def _choice_parser(choices, default, fold=str.lower):
    return lambda value, name: _parse_choice(name, value, choices, default, fold)


SETTINGS: Dict[str, Tuple[str, str, object]] = {
    "device": (DEVICE, "str", _choice_parser(DEVICES, "auto")),
    "log_level": (LOG_LEVEL, "str", _choice_parser(LOG_LEVELS, "WARNING", fold=str.upper)),
    "disabled_areas": (DISABLE_PATCHES, "str or iterable of str", _parse_areas),
    "strict": (STRICT, "bool or str", _bool_parser(False)),
    "masquerade": (MASQUERADE, "bool or str", _bool_parser(True)),
    "device_count": (DEVICE_COUNT, "int or str", _parse_count),
    "truthful_modules": (TRUTHFUL_MODULES, "str or iterable of str", _parse_modules),
    "mps_float64": (MPS_FLOAT64, "str", _choice_parser(MPS_FLOAT64_POLICIES, "downcast")),
    "report": (REPORT, "str, os.PathLike, bool or None", _parse_report),
    "pure_python": (PURE_PYTHON, "bool or str", _bool_parser(False)),
    "precision": (PRECISION, "str", _choice_parser(PRECISIONS, "auto")),
}


def setting(name: str, value):
    """Check one keyword setting as its environment variable is checked; return the parsed value."""
    variable, types, parse = SETTINGS[name]
    label = f"{name} ({variable})"
    if isinstance(value, str):
        return parse(value, label)
    if isinstance(value, bool):
        if name == "report":
            return "-" if value else None
        if name == "device_count":
            raise _error(label, value, f"an integer from 1 to {MAX_DEVICE_COUNT}")
        return value
    if value is None and name == "report":
        return None
    if isinstance(value, int) and name == "device_count":
        if not 1 <= value <= MAX_DEVICE_COUNT:
            raise _error(label, value, f"an integer from 1 to {MAX_DEVICE_COUNT}")
        return value
    if name == "report" and hasattr(value, "__fspath__"):
        return parse(os.fspath(value), label)
    if name in ("disabled_areas", "truthful_modules") and not isinstance(value, (bytes, bytearray)):
        try:
            items = list(value)
        except TypeError:
            items = None
        if items is not None and all(isinstance(item, str) and "," not in item for item in items):
            return parse(",".join(items), label)
    raise ConfigError(f"torchdevice: {name}={value!r} is not valid; {name} takes a {types} "
                      f"(the values of {variable}).")


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
    precision: str = "auto"
    # Which settings came from the environment (for `torchdevice info`).
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def with_overrides(self, **overrides) -> "Config":
        """Return a copy with explicit settings applied (explicit > env > default).

        Every value is checked as its environment variable is (``setting``); an
        unknown name raises TypeError listing the keyword settings (``SETTINGS``).
        """
        unknown = sorted(set(overrides) - set(SETTINGS))
        if unknown:
            raise TypeError(f"unknown torchdevice setting(s): {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(SETTINGS))}")
        values = {name: setting(name, value) for name, value in overrides.items()}
        sources = dict(self.sources)
        sources.update({name: "argument" for name in overrides})
        return replace(self, sources=sources, **values)


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
        precision=_parse_choice(PRECISION, get(PRECISION), PRECISIONS, "auto"),
        sources=sources,
    )
