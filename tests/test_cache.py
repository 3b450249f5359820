"""core/cache.py: facts about the torch build kept on disk, never trusted blindly."""
import json
import os

import pytest

from torchdevice.core import cache
from torchdevice.ops.device import redirect


def test_derives_once_then_reads_back(tmp_path):
    calls = []

    def derive():
        calls.append(1)
        return [["torch", "zeros", True]]

    assert cache.cached("fact", derive, folder=tmp_path) == [["torch", "zeros", True]]
    assert cache.cached("fact", derive, folder=tmp_path) == [["torch", "zeros", True]]
    assert len(calls) == 1
    files = list(tmp_path.glob("fact-*.json"))
    assert len(files) == 1 and cache.torch_key() in files[0].name
    assert not list(tmp_path.glob(".*tmp")), "no temporary file left behind"


def test_corrupt_file_is_derived_again_and_rewritten(tmp_path):
    path = tmp_path / f"fact-{cache.torch_key()}.json"
    path.write_text("[[\"torch\", ")
    assert cache.cached("fact", lambda: [1, 2], folder=tmp_path) == [1, 2]
    assert json.loads(path.read_text()) == [1, 2]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes everywhere")
def test_unwritable_folder_still_answers(tmp_path):
    tmp_path.chmod(0o500)
    try:
        assert cache.cached("fact", lambda: [3], folder=tmp_path / "sub") == [3]
    finally:
        tmp_path.chmod(0o700)


def test_folder_that_is_a_file_still_answers(tmp_path):
    blocker = tmp_path / "blocked"
    blocker.write_text("not a directory")
    assert cache.cached("fact", lambda: [4], folder=blocker / "torchdevice") == [4]


def test_key_names_the_torch_build(monkeypatch):
    key = cache.torch_key()
    assert key == cache.torch_key() and len(key) == 20
    monkeypatch.setattr(cache, "FORMAT", cache.FORMAT + 1)
    assert cache.torch_key() != key


def test_directory_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache.directory() == tmp_path / "torchdevice"


def test_relative_xdg_cache_home_is_ignored(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache.directory() == tmp_path / ".cache" / "torchdevice"


def test_no_absolute_cache_directory_means_no_cache(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")
    monkeypatch.setattr(cache.os.path, "expanduser", lambda path: path)  # no home directory
    assert cache.directory() is None
    assert cache.cached("fact", lambda: [5]) == [5]
    assert list(tmp_path.iterdir()) == [], "nothing written relative to the working directory"


def test_device_functions_from_cache_match_a_fresh_scan(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    fresh = redirect.scan_device_functions()
    redirect.device_functions.cache_clear()
    try:
        first = redirect.device_functions()      # derives and writes
        assert list((tmp_path / "torchdevice").glob("device-functions-*.json"))
        redirect.device_functions.cache_clear()
        second = redirect.device_functions()     # reads the file
    finally:
        redirect.device_functions.cache_clear()
    assert first == second == fresh
    assert ("torch", "zeros", True) in fresh and ("torch.Tensor", "new_zeros", True) in fresh


def test_device_functions_ignore_a_cache_of_another_shape(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = tmp_path / "torchdevice"
    folder.mkdir()
    (folder / f"device-functions-{cache.torch_key()}.json").write_text(json.dumps({"zeros": 1}))
    redirect.device_functions.cache_clear()
    try:
        assert redirect.device_functions() == redirect.scan_device_functions()
    finally:
        redirect.device_functions.cache_clear()
