"""core/patch.py: apply, restore by identity, fencing, failure isolation, status."""
import logging
import sys
import types

import pytest
import torch

import torchdevice
from torchdevice.core import config, patch
from torchdevice.core.patch import MISSING, Patch, Registry


@pytest.fixture
def owner():
    """A throwaway module and class registered in sys.modules."""
    module = types.ModuleType("td_owner")

    class Base:
        def inherited(self):
            return "base"

    class Thing(Base):
        def method(self):
            return "method"

        @staticmethod
        def static():
            return "static"

    module.func = lambda: "func"
    module.Thing = Thing
    module.table = {}
    sys.modules["td_owner"] = module
    yield module
    del sys.modules["td_owner"]


def wrap(tag):
    def make(original):
        def replacement(*args, **kwargs):
            return tag
        return replacement
    return make


def test_apply_and_restore_identity(owner):
    reg = Registry()
    func, method, static = owner.func, owner.Thing.__dict__["method"], owner.Thing.__dict__["static"]
    reg.apply_area("a", [
        Patch("td_owner", "func", wrap("F")),
        Patch("td_owner.Thing", "method", wrap("M")),
        Patch("td_owner.Thing", "static", wrap("S")),
        Patch("td_owner.Thing", "inherited", wrap("I")),
    ])
    thing = owner.Thing()
    assert owner.func() == "F" and thing.method() == "M" and owner.Thing.static() == "S" and thing.inherited() == "I"
    assert isinstance(owner.Thing.__dict__["static"], staticmethod), "descriptor kind kept"
    assert owner.func.__wrapped__ is func and getattr(owner.func, patch.MARK)
    assert reg.is_patched("td_owner", "func") and reg.original("td_owner", "func") is func
    reg.unpatch()
    assert owner.func is func
    assert owner.Thing.__dict__["method"] is method and owner.Thing.__dict__["static"] is static
    assert "inherited" not in owner.Thing.__dict__, "an inherited name is deleted, not shadowed"
    assert thing.inherited() == "base"
    assert not reg.is_patched("td_owner", "func")


def test_dict_entries(owner):
    reg = Registry()
    key = object()
    reg.apply_area("a", [Patch("td_owner.table", "entry", lambda original: "new", key=lambda: key, create=True)])
    assert owner.table[key] == "new"
    reg.unpatch()
    assert key not in owner.table


def test_area_is_fenced(owner):
    reg = Registry()
    calls = []

    def make(original):
        calls.append(1)
        return lambda: "F"

    first = reg.apply_area("a", [Patch("td_owner", "func", make)])
    second = reg.apply_area("a", [Patch("td_owner", "func", make)])
    assert first is second and len(calls) == 1


def test_same_target_twice_is_an_error(owner):
    reg = Registry()
    reg.apply_area("a", [Patch("td_owner", "func", wrap("A"))])
    with pytest.raises(RuntimeError, match="already patched"):
        reg.apply_area("b", [Patch("td_owner", "func", wrap("B"))])
    assert owner.func() == "A"


def test_failing_record_rolls_back_whole_area(owner):
    reg = Registry()
    func = owner.func

    def boom(original):
        raise ValueError("broken patch")

    with pytest.raises(ValueError):
        reg.apply_area("a", [Patch("td_owner", "func", wrap("F")), Patch("td_owner.Thing", "method", boom)])
    assert owner.func is func, "nothing half-applied"
    state = reg.state("a")
    assert state.state == "failed" and "broken patch" in state.reason and state.applied == []


def test_missing_targets_are_skipped_and_listed(owner):
    reg = Registry()
    state = reg.apply_area("a", [
        Patch("td_owner", "absent", wrap("X")),
        Patch("td_owner.nothing_here", "f", wrap("X")),
        Patch("not_a_loaded_module", "f", wrap("X")),
        Patch("td_owner", "created", wrap("C"), create=True),
    ])
    skipped = dict(state.skipped)
    assert set(skipped) == {"td_owner.absent", "td_owner.nothing_here.f", "not_a_loaded_module.f"}
    assert "does not exist" in skipped["td_owner.absent"]
    assert "not imported" in skipped["not_a_loaded_module.f"]
    assert owner.created() == "C"
    reg.unpatch()
    assert not hasattr(owner, "created")


def test_unpatch_leaves_foreign_replacement_and_warns(owner, caplog):
    reg = Registry()
    reg.apply_area("a", [Patch("td_owner", "func", wrap("F"))])
    foreign = lambda: "someone else"  # noqa: E731
    owner.func = foreign
    with caplog.at_level(logging.WARNING, logger="torchdevice"):
        reg.unpatch()
    assert owner.func is foreign
    assert "replaced after torchdevice patched it" in caplog.text


def test_unknown_kind_rejected(owner):
    with pytest.raises(ValueError, match="kind"):
        Registry().apply_area("a", [Patch("td_owner", "func", wrap("F"), kind="magic")])


def test_areas_table_matches_config():
    assert tuple(patch.AREAS) == config.AREAS


# -- activation of the real areas ------------------------------------------------
def snapshot():
    return {(a.record.owner, a.slot): a.raw for _, a in patch.REGISTRY.applied_records()}


def test_real_patches_restore_identity(unpatched):
    torchdevice.patch(strict=True, device="cpu")
    records = patch.REGISTRY.applied_records()
    assert len(records) > 50
    before = {(a.record.owner, a.slot): (a.owner, a.raw) for _, a in records}
    torchdevice.unpatch()
    for (owner_path, slot), (owner, raw) in before.items():
        now = vars(owner).get(slot, MISSING) if not isinstance(owner, dict) else owner.get(slot, MISSING)
        assert now is raw, f"{owner_path}.{slot} not restored"
    assert torch.device is torch._C.device
    assert torch.zeros is torch._C._VariableFunctions.zeros


def test_patch_twice_and_unpatch_twice(unpatched):
    first = torchdevice.patch(strict=True, device="cpu")
    applied = snapshot()
    second = torchdevice.patch(strict=True, device="cpu")
    assert snapshot() == applied and first["areas"]["device"]["applied"] == second["areas"]["device"]["applied"]
    torchdevice.unpatch()
    torchdevice.unpatch()
    assert torch.device is torch._C.device
    torchdevice.patch(strict=True, device="cpu")
    assert torch.device is not torch._C.device


def test_status_shape(patched):
    status = torchdevice.status()
    assert status["active"] is True and status["target"] == "cpu" and status["redirect"] is True
    device = status["areas"]["device"]
    assert device["state"] == "applied" and "torch.zeros" in device["applied"]
    for area in status["areas"].values():
        for skipped in area["skipped"]:
            assert skipped["target"] and skipped["reason"]


def test_disabled_area(unpatched):
    status = torchdevice.patch(strict=True, device="cpu", disabled_areas=frozenset({"cuda", "random", "memory",
                                                                                     "streams"}))
    assert status["areas"]["cuda"]["state"] == "disabled"
    assert status["areas"]["device"]["state"] == "applied"
    assert torch.cuda.current_device is patch.REGISTRY.original("torch.cuda", "current_device")


def test_failing_area_is_isolated(unpatched, monkeypatch, caplog):
    from torchdevice.ops.device import cuda

    original_current_device = torch.cuda.current_device

    def broken_records():
        return [Patch("torch.cuda", "current_device", lambda o: (lambda: 7)),
                Patch("torch.cuda", "set_device", lambda o: 1 / 0)]

    monkeypatch.setattr(cuda, "records", broken_records)
    with caplog.at_level(logging.WARNING, logger="torchdevice"):
        status = torchdevice.patch(strict=False, device="cpu")
    assert status["areas"]["cuda"]["state"] == "failed"
    assert "ZeroDivisionError" in status["areas"]["cuda"]["reason"]
    assert status["areas"]["device"]["state"] == "applied", "other areas still apply"
    assert torch.cuda.current_device is original_current_device, "failed area rolled back"
    assert len([r for r in caplog.records if "'cuda' failed" in r.getMessage()]) == 1
    torchdevice.unpatch()
    with pytest.raises(ZeroDivisionError):
        torchdevice.patch(strict=True, device="cpu")
    assert torch.cuda.current_device is original_current_device


def test_dependent_area_skipped_when_dependency_fails(unpatched, monkeypatch):
    from torchdevice.ops.device import redirect

    monkeypatch.setattr(redirect, "records", lambda: [Patch("torch", "zeros", lambda o: 1 / 0)])
    status = torchdevice.patch(strict=False, device="cpu")
    assert status["areas"]["device"]["state"] == "failed"
    assert status["areas"]["cuda"]["state"] == "skipped"
    assert "device" in status["areas"]["cuda"]["reason"]


@pytest.fixture
def late_package(tmp_path, monkeypatch):
    """A package on sys.path whose parent is imported and whose submodule `late` is not."""
    import importlib

    package = tmp_path / "td_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "late.py").write_text("def f():\n    return 'original'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("td_pkg")
    for name in ("td_pkg.late", "td_pkg"):
        sys.modules.pop(name, None)


def test_deferred_record_applies_when_module_is_imported(late_package):
    reg = Registry()
    state = reg.apply_area("a", [Patch("td_pkg.late", "f", wrap("patched"))])
    assert state.applied == [] and state.deferred == [("td_pkg.late.f", "applies when td_pkg.late is imported")]
    assert "td_pkg.late" not in sys.modules, "declaring and applying imported nothing"
    import td_pkg.late

    assert td_pkg.late.f() == "patched"
    assert reg.state("a").deferred == [] and [a.record.target for a in reg.state("a").applied] == ["td_pkg.late.f"]
    reg.unpatch()
    assert td_pkg.late.f() == "original"


def test_lazy_package_getattr_does_not_import(late_package, tmp_path):
    """A package whose __getattr__ imports submodules (as torch does for torch._dynamo): nothing is imported,
    and a record two levels down applies once both levels are imported."""
    (tmp_path / "td_pkg" / "__init__.py").write_text(
        "import importlib\n"
        "def __getattr__(name):\n"
        "    return importlib.import_module('td_pkg.' + name)\n")
    (tmp_path / "td_pkg" / "late").mkdir()
    (tmp_path / "td_pkg" / "late.py").unlink()
    (tmp_path / "td_pkg" / "late" / "__init__.py").write_text("")
    (tmp_path / "td_pkg" / "late" / "deeper.py").write_text("def f():\n    return 'original'\n")
    import importlib

    importlib.reload(late_package)
    reg = Registry()
    state = reg.apply_area("a", [Patch("td_pkg.late.deeper", "f", wrap("patched"))])
    assert state.deferred == [("td_pkg.late.deeper.f", "applies when td_pkg.late is imported")]
    assert "td_pkg.late" not in sys.modules, "the package's __getattr__ was not used to resolve the owner"
    import td_pkg.late.deeper

    assert td_pkg.late.deeper.f() == "patched"
    reg.unpatch()
    assert td_pkg.late.deeper.f() == "original"
    for name in ("td_pkg.late.deeper", "td_pkg.late"):
        sys.modules.pop(name, None)


def test_unpatch_cancels_deferred_records(late_package):
    from torchdevice import _autoload

    reg = Registry()
    reg.apply_area("a", [Patch("td_pkg.late", "f", wrap("patched"))])
    assert _autoload.is_installed()
    reg.unpatch()
    assert "td_pkg.late" not in _autoload._hooks
    import td_pkg.late

    assert td_pkg.late.f() == "original"
