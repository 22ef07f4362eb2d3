"""Every module of the package imports (no module is broken by a missing name or a cycle)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import rlxf

MODULES = sorted(m.name for m in pkgutil.walk_packages(rlxf.__path__, prefix="rlxf."))


def test_the_package_has_its_stages():
    for stage in ("rlxf.models", "rlxf.data", "rlxf.rollout", "rlxf.train", "rlxf.cli"):
        assert stage in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)
