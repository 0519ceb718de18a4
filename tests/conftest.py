"""Shared test helpers: where the reference fixtures live."""

from __future__ import annotations

from pathlib import Path

import pytest

from maskrcnn.engine.reference import reference_dir


@pytest.fixture(scope="session")
def reference() -> Path:
    """``../shared/reference``; tests that need it are skipped, saying why, when it is absent."""
    path = reference_dir()
    if not (path / "compare.py").is_file():
        pytest.skip(f"reference fixtures not found at {path} (set MASKRCNN_SHARED)")
    return path
