"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e import E2E


@pytest.fixture
def e2e(tmp_path: Path):
    """The real `lbsim dataplane` + `lbd` harness (tests/e2e.py), cleaned up after."""
    h = E2E(tmp_path)
    yield h
    h.close()
