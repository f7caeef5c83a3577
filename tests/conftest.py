"""Shared fixtures: the corpus beside the repository, skipped when a user's clone lacks it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# CI runs a fixed set of examples (CKPTSIM_HYPOTHESIS_PROFILE=ci in .ci/run) so main does not
# turn red on a draw; a plain `pytest` explores new examples each run, and prints the blob to
# replay any failure it finds.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", print_blob=True)
settings.load_profile(os.environ.get("CKPTSIM_HYPOTHESIS_PROFILE", "explore"))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture
def shared_dir() -> Path:
    """../shared (logs and traces corpus); the test is skipped when it is absent."""
    if not (SHARED / "corpus").is_dir():
        pytest.skip("../shared/corpus is not present (it exists only beside the project's own checkout)")
    return SHARED


@pytest.fixture
def count_replays():
    """A context manager factory: ``with count_replays() as calls`` records the policy spec of
    every replay the simulator makes inside the block (how many times a trace is replayed)."""
    import contextlib

    import ckptsim.sim as sim_mod

    @contextlib.contextmanager
    def counting():
        calls: list[str] = []
        real = sim_mod._Replay

        class Counting(real):
            def __init__(self, trace, pol, *args, **kwargs):
                calls.append(pol.spec)
                super().__init__(trace, pol, *args, **kwargs)

        sim_mod._Replay = Counting
        try:
            yield calls
        finally:
            sim_mod._Replay = real
    return counting
