"""Fault injection (issue 18): bad settings, bad cache files, shadowing modules, unpatch leftovers.

Each test asserts the exact outcome (a clear error, or correct behaviour) and that torch
is left either fully patched or fully untouched. Behaviour that depends on how torch is
imported runs in subprocesses; behaviour that depends on the installation runs in fresh
venvs (tests/test_faults_install.py).
"""
import dataclasses
import itertools
import json
import os

import pytest
import torch

import torchdevice
from area_checks import CHECKS
from conftest import clean_env, run_python
from torchdevice.core import config, patch
from torchdevice.core.config import ConfigError


def untouched():
    """No record applied and the public names are torch's own."""
    return (patch.REGISTRY.applied_records() == [] and torch.device is torch._C.device
            and torch.zeros is torch._C._VariableFunctions.zeros and not torchdevice.status()["active"])


# -- TORCHDEVICE_DEVICE_COUNT: plain digits, bounded by c10::DeviceIndex ----------------------
def test_count_bound_is_what_torch_can_index():
    last = config.MAX_DEVICE_COUNT - 1
    assert torch.device("cuda", last).index == last
    assert torch.device(f"cuda:{last}").index == last
    assert torch.device("cuda", last + 1).index != last + 1, "one more wraps: DeviceIndex is int8"


@pytest.mark.parametrize("value", ["99999999999999999999999", "129", "1_000", "+3", "\u0663", "-1", "0x10"])
def test_bad_count_fails_before_anything_is_patched(value):
    code = """
    import sys
    try:
        import torch
    except ValueError as exc:
        print("ERR", exc)
    print("torch._C" in sys.modules)
    """
    result = run_python(_with_hook(code), env=clean_env(TORCHDEVICE_DEVICE_COUNT=value))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == [f"ERR torchdevice: TORCHDEVICE_DEVICE_COUNT={value!r} is not valid; accepted values: "
                     f"an integer from 1 to {config.MAX_DEVICE_COUNT} (plain digits).", "False"]


def _with_hook(code):
    """``code`` run with the autoload hook armed from this checkout, as the .pth arms it."""
    import textwrap

    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    return f"import sys; sys.path.insert(0, {src!r}); import torchdevice\n" + textwrap.dedent(code)


# -- torchdevice.patch(**settings): the checks and messages of the variables --------------------
# keyword -> (a value the variable takes as a string, that value in code, a bad value in code)
GOOD_AND_BAD = {
    "device": ("cpu", "cpu", "gpu"),
    "log_level": ("info", "INFO", "loud"),
    "disabled_areas": ("amp", ("amp",), "gpu"),
    "strict": ("no", False, "maybe"),
    "masquerade": ("off", False, 2),
    "device_count": ("3", 3, -3),
    "truthful_modules": ("lightning", ["lightning"], "light ning"),
    "mps_float64": ("cpu", "cpu", "float32"),
    "report": ("1", True, "report.txt"),
    "pure_python": ("yes", True, "sometimes"),
    "precision": ("KEEP", "keep", "half"),
}


def test_every_setting_is_in_the_matrix():
    assert set(GOOD_AND_BAD) == set(config.SETTINGS)
    assert {variable for variable, *_ in config.SETTINGS.values()} == set(config.VARIABLES) - {config.DISABLE}


@pytest.mark.parametrize("name", sorted(config.SETTINGS))
def test_setting_in_code_parses_as_its_variable(name):
    variable = config.SETTINGS[name][0]
    as_string, in_code, bad = GOOD_AND_BAD[name]
    from_env = getattr(config.load({variable: as_string}), name)
    assert getattr(config.Config().with_overrides(**{name: as_string}), name) == from_env
    assert getattr(config.Config().with_overrides(**{name: in_code}), name) == from_env


@pytest.mark.parametrize("name", sorted(config.SETTINGS))
def test_bad_setting_in_code_is_a_config_error_naming_it(name):
    variable = config.SETTINGS[name][0]
    bad = GOOD_AND_BAD[name][2]
    with pytest.raises(ConfigError) as info:
        config.Config().with_overrides(**{name: bad})
    message = str(info.value)
    assert message.startswith(f"torchdevice: {name}") and repr(bad) in message and variable in message
    if isinstance(bad, str):  # a string gets the variable's own message, with the keyword named
        with pytest.raises(ConfigError) as from_env:
            config.load({variable: bad})
        assert message.replace(f"{name} ({variable})", variable) == str(from_env.value)


def test_patch_with_bad_settings_leaves_torch_untouched(unpatched):
    for name, (_, _, bad) in GOOD_AND_BAD.items():
        with pytest.raises(ConfigError):
            torchdevice.patch(**{"device": "cpu", name: bad})
        assert untouched(), name
    with pytest.raises(ConfigError, match=r"strict \(TORCHDEVICE_STRICT\)='no way'"):
        torchdevice.patch(strict="no way", device="cpu")
    assert untouched()


def test_strict_no_is_false_and_count_is_checked(unpatched):
    status = torchdevice.patch(strict="no", device="cpu", device_count="2")
    assert patch.active_config().strict is False and torch.cuda.device_count() == 2
    assert status["areas"]["device"]["state"] == "applied"


def test_unknown_setting_lists_the_settings_only():
    with pytest.raises(TypeError) as info:
        config.Config().with_overrides(colour="red")
    assert str(info.value) == ("unknown torchdevice setting(s): colour; known: " + ", ".join(sorted(config.SETTINGS)))
    assert "sources" not in str(info.value) and "disable," not in str(info.value)


def test_settings_are_documented_in_readme():
    import pathlib

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    for name, (variable, types, *_rest) in config.SETTINGS.items():
        assert f"| `{name}` | {types} | `{variable}` |" in readme, name


# -- TORCHDEVICE_DISABLE_PATCHES: every combination is coherent -------------------------------
SUBSETS = [frozenset(c) for n in range(len(config.AREAS) + 1) for c in itertools.combinations(config.AREAS, n)]
REFUSED = [s for s in SUBSETS if config.dependants(s)]
ACCEPTED = [s for s in SUBSETS if not config.dependants(s)]


def _ids(subsets):
    return [",".join(a for a in config.AREAS if a in s) or "(none)" for s in subsets]


def test_every_area_has_a_check_and_every_subset_is_tested():
    assert set(CHECKS) == set(config.AREAS) == set(patch.AREAS)
    assert set(config.DEPENDS) <= set(config.AREAS)
    assert len(SUBSETS) == 2 ** len(config.AREAS) and set(REFUSED) | set(ACCEPTED) == set(SUBSETS)


def _run_checks(disabled):
    """Activate (strictly, CPU target) with ``disabled`` off, bypassing the refusal; {area: check passed}."""
    import warnings

    cfg = dataclasses.replace(config.load({}), device="cpu", strict=True, disabled_areas=frozenset(disabled))
    torchdevice.unpatch()
    status = patch.activate(cfg)
    passed = {}
    try:
        for area, check in CHECKS.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    check()
                    passed[area] = True
                except Exception:
                    passed[area] = False
    finally:
        torchdevice.unpatch()
    return status, passed


def test_dependency_table_is_what_the_areas_need(unpatched):
    """Derived from behaviour: with one area off, exactly it and the areas that need it stop working."""
    for area in config.AREAS:
        _, passed = _run_checks({area})
        broken = {name for name, ok in passed.items() if not ok}
        assert broken == {area, *config.dependants({area})}, area


@pytest.mark.parametrize("disabled", REFUSED, ids=_ids(REFUSED))
def test_incoherent_subset_is_refused_before_torch_is_touched(disabled, unpatched):
    value = ",".join(sorted(disabled))
    needing = config.dependants(disabled)
    with pytest.raises(ConfigError) as info:
        config.load({config.DISABLE_PATCHES: value})
    message = str(info.value)
    full = ",".join(a for a in config.AREAS if a in disabled or a in needing)
    assert message.startswith(f"torchdevice: TORCHDEVICE_DISABLE_PATCHES={value!r} would leave areas on")
    assert f"switch those off too ({full})" in message
    assert all(f"{area} needs" in message for area in needing)
    config.load({config.DISABLE_PATCHES: full})  # the list it suggests is accepted
    with pytest.raises(ConfigError):
        torchdevice.patch(device="cpu", disabled_areas=disabled)
    assert untouched()


def test_accepted_subsets_apply_exactly_and_work(unpatched):
    for disabled in ACCEPTED:
        status, passed = _run_checks(disabled)
        states = {area: state["state"] for area, state in status["areas"].items()}
        assert states == {a: "disabled" if a in disabled else "applied" for a in config.AREAS}, disabled
        assert passed == {a: a not in disabled for a in config.AREAS}, disabled
        assert untouched()
