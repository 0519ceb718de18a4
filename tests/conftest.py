"""Shared test helpers: where the reference fixtures live."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.peers import reference_dir


@pytest.fixture(scope="session")
def reference() -> Path:
    """``../shared/reference``; tests that need it are skipped, saying why, when it is absent."""
    path = reference_dir()
    if not (path / "compare.py").is_file():
        pytest.skip(f"reference fixtures not found at {path} (set MASKRCNN_SHARED)")
    return path


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for a test, restored after it: small convolutions gain nothing
    from more, and lose much when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
