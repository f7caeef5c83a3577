"""On the shipped synthetic workloads the policies rank as the PRs that motivated them argue."""
from __future__ import annotations

from pathlib import Path

import pytest

from ckptsim.sim import ServerConfig, simulate
from ckptsim.trace import load_trace

TRACES = Path(__file__).resolve().parents[1] / "traces"


def _reproc(trace, spec, **cfg):
    return simulate(trace, spec, ServerConfig(**cfg), None, record_events=False).summary()["reprocessed_tokens"]


def test_edit_workload_ranking():
    """#19970: on an agent that edits its context, one end-of-prompt checkpoint (fifo) loses far
    more than a checkpoint per batch, and no checkpoints at all is the worst."""
    t = load_trace(TRACES / "agent-edit.jsonl")
    r = {p: _reproc(t, p) for p in ("none", "fifo", "per-batch", "llama-server")}
    assert r["none"] > r["fifo"] > r["per-batch"]
    assert r["fifo"] > 1.3 * r["per-batch"]
    assert r["none"] == max(r.values())


def test_chat_edit_user_turn_checkpoints_pay():
    """#22929: a checkpoint before the user message lets an edited last turn resume there."""
    t = load_trace(TRACES / "chat-edit.jsonl")
    assert _reproc(t, "none") > 5 * _reproc(t, "user-turn")


def test_append_only_needs_no_checkpoints():
    """A pure extension resumes in place (spec §2.2): checkpoints matter only where a new session
    rolls back to the shared system prompt, so 'none' stays within 15% of the server."""
    t = load_trace(TRACES / "agent-append.jsonl")
    none, server = _reproc(t, "none"), _reproc(t, "llama-server")
    assert server <= none <= 1.15 * server


@pytest.mark.parametrize("name", ["agent-edit", "chat-edit", "compaction", "multi-session"])
def test_more_checkpoints_never_hurt_per_batch(name):
    """Raising --ctx-checkpoints from 4 to 64 does not increase re-processing for per-batch."""
    t = load_trace(TRACES / f"{name}.jsonl")
    slots = 4 if name == "multi-session" else 1
    assert _reproc(t, "per-batch", ctx_checkpoints=64, n_slots=slots) <= \
        _reproc(t, "per-batch", ctx_checkpoints=4, n_slots=slots)
