"""``torchdevice info`` and ``torchdevice coverage``."""
import importlib.util
import json
import subprocess
import sys
import types

import pytest
import torch

import torchdevice
from conftest import clean_env
from torchdevice import __main__ as cli
from torchdevice.core import config


def info(*args, env=None, python_args=()):
    return subprocess.run([sys.executable, *python_args, "-m", "torchdevice", "info", *args],
                          env=env if env is not None else clean_env(), capture_output=True, text=True, timeout=300)


def test_info_json_with_autoload_active():
    done = info("--json", env=clean_env(TORCHDEVICE_DEVICE="cpu", TORCHDEVICE_DEVICE_COUNT="2"))
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["torchdevice"] == torchdevice.__version__
    assert data["torch"]["version"] == torch.__version__
    expected_build = (f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build")
    assert data["torch"]["build"].startswith(expected_build)
    assert data["autoload"]["active"] is True and data["autoload"]["pth"].endswith("torchdevice_autoload.pth")
    assert data["activated_by"] == "autoload"
    assert data["target"] == {"device": "cpu", "redirect": True, "reason": "TORCHDEVICE_DEVICE=cpu"}
    assert list(data["config"]) == list(config.VARIABLES)
    assert data["config"]["TORCHDEVICE_DEVICE_COUNT"] == {
        "value": "2", "source": "environment", "default": "1", "accepted": config.VARIABLES[config.DEVICE_COUNT][0]}
    assert data["config"]["TORCHDEVICE_REPORT"]["source"] == "default"
    assert data["config"]["TORCHDEVICE_REPORT"]["value"] is None
    assert list(data["areas"]) == list(config.AREAS)
    assert data["areas"]["device"]["state"] == "applied"
    assert "torch.Tensor.to" in data["areas"]["device"]["applied"]
    assert data["hardware"]["mps_available"] is False or sys.platform == "darwin"
    built = importlib.util.find_spec("torchdevice._speedups") is not None
    assert data["accelerator"] == ("active" if built else "not built (no C compiler when torchdevice was installed)")


def _accelerator_with_report():
    try:
        from torchdevice import _speedups
    except ImportError:
        return "not built (no C compiler when torchdevice was installed)"
    if _speedups.COUNTS_SITES:
        return "active"
    return "off: the migration report counts calls in the Python wrappers before Python 3.11"


@pytest.mark.parametrize("variable,value,why", [
    ("TORCHDEVICE_PURE_PYTHON", "1", "off: TORCHDEVICE_PURE_PYTHON is set"),
    ("TORCHDEVICE_REPORT", "1", _accelerator_with_report()),
])
def test_info_says_whether_the_accelerator_is_on_and_why(variable, value, why):
    done = info("--json", env=clean_env(**{variable: value}))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["accelerator"] == why
    text = info(env=clean_env(**{variable: value}, TORCHDEVICE_LOG_LEVEL="error"))
    assert f"accelerator  {why}" in text.stdout


def test_info_when_disabled_says_so_and_still_shows_the_patches():
    done = info("--json", env=clean_env(TORCHDEVICE_DISABLE="1"))
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["autoload"]["active"] is False
    assert data["autoload"]["why"] == "TORCHDEVICE_DISABLE=1"
    assert data["activated_by"] == "info"
    assert data["config"]["TORCHDEVICE_DISABLE"]["source"] == "environment"
    assert data["areas"]["device"]["state"] == "applied"


def test_info_with_python_dash_s_reports_the_pth_as_not_read():
    import os

    src = os.path.dirname(os.path.dirname(torchdevice.__file__))
    site_dir = os.path.dirname(os.path.dirname(torch.__file__))
    done = info("--json", env=clean_env(PYTHONPATH=os.pathsep.join([src, site_dir])), python_args=("-S",))
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["autoload"]["active"] is False and "-S" in data["autoload"]["why"]


def test_info_text_sections():
    done = info(env=clean_env(TORCHDEVICE_LOG_LEVEL="error"))
    assert done.returncode == 0, done.stderr
    text = done.stdout
    for heading in ("torch ", "hardware ", "target ", "autoload ", "configuration", "patch areas"):
        assert any(line.startswith(heading) for line in text.splitlines()), heading
    assert f"torch        {torch.__version__}" in text
    assert "TORCHDEVICE_LOG_LEVEL         'error'  (environment)" in text
    assert "TORCHDEVICE_DEVICE            auto  (default)" in text
    assert "  device       applied:" in text


def test_info_bad_configuration_exits_2():
    done = info(env=clean_env(TORCHDEVICE_MPS_FLOAT64="float32"))
    assert done.returncode == 2
    assert done.stderr == ("torchdevice info: TORCHDEVICE_MPS_FLOAT64='float32' is not valid; "
                           "accepted values: downcast, cpu, error.\n")
    assert done.stdout == ""


# -- coverage ------------------------------------------------------------------------------
ROWS = [
    {"name": "torch.cuda.synchronize", "kind": "no-op", "note": "CPU work is synchronous"},
    {"name": "torch.cuda.Event", "kind": "emulated", "note": "timing measured on the host"},
    {"name": "torch.cuda.get_device_capability", "kind": "unsupported", "note": ""},
]


@pytest.fixture
def fake_coverage(monkeypatch):
    """A stand-in with the interface of torchdevice.coverage (coverage_rows, render_markdown)."""
    module = types.ModuleType("torchdevice.coverage")
    module.coverage_rows = lambda: [dict(r) for r in ROWS]
    module.render_markdown = lambda: "| name | kind | note |\n|---|---|---|\n| torch.cuda.synchronize | no-op | x |\n"
    monkeypatch.setitem(sys.modules, "torchdevice.coverage", module)
    return module


def test_coverage_table(fake_coverage, capsys):
    assert cli.main(["coverage"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["name", "kind", "note"]
    assert out[1].split(None, 2) == ["torch.cuda.synchronize", "no-op", "CPU work is synchronous"]
    assert out[3].rstrip() == "torch.cuda.get_device_capability  unsupported"
    assert out[-1] == "3 names: 1 emulated, 1 no-op, 1 unsupported"


def test_coverage_json_and_markdown(fake_coverage, capsys):
    assert cli.main(["coverage", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == ROWS
    assert cli.main(["coverage", "--markdown"]) == 0
    assert capsys.readouterr().out == fake_coverage.render_markdown()


def test_coverage_json_and_markdown_are_exclusive(fake_coverage, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["coverage", "--json", "--markdown"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_coverage_missing_module(monkeypatch, capsys):
    import importlib

    real_import = importlib.import_module

    def no_coverage(name, *args):
        if name == "torchdevice.coverage":
            raise ModuleNotFoundError("No module named 'torchdevice.coverage'", name="torchdevice.coverage")
        return real_import(name, *args)

    monkeypatch.delitem(sys.modules, "torchdevice.coverage", raising=False)
    monkeypatch.setattr(importlib, "import_module", no_coverage)
    assert cli.main(["coverage"]) == 1
    assert capsys.readouterr().err == ("torchdevice coverage: the torch.cuda coverage table is not part of this "
                                       "build of torchdevice\n")


def test_real_coverage_module_end_to_end():
    """Runs once torchdevice.coverage exists (it is written on another branch)."""
    import importlib.util

    if importlib.util.find_spec("torchdevice.coverage") is None:
        pytest.skip("torchdevice.coverage is not part of this checkout")
    for env in (clean_env(), clean_env(TORCHDEVICE_DISABLE="1")):
        done = subprocess.run([sys.executable, "-m", "torchdevice", "coverage", "--json"], env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        rows = {row["name"]: row for row in json.loads(done.stdout)}
        assert rows["synchronize"]["kind"] in ("no-op", "redirected")
        assert set(rows["synchronize"]) == {"name", "kind", "note"}


# -- stored answers (torchdevice/_cli_cache.py) ------------------------------------------------
from torchdevice import _cli_cache  # noqa: E402
CLI_PROBE = """
import sys
import torchdevice
if len(sys.argv) > 2:
    torchdevice.__version__ = sys.argv[2]  # as after an upgrade of torchdevice
from torchdevice.__main__ import main
code = main(sys.argv[1].split())
sys.stderr.write("torch imported: %s\\n" % ("torch" in sys.modules))
sys.exit(code)
"""


def cli_probe(command, tmp_path, *args, **env):
    done = subprocess.run([sys.executable, "-c", CLI_PROBE, command, *args],
                          env=clean_env(XDG_CACHE_HOME=str(tmp_path), **env), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout, done.stderr.splitlines()[-1] == "torch imported: True"


@pytest.mark.skipif(torch.version.cuda is not None or torch.version.hip is not None or sys.platform == "darwin",
                    reason="answers are stored only for CPU-only torch builds off macOS")
def test_repeated_commands_answer_from_the_store_and_a_version_change_invalidates_it(tmp_path):
    first, imported = cli_probe("coverage --json", tmp_path)
    assert imported and json.loads(first)
    again, imported = cli_probe("coverage --json", tmp_path)
    assert again == first and not imported, "the second run answers without importing torch"
    info_first, imported = cli_probe("info --json", tmp_path)
    assert imported
    info_again, imported = cli_probe("info --json", tmp_path)
    assert not imported and json.loads(info_again) == json.loads(info_first)

    # The stored file is what answers: a file written as store() writes it is printed as is.
    stored = [p for p in (tmp_path / "torchdevice").glob("cli-*.json")
              if json.loads(p.read_text())["answer"] == first]
    assert len(stored) == 1
    data = json.loads(stored[0].read_text())
    data["answer"] = "STORED\n"
    data["sha256"] = _cli_cache._digest(data["key"], data["answer"])
    stored[0].write_text(json.dumps(data))
    assert cli_probe("coverage --json", tmp_path) == ("STORED\n", False)
    # Another torchdevice version, or another configuration, never reads it.
    out, imported = cli_probe("coverage --json", tmp_path, "0.0.0.dev-upgraded")
    assert imported and out == first
    out, imported = cli_probe("coverage --json", tmp_path, TORCHDEVICE_LOG_LEVEL="error")
    assert imported and out == first


CPU_ONLY_OFF_MACOS = pytest.mark.skipif(
    torch.version.cuda is not None or torch.version.hip is not None or sys.platform == "darwin",
    reason="answers are stored only for CPU-only torch builds off macOS")


def stored_answer(tmp_path, which):
    """(path, data) of the one stored answer ``which(answer)`` selects."""
    found = [(path, json.loads(path.read_text())) for path in (tmp_path / "torchdevice").glob("cli-*.json")]
    found = [(path, data) for path, data in found if which(data["answer"])]
    assert len(found) == 1, found
    return found[0]


def forge(path, data, answer, checksum=True):
    """Write ``answer`` into a stored file, with a correct checksum unless told otherwise."""
    data = dict(data, answer=answer)
    if checksum:
        data["sha256"] = _cli_cache._digest(data["key"], answer)
    path.write_text(json.dumps(data))


ESC = "\x1b]0;owned\x07\x1b[2J"  # set the terminal title, clear the screen


@CPU_ONLY_OFF_MACOS
def test_info_computes_again_for_any_stored_answer_it_did_not_write(tmp_path):
    """A valid JSON answer of the wrong shape crashed `info` (KeyError: 'hardware'); escape
    sequences in it were printed raw. Every such file now means "compute again"."""
    first, imported = cli_probe("info --json", tmp_path)
    assert imported
    path, data = stored_answer(tmp_path, lambda answer: isinstance(answer, dict))
    good = data["answer"]
    assert json.loads(cli_probe("info --json", tmp_path)[0]) == json.loads(first)
    wrong_type = dict(good, hardware=dict(good["hardware"], mps_available="no"))
    escaped = dict(good, accelerator=good["accelerator"] + ESC)
    bad = dict(good, areas={"device": dict(good["areas"]["device"], applied=[1, 2])})
    for answer, checksum in [({"torch": good["torch"]}, True),     # keys missing (was: KeyError)
                             (dict(good, extra=1), True),           # a key more
                             (wrong_type, True),                    # a bool that is a string
                             (bad, True),                           # list items of another type
                             (escaped, True),                       # terminal control characters
                             ([good], True),                        # not a dict at all
                             (dict(good, accelerator="forged"), False)]:  # edited: checksum mismatch
        forge(path, data, answer, checksum)
        out, imported = cli_probe("info --json", tmp_path)
        assert imported, f"{answer!r:.80} was used"
        assert json.loads(out) == json.loads(first) and "\x1b" not in out
    text, imported = cli_probe("info", tmp_path)  # the text form from the recomputed answer
    assert not imported and "\x1b" not in text and text.startswith("torchdevice ")


@CPU_ONLY_OFF_MACOS
def test_coverage_computes_again_for_any_stored_answer_it_did_not_write(tmp_path):
    """`coverage` stores its output text: an answer that is no text (was: TypeError), holds a
    terminal control character, or does not match its checksum is computed again."""
    first, imported = cli_probe("coverage", tmp_path)
    assert imported
    path, data = stored_answer(tmp_path, lambda answer: isinstance(answer, str))
    for answer, checksum in [({"rows": []}, True), (["a"], True), (7, True), (None, True),
                             ("forged" + ESC + "\n", True), ("forged\n", False)]:
        forge(path, data, answer, checksum)
        out, imported = cli_probe("coverage", tmp_path)
        assert imported and out == first, f"{answer!r} was used"
    for broken in ("", "{", json.dumps({"key": data["key"], "answer": first}),  # the format before checksums
                   json.dumps(dict(data, format=1))):
        path.write_text(broken)
        assert cli_probe("coverage", tmp_path) == (first, True)
    assert cli_probe("coverage", tmp_path) == (first, False), "the recomputed answer is stored again"


def test_shapes_are_matched_exactly():
    from torchdevice._cli_cache import matches

    shape = {"a": [str], "b": {str: bool}, "c": (str, type(None)), "d": int}
    assert matches({"a": ["x"], "b": {"k": True}, "c": None, "d": 3}, shape)
    assert not matches({"a": ["x"], "b": {"k": True}, "c": None, "d": True}, shape), "bool is not int"
    assert not matches({"a": ["x"], "b": {"k": 1}, "c": None, "d": 3}, shape)
    assert not matches({"a": ["x"], "b": {"k\x1b": True}, "c": None, "d": 3}, shape)
    assert not matches({"a": "x", "b": {}, "c": None, "d": 3}, shape)
    assert not matches({"a": [], "b": {}, "c": None}, shape)
    assert matches("line\ttab\n", str) and not matches("bell\x07", str) and not matches("csi\x9b", str)


def fake_torch(root, version="2.99.0+cpu", cuda="None"):
    import importlib.machinery

    root.mkdir(exist_ok=True)
    (root / "version.py").write_text(f"__version__ = '{version}'\ncuda: Optional[str] = {cuda}\n"
                                     f"git_version = 'abc'\nhip: Optional[str] = None\n")
    extension = root / f"_C{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    if not extension.exists():
        extension.write_bytes(b"\0" * 16)
    return root


def test_store_key_follows_torch_torchdevice_and_configuration(tmp_path, monkeypatch):
    import os

    from torchdevice import _cli_cache

    torch_dir = fake_torch(tmp_path / "torch")
    monkeypatch.setattr(_cli_cache, "_torch_dir", lambda: torch_dir)
    monkeypatch.delitem(sys.modules, "torch")  # restored after the test
    monkeypatch.setattr(sys, "platform", "linux")
    base = _cli_cache.key("coverage-text")
    assert base is not None and base == _cli_cache.key("coverage-text")
    assert _cli_cache.key("coverage-json") != base and _cli_cache.key("info") != base

    fake_torch(torch_dir, version="2.99.1+cpu")  # a torch upgrade
    assert _cli_cache.key("coverage-text") not in (None, base)
    fake_torch(torch_dir)
    assert _cli_cache.key("coverage-text") == base
    extension = next(torch_dir.glob("_C*"))
    os.utime(extension, ns=(1, 1))  # a reinstalled build of the same version
    assert _cli_cache.key("coverage-text") not in (None, base)
    base = _cli_cache.key("coverage-text")

    # The key covers the C accelerator too: info's answer says whether it is in use, and a
    # reinstall may build or drop it without touching a .py file.
    _, files = _cli_cache._package_files()
    built = importlib.util.find_spec("torchdevice._speedups") is not None
    assert any(name.startswith("_speedups.") and not name.endswith((".py", ".c")) for name, *_ in files) is built

    monkeypatch.setattr(torchdevice, "__version__", "0.0.0.dev-other")
    assert _cli_cache.key("coverage-text") not in (None, base)
    monkeypatch.undo()
    monkeypatch.setattr(_cli_cache, "_torch_dir", lambda: torch_dir)
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.setattr(sys, "platform", "linux")
    assert _cli_cache.key("coverage-text") == base
    monkeypatch.setenv("TORCHDEVICE_DEVICE", "cpu")
    assert _cli_cache.key("coverage-text") not in (None, base)
    monkeypatch.delenv("TORCHDEVICE_DEVICE")

    fake_torch(torch_dir, cuda="'12.4'")  # a CUDA build: the answer depends on the hardware
    assert _cli_cache.key("coverage-text") is None
    fake_torch(torch_dir)
    monkeypatch.setattr(sys, "platform", "darwin")  # MPS may or may not be there
    assert _cli_cache.key("coverage-text") is None
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setitem(sys.modules, "torch", torch)  # torch imported: its live state is the answer
    assert _cli_cache.key("coverage-text") is None


def test_store_ignores_foreign_and_broken_files(tmp_path, monkeypatch):
    from torchdevice import _cli_cache

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    _cli_cache.store("abc", {"x": 1})
    assert _cli_cache.load("abc", {"x": int}) == {"x": 1}
    assert _cli_cache.load("abc") is None, "the answer is not of the shape asked for (a text)"
    path = tmp_path / "torchdevice" / "cli-abc.json"
    path.write_text(json.dumps({"key": "other", "answer": 2}))
    assert _cli_cache.load("abc") is None
    path.write_text("{broken")
    assert _cli_cache.load("abc") is None
    assert _cli_cache.load(None) is None


# -- the distribution name (torchdevice/_distribution.py) ------------------------------------------
def _fake_dist_info(site, name, version, summary):
    folder = site / f"{name.replace('-', '_')}-{version}.dist-info"
    folder.mkdir()
    (folder / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: {summary}\n")
    (folder / "RECORD").write_text("")


def test_distribution_is_found_by_its_published_name_and_a_clash_is_named(tmp_path, monkeypatch):
    from torchdevice import _distribution

    monkeypatch.syspath_prepend(str(tmp_path))
    assert _distribution.clash() is None or "torchdevice" in _distribution.clash()
    _fake_dist_info(tmp_path, "torchdevice-autoload", "9.8.7", "ours")
    assert _distribution.installed_version() == "9.8.7"
    _fake_dist_info(tmp_path, "torchdevice", "0.1.3", "Setup CUDA_VISIBLE_DEVICES")
    clash = _distribution.clash()
    assert clash.startswith("the distribution 'torchdevice' 0.1.3 (Setup CUDA_VISIBLE_DEVICES) is installed too")
    assert "pip uninstall torchdevice" in clash
    assert _distribution.describe() == {"name": "torchdevice-autoload", "version": "9.8.7", "clash": clash}


def test_info_names_the_distribution_and_warns_of_the_clash(tmp_path):
    import os

    _fake_dist_info(tmp_path, "torchdevice", "0.1.3", "Setup CUDA_VISIBLE_DEVICES")
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    done = info(env=clean_env(PYTHONPATH=path, TORCHDEVICE_LOG_LEVEL="error"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].startswith("distribution torchdevice-autoload ")
    assert lines[2].startswith("             WARNING: the distribution 'torchdevice' 0.1.3")
    data = json.loads(info("--json", env=clean_env(PYTHONPATH=path)).stdout)
    assert data["distribution"]["name"] == "torchdevice-autoload" and "0.1.3" in data["distribution"]["clash"]
