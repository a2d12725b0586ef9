"""Test modules import as ``tests.<area>.<module>``, so no test package can stand in for a production one.

Without ``tests/__init__.py`` pytest imports ``tests/flows/test_x.py`` as ``flows.test_x`` with ``tests/`` first
on ``sys.path``: the test folder then is the ``flows`` package, and its production submodules come from whatever
other copy of the project the interpreter finds (an editable install of another checkout).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from tests.test_import_cycles import PACKAGES, ROOT


def test_every_test_folder_is_a_package_under_tests():
    folders = {p.parent for p in (ROOT / "tests").rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").exists())
    assert not missing, f"test folders without __init__.py (they would import as top-level packages): {missing}"


def test_production_packages_come_from_this_checkout():
    for name in PACKAGES:
        module = importlib.import_module(name)
        assert Path(module.__file__).resolve().parent == ROOT / name, f"{name} imports from {module.__file__}"
    assert __name__ == "tests.test_layout"
