"""bench/run.py runs end to end and writes valid JSON (smoke mode: one short repetition per row).

The benchmark's figures are never checked here: timing targets belong to the
full benchmark (docs/performance.md), which is not part of the test run.
"""
import json
import subprocess
import sys
from pathlib import Path

from conftest import clean_env

ROOT = Path(__file__).resolve().parents[1]
ROW_KEYS = {"id", "group", "what", "unit", "torchdevice", "native", "ratio", "added", "target", "status", "note",
            "samples"}


def test_smoke_run_writes_valid_json(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--json", str(out),
         "--venv-dir", str(tmp_path / "venvs")],
        env=clean_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["meta"]["mode"] == "smoke" and data["meta"]["target"] == "cpu"
    rows = data["rows"]
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids))
    for row in rows:
        assert ROW_KEYS <= set(row), row["id"]
        assert row["status"] in ("pass", "miss", "info", "skip"), (row["id"], row["status"], row["note"])
    measured = {row["id"] for row in rows if row["status"] != "skip"}
    assert {"startup_vs_bare", "pth_line", "factory_cuda", "tensor_to_cuda", "tensor_cuda", "module_cuda",
            "factory_no_device", "op_add", "op_matmul", "cuda_synchronize", "train_amp", "train_tiny",
            "rss_growth", "floor_python", "floor_python_kw"} <= measured
    floor_c = next(row for row in rows if row["id"] == "floor_c")
    assert floor_c["id"] in measured or "compil" in floor_c["note"], floor_c["note"]
    for row in rows:
        if row["id"] in measured and row["unit"] not in ("-", "KiB"):
            assert row["torchdevice"] > 0, row["id"]
    assert "factory_cuda" in result.stdout and "JSON:" in result.stdout


def test_unknown_group_is_an_error(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--groups", "nope",
                             "--json", str(tmp_path / "x.json")], env=clean_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "unknown group(s) nope" in result.stderr
