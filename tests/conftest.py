"""Shared fixtures: the repository root and a writer for throwaway matrix files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def repo() -> Path:
    """The repository root (matrices/, tests/data/ ...)."""
    return ROOT


@pytest.fixture
def write_matrix(tmp_path: Path) -> Callable[..., Path]:
    """``write_matrix(text, name="m.yaml")`` writes a matrix into tmp_path and returns its path."""

    def write(text: str, name: str = "m.yaml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    return write


def pytest_configure(config):
    """Traces cached by the predictor go to a throwaway folder, not the user's home."""
    import os
    import tempfile

    os.environ.setdefault("BENCH_CACHE_DIR", tempfile.mkdtemp(prefix="bench-trace-cache-"))
