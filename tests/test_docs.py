"""Documentation that is derived from code is current, and the docs cover what the code does."""
import ast
import re
from pathlib import Path

from torchdevice import _docgen
from torchdevice.__main__ import build_parser
from torchdevice.core import config

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "torchdevice"


def test_generated_blocks_are_current():
    assert _docgen.stale(str(ROOT)) == [], "run: python -m torchdevice._docgen"


def test_readme_env_table_is_exactly_config_variables():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- BEGIN GENERATED: env-table -->", 1)[1].split("<!-- END GENERATED: env-table -->")[0]
    rows = [line for line in block.strip().splitlines()[2:]]
    parsed = [tuple(cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:-1]) for row in rows]
    expected = [(f"`{name}`", accepted, default, meaning) for name, (accepted, default, meaning)
                in config.VARIABLES.items()]
    assert parsed == expected


def test_regenerating_changes_nothing(tmp_path):
    for path in ("README.md", "docs/cli.md"):
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text((ROOT / path).read_text())
    _docgen.write(str(tmp_path))
    for path in ("README.md", "docs/cli.md"):
        assert (tmp_path / path).read_text() == (ROOT / path).read_text()


def test_stale_block_is_detected(tmp_path):
    for path in ("README.md", "docs/cli.md"):
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text((ROOT / path).read_text())
    readme = tmp_path / "README.md"
    readme.write_text(readme.read_text().replace("| `TORCHDEVICE_STRICT` |", "| `TORCHDEVICE_STRICTER` |", 1))
    assert _docgen.stale(str(tmp_path)) == ["README.md (env-table)"]
    assert _docgen.main(["--check", "--root", str(tmp_path)]) == 1
    _docgen.write(str(tmp_path))
    assert _docgen.stale(str(tmp_path)) == []


def test_every_subcommand_is_documented():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    cli = (ROOT / "docs" / "cli.md").read_text()
    readme = (ROOT / "README.md").read_text()
    for name in commands:
        assert f"## `torchdevice {name}`" in cli
        assert f"`torchdevice {name}" in readme


def test_report_schema_keys_are_documented():
    doc = (ROOT / "docs" / "report.md").read_text()
    keys = {"schema", "torchdevice", "torch", "target", "reason", "processes", "calls", "unsupported", "dropped",
            "file", "line", "function", "api", "kind", "asked", "used", "count", "via", "note", "error",
            "lost", "program", "argv", "argv_omitted"}
    table = set(re.findall(r"^\| `([a-z_]+)`", doc, re.M))
    table |= {k for cell in re.findall(r"^\| `([a-z_]+)`, `([a-z_]+)`", doc, re.M) for k in cell}
    assert keys <= table, keys - table


def test_every_module_has_a_docstring():
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        if path.name == "__init__.py" and not tree.body:
            continue  # an empty package marker
        if not ast.get_docstring(tree):
            missing.append(str(path.relative_to(ROOT)))
    assert missing == []


def test_docs_name_only_existing_variables():
    known = set(config.VARIABLES)
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        named = set(re.findall(r"\b(TORCHDEVICE_[A-Z0-9_]*[A-Z0-9])\b", path.read_text()))
        assert named <= known, (path.name, named - known)
