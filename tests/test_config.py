"""core/config.py: every variable, its default, and every kind of bad value."""
import pathlib
import re

import pytest

from torchdevice import _autoload
from torchdevice.core import config
from torchdevice.core.config import ConfigError


def test_defaults():
    cfg = config.load({})
    assert cfg.disable is False
    assert cfg.device == "auto"
    assert cfg.log_level == "WARNING"
    assert cfg.disabled_areas == frozenset()
    assert cfg.strict is False
    assert cfg.masquerade is True
    assert cfg.device_count == 1
    assert cfg.truthful_modules == frozenset()
    assert cfg.mps_float64 == "downcast"
    assert cfg.report is None
    assert cfg.sources == {}


@pytest.mark.parametrize("word", ["1", "true", "TRUE", "Yes", " on "])
def test_bool_true_words(word):
    assert config.load({config.DISABLE: word}).disable is True
    assert config.load({config.STRICT: word}).strict is True


@pytest.mark.parametrize("word", ["0", "false", "No", "OFF"])
def test_bool_false_words(word):
    assert config.load({config.DISABLE: word}).disable is False
    assert config.load({config.MASQUERADE: word}).masquerade is False


def test_empty_bool_means_default():
    assert config.load({config.MASQUERADE: ""}).masquerade is True


@pytest.mark.parametrize("name", [config.DISABLE, config.STRICT, config.MASQUERADE])
def test_bad_bool_names_variable_value_and_accepted(name):
    with pytest.raises(ConfigError) as info:
        config.load({name: "maybe"})
    message = str(info.value)
    assert name in message and "'maybe'" in message and "true" in message and "false" in message


def test_autoload_true_words_match_config():
    assert set(_autoload._TRUE_WORDS) == set(config.TRUE_WORDS)


@pytest.mark.parametrize("value,expected", [("cpu", "cpu"), ("MPS", "mps"), (" cuda ", "cuda"), ("auto", "auto"), ("", "auto")])
def test_device_values(value, expected):
    assert config.load({config.DEVICE: value}).device == expected


def test_bad_device():
    with pytest.raises(ConfigError, match=r"TORCHDEVICE_DEVICE='tpu'.*auto, cpu, mps, cuda"):
        config.load({config.DEVICE: "tpu"})


def test_log_level():
    assert config.load({config.LOG_LEVEL: "debug"}).log_level == "DEBUG"
    with pytest.raises(ConfigError, match="TORCHDEVICE_LOG_LEVEL='loud'.*DEBUG, INFO"):
        config.load({config.LOG_LEVEL: "loud"})


def test_disable_patches_list_and_star():
    assert config.load({config.DISABLE_PATCHES: " amp , Streams,"}).disabled_areas == {"amp", "streams"}
    assert config.load({config.DISABLE_PATCHES: "*"}).disabled_areas == set(config.AREAS)
    with pytest.raises(ConfigError, match="TORCHDEVICE_DISABLE_PATCHES='amp,gpu'.*device, cuda"):
        config.load({config.DISABLE_PATCHES: "amp,gpu"})


@pytest.mark.parametrize("bad", ["0", "-2", "two", "1.5", "1_000", "+3", "\u0663", "\uff13", "129", "00129",
                                 "99999999999999999999999", "3 3"])
def test_device_count(bad):
    assert config.load({config.DEVICE_COUNT: "4"}).device_count == 4
    assert config.load({config.DEVICE_COUNT: " 128 "}).device_count == config.MAX_DEVICE_COUNT == 128
    with pytest.raises(ConfigError, match="TORCHDEVICE_DEVICE_COUNT=.*an integer from 1 to 128 \\(plain digits\\)"):
        config.load({config.DEVICE_COUNT: bad})


def test_truthful_modules():
    assert config.load({config.TRUTHFUL_MODULES: "lightning, accelerate"}).truthful_modules == {"lightning", "accelerate"}
    with pytest.raises(ConfigError, match="TORCHDEVICE_TRUTHFUL_MODULES"):
        config.load({config.TRUTHFUL_MODULES: "light ning"})


def test_mps_float64():
    assert config.load({config.MPS_FLOAT64: "CPU"}).mps_float64 == "cpu"
    with pytest.raises(ConfigError, match="downcast, cpu, error"):
        config.load({config.MPS_FLOAT64: "float32"})


def test_report():
    assert config.load({config.REPORT: "1"}).report == "-"
    assert config.load({config.REPORT: "0"}).report is None
    assert config.load({config.REPORT: "out/report.json"}).report == "out/report.json"
    with pytest.raises(ConfigError, match="TORCHDEVICE_REPORT='report.txt'"):
        config.load({config.REPORT: "report.txt"})


def test_sources_and_overrides():
    cfg = config.load({config.DEVICE: "cpu"})
    assert cfg.sources == {config.DEVICE: "environment"}
    cfg2 = cfg.with_overrides(device="mps")
    assert cfg2.device == "mps" and cfg2.sources["device"] == "argument"
    with pytest.raises(TypeError, match="unknown torchdevice setting"):
        cfg.with_overrides(colour="red")


def test_every_variable_is_documented_in_readme():
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    documented = set(re.findall(r"`(TORCHDEVICE_[A-Z0-9_]+)`", readme))
    assert documented == set(config.VARIABLES), "README env table and core/config.py VARIABLES differ"
