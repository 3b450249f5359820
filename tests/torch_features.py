"""Skip marks for tests of APIs that only some supported torch releases have.

The matrix (tox.ini, docs/compatibility.md) runs the suite on every release from
2.2 on; a test that exercises an API an older release lacks is skipped there,
and the reason names the missing API.
"""
import importlib

import pytest
import torch


def _resolve(path):
    parts = path.split(".")
    obj = importlib.import_module(parts[0])
    for part in parts[1:]:
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def has(path):
    """Whether this torch has the dotted name ``path`` (an attribute or an importable module)."""
    if _resolve(path) is not None:
        return True
    try:
        importlib.import_module(path)
        return True
    except ImportError:
        return False


def needs(*paths):
    """A skipif mark for a test that uses every dotted name in ``paths``."""
    missing = [path for path in paths if not has(path)]
    return pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)} not in torch {torch.__version__}")
