"""Shared fixtures: the corpus beside the repository, skipped when a user's clone lacks it."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture
def shared_dir() -> Path:
    """../shared (logs and traces corpus); the test is skipped when it is absent."""
    if not (SHARED / "corpus").is_dir():
        pytest.skip("../shared/corpus is not present (it exists only beside the project's own checkout)")
    return SHARED
