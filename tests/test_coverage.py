"""torchdevice.coverage: every public torch.cuda name is classified, and docs/cuda-coverage.md is current."""
import pathlib
import re

import pytest
import torch

import torchdevice
from torch_features import needs
from torchdevice import coverage
from torchdevice.core.patch import REGISTRY

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "cuda-coverage.md"


def test_every_public_name_is_classified_when_all_areas_apply(patched):
    rows = coverage.coverage_rows(namespace="torch.cuda")
    assert [row["name"] for row in rows] == sorted(torch.cuda.__all__, key=lambda n: (n.lower(), n))
    accelerator = coverage.coverage_rows(namespace="torch.accelerator")
    accelerator_names = sorted(getattr(getattr(torch, "accelerator", None), "__all__", ()),
                               key=lambda n: (n.lower(), n))
    assert [row["name"] for row in accelerator] == [f"torch.accelerator.{n}" for n in accelerator_names]
    generic = coverage.coverage_rows(namespace="torch")
    assert [row["name"] for row in generic] == [f"torch.{n}" for n in coverage.GENERIC_NAMES if hasattr(torch, n)]
    assert coverage.coverage_rows() == rows + accelerator + generic, "all namespaces, torch.cuda first"
    for row in rows + accelerator + generic:
        assert set(row) == {"name", "kind", "note"}
        assert row["kind"] in coverage.CLASSES, f"{row['name']} is {row['kind']}: classify it"
        assert row["note"], row


def test_classes_come_from_the_applied_records(patched):
    rows = {row["name"]: row for row in coverage.coverage_rows()}
    records = {a.record.name: a.record for _, a in REGISTRY.applied_records() if a.record.owner == "torch.cuda"}
    for name, record in records.items():
        if name in rows:
            assert rows[name]["kind"] == record.kind and rows[name]["note"] == record.note
    assert rows["synchronize"]["kind"] == "no-op" and rows["current_blas_handle"]["kind"] == "unsupported"


def doc_torch_version():
    """The torch release docs/cuda-coverage.md was generated from."""
    return re.search(r"Generated from torch (\S+) ", DOC.read_text()).group(1)


def test_unchanged_table_is_small_and_not_patched(patched):
    if torch.__version__.split("+")[0] == doc_torch_version():
        # No stale entries. (The table serves every supported release: older ones lack some
        # names, and some names left __all__ later while staying attributes.)
        # Entries for names of newer releases say which release ("torch >= 2.14") in their reason.
        assert all(hasattr(torch.cuda, name) or "torch >= " in reason for name, reason in coverage.UNCHANGED.items())
    assert len(coverage.UNCHANGED) <= 20
    patched_names = {a.record.name for _, a in REGISTRY.applied_records() if a.record.owner == "torch.cuda"}
    assert not set(coverage.UNCHANGED) & patched_names, "a patched name must not also be listed as unchanged"
    for name, reason in coverage.UNCHANGED.items():
        assert len(reason) > 15, name


def test_a_new_torch_name_is_caught(patched, monkeypatch):
    monkeypatch.setattr(torch.cuda, "__all__", list(torch.cuda.__all__) + ["brand_new_api"])
    rows = {row["name"]: row for row in coverage.coverage_rows()}
    assert rows["brand_new_api"]["kind"] == coverage.UNCLASSIFIED_KIND


@needs("torch.accelerator")
def test_a_new_torch_accelerator_name_is_caught(patched, monkeypatch):
    monkeypatch.setattr(torch.accelerator, "__all__", list(torch.accelerator.__all__) + ["brand_new_api"])
    rows = {row["name"]: row for row in coverage.coverage_rows()}
    assert rows["torch.accelerator.brand_new_api"]["kind"] == coverage.UNCLASSIFIED_KIND


@needs("torch.accelerator")
def test_accelerator_classes_come_from_the_applied_records(patched):
    rows = {row["name"]: row for row in coverage.coverage_rows(namespace="torch.accelerator")}
    records = {a.record.name: a.record for _, a in REGISTRY.applied_records()
               if a.record.owner == "torch.accelerator"}
    assert set(rows) == {f"torch.accelerator.{name}" for name in records}
    for name, record in records.items():
        assert rows[f"torch.accelerator.{name}"] == {"name": f"torch.accelerator.{name}", "kind": record.kind,
                                                     "note": record.note}


def test_rejects_unknown_namespace():
    with pytest.raises(ValueError, match="namespace"):
        coverage.coverage_rows(namespace="torch.xpu")


def test_declared_cpu_records_match_applied(unpatched):
    declared = coverage.coverage_rows("cpu")
    torchdevice.patch(strict=True, device="cpu")
    assert coverage.coverage_rows() == declared


def test_other_target_while_active_uses_a_fresh_interpreter(unpatched):
    declared = coverage.coverage_rows("mps")
    torchdevice.patch(strict=True, device="cpu")
    assert coverage.coverage_rows("mps") == declared
    assert torchdevice.status()["target"] == "cpu", "the live activation is untouched"


def test_rejects_unknown_device():
    with pytest.raises(ValueError, match="'cpu' or 'mps'"):
        coverage.coverage_rows("xpu")


def test_generated_doc_is_current(unpatched):
    text = DOC.read_text()
    version = doc_torch_version()
    if version != torch.__version__.split("+")[0]:
        pytest.skip(f"docs/cuda-coverage.md was generated from torch {version}")
    assert coverage.render_markdown() == text, \
        "docs/cuda-coverage.md is stale: python -m torchdevice.coverage > docs/cuda-coverage.md"


def test_markdown_lists_every_name_once(unpatched):
    text = coverage.render_markdown()
    names = re.findall(r"^\| `([^`]+)` \|", text, flags=re.M)
    assert sorted(names) == sorted([row["name"] for row in coverage.coverage_rows("cpu")])
    assert set(torch.cuda.__all__) <= set(names)
    assert "| `synchronize` | no-op (cpu), redirected (mps) |" in text
