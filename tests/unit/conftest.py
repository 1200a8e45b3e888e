"""Fixtures shared by the unit tests: the compiled module, for C-versus-Python comparisons."""

from __future__ import annotations

import types

import pytest

from l4lb.dataplane import reference_requested


@pytest.fixture(scope="module")
def cdp() -> types.ModuleType:
    """The compiled module; a missing build fails the test unless L4LB_NO_EXTENSIONS=1."""
    try:
        from l4lb import _dataplane
    except ImportError as exc:
        if reference_requested():
            pytest.skip("L4LB_NO_EXTENSIONS=1: the compiled l4lb._dataplane is not built")
        pytest.fail(f"l4lb._dataplane does not import ({exc}); run setup.py build_ext --inplace")
    module: types.ModuleType = _dataplane
    return module
