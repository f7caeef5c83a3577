"""Synthetic workloads: trace invariants, the pattern each kind models, determinism, the CLI."""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from ckptsim.cli import app
from ckptsim.synth import (HEADER_TOKENS, KINDS, USER_HEADER_TOKENS, _requests_and_turns, generate,
                           get_kind, make_params, write_synth)
from ckptsim.trace import load_trace
from strategies import token_lcp

REPO = Path(__file__).resolve().parents[1]
SHIPPED = {"agent-append": "agent-append.jsonl", "agent-edit": "agent-edit.jsonl",
           "chat-edit": "chat-edit.jsonl", "compaction": "compaction.jsonl",
           "multi-session": "multi-session.jsonl"}

# Small lengths so that sequences can be spelled out token by token in the brute-force checks.
SMALL = dict(system_tokens=(5, 20), user_tokens=(4, 15), tool_tokens=(3, 30), output_tokens=(2, 20),
             max_prompt_tokens=300)
SMALL_EXTRA = {"compaction": dict(compact_at_tokens=150, summary_tokens=(5, 30), instruction_tokens=(2, 5)),
               "agent-edit": dict(edit_delta_tokens=5, edit_result_tokens=(2, 5)),
               "multi-session": dict(edit_delta_tokens=5, edit_result_tokens=(2, 5))}


def _by_session(reqs):
    """Pairs (previous request of the same session, request)."""
    last = {}
    for r in reqs:
        if r.session in last:
            yield last[r.session], r
        last[r.session] = r


def _tokens(segs):
    return [(sid, i) for sid, n, *_ in segs for i in range(n)]


# --- the trace invariants, checked against explicit token sequences ----------------------------

@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(sorted(KINDS)), seed=st.integers(0, 2**32 - 1), n=st.integers(1, 80),
       think_frac=st.sampled_from([0.0, 0.3, 0.7]), keep_think=st.sampled_from(["never", "loop", "always"]),
       think_open=st.integers(0, 2), shared_system=st.booleans())
def test_parent_is_the_longest_common_prefix(kind, seed, n, think_frac, keep_think, think_open,
                                             shared_system):
    p = make_params(kind, **SMALL, **SMALL_EXTRA.get(kind, {}), think_frac=think_frac,
                    keep_think=keep_think, think_open_tokens=think_open, shared_system=shared_system)
    seqs = []
    for r, turn in _requests_and_turns(get_kind(kind), p, n, seed):
        prompt = _tokens(turn.prompt)
        assert len(prompt) == r.n_prompt
        lcps = [token_lcp(prompt, s) for s in seqs]
        best = max(lcps, default=0)
        assert r.n_shared == best
        if best == 0:
            assert r.parent == -1
        else:  # the latest of the best matches
            assert r.parent == max(i for i, x in enumerate(lcps) if x == best)
        seqs.append(prompt + [(turn.out_id, i) for i in range(turn.n_output)])


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(sorted(KINDS)), seed=st.integers(0, 2**32 - 1), n=st.integers(1, 150),
       think_frac=st.sampled_from([0.0, 0.5]))
def test_every_generated_trace_loads(kind, seed, n, think_frac):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.jsonl"
        write_synth(str(path), kind, n, seed, think_frac=think_frac)
        tr = load_trace(path)
    reqs = list(generate(kind, n, seed, think_frac=think_frac))
    assert list(tr) == reqs
    assert len(tr) == n
    for r in tr:
        if r.parent >= 0:
            assert 0 < r.n_shared <= tr[r.parent].n_seq
        assert r.n_prompt <= KINDS[kind].params().max_prompt_tokens
    assert all(a <= b for a, b in zip(tr.t_s, tr.t_s[1:]))


# --- each kind's pattern, derived by hand from its parameters ---------------------------------

FIXED = dict(system_tokens=(3000, 3000), user_tokens=(200, 200), tool_tokens=(500, 500),
             output_tokens=(100, 100))


def test_append_only_extends_the_previous_sequence():
    reqs = list(generate("agent-append", 120, seed=5, **FIXED))
    first = reqs[0]
    assert first.parent == -1 and first.n_prompt == 3000 + 200 + HEADER_TOKENS
    assert first.user_starts == (3000,)
    assert reqs[1].n_prompt == first.n_seq + 500 + HEADER_TOKENS
    assert reqs[1].tool_starts == (first.n_seq,)
    new_sessions = 0
    for r in reqs[1:]:
        prev = reqs[r.id - 1]
        assert r.parent == prev.id        # one session at a time: the previous request is the best
        if r.session == prev.session:
            assert r.n_shared == prev.n_seq
        else:                             # a new session shares the agent's system prompt only
            new_sessions += 1
            assert r.n_shared == 3000 and r.n_prompt == 3203
    assert new_sessions >= 1


@pytest.mark.parametrize("think_open", [0, 1, 2])
def test_dropped_reasoning_ends_the_prefix_inside_the_previous_output(think_open):
    reqs = list(generate("agent-append", 60, seed=2, **FIXED, think_frac=0.5, keep_think="never",
                         think_open_tokens=think_open))
    pairs = list(_by_session(reqs))
    assert pairs
    for prev, r in pairs:
        assert r.n_shared == prev.n_prompt + think_open
        # the output is re-rendered as its 50 answer tokens (after the think_open shared ones),
        # then a tool result or a user message, then the generation header
        assert r.n_prompt - r.n_shared in (50 + 500 + HEADER_TOKENS, 50 + 200 + HEADER_TOKENS)


def test_reasoning_kept_in_the_loop_is_dropped_at_the_next_user_message():
    reqs = list(generate("agent-append", 200, seed=3, **FIXED, think_frac=0.5, keep_think="loop"))
    task_start = {}   # session -> first request of the current task
    n_user_turns = 0
    for prev, r in _by_session(reqs):
        task_start.setdefault(prev.session, prev)
        if len(r.user_starts) > len(prev.user_starts):   # a new user task
            n_user_turns += 1
            # Qwen3 keeps <think> only after the last user message: the prefix breaks inside the
            # first assistant output of the previous task.
            assert r.n_shared == task_start[r.session].n_prompt + 1
            task_start[r.session] = r
        else:
            assert r.n_shared == prev.n_seq
    assert n_user_turns >= 3


def test_edit_kind_truncates_inside_a_file_already_in_context():
    # edit_delta_tokens=0: edited files keep their 500 tokens, so a cut is < 500 past a tool start
    reqs = list(generate("agent-edit", 150, seed=7, **FIXED, think_frac=0.0, p_edit=1.0, p_file=1.0,
                         edit_delta_tokens=0, tasks_per_session=1.0, steps_per_task=1000.0))
    n_edits = 0
    seen: dict[str, int] = {}
    for prev, r in _by_session(reqs):
        seen[r.session] = seen.get(r.session, 0) + 1
        if seen[r.session] == 1:      # the first step reads a file: nothing to edit yet
            assert r.n_shared == prev.n_seq
            continue
        n_edits += 1
        assert r.n_shared < prev.n_prompt
        # the cut lies strictly inside one file (the first piece after its tool start)
        start = max(t for t in prev.tool_starts if t < r.n_shared)
        assert 1 <= r.n_shared - start < 500
        assert r.n_shared > 3000 + 200
    assert n_edits > 50


def test_chat_edit_keeps_at_least_the_user_header():
    reqs = list(generate("chat-edit", 100, seed=4, **{**FIXED, "user_tokens": (50, 400)}, p_edit=1.0))
    for prev, r in _by_session(reqs):
        u = prev.user_starts[-1]
        assert r.user_starts == prev.user_starts      # the same message, rewritten
        assert u + USER_HEADER_TOKENS <= r.n_shared < prev.n_prompt
        assert r.n_shared <= u + 400


def test_chat_without_edits_shares_the_previous_prompt_and_the_think_tag():
    reqs = list(generate("chat-edit", 100, seed=4, **FIXED, p_edit=0.0, think_frac=0.5))
    pairs = list(_by_session(reqs))
    assert len(pairs) > 50
    for prev, r in pairs:
        assert r.n_shared == prev.n_prompt + 1
        assert r.user_starts[:-1] == prev.user_starts and r.user_starts[-1] == prev.n_prompt + 1 + 50


def test_compaction_drops_the_prefix_to_the_system_prompt():
    reqs = list(generate("compaction", 300, seed=1, **FIXED, compact_at_tokens=20000,
                         summary_tokens=(1500, 1500)))
    compactions = 0
    for prev, r in _by_session(reqs):
        if r.n_shared == 3000:
            compactions += 1
            assert prev.n_output == 1500                  # the summary request
            assert r.parent == prev.id                    # latest of the ties on the system prompt
            assert r.user_starts == (3000,)
            assert r.n_prompt == 3000 + 1500 + USER_HEADER_TOKENS + HEADER_TOKENS
        assert r.n_prompt < 20000 + 500 + 100 + 200 + HEADER_TOKENS + 300
    assert compactions >= 3


def test_multi_session_interleaves_and_shares_system_prompts():
    reqs = list(generate("multi-session", 300, seed=8, n_sessions=4, system_tokens=(3000, 3000)))
    sessions = [r.session for r in reqs]
    switches = sum(a != b for a, b in zip(sessions, sessions[1:]))
    assert switches > 50
    by_id = {r.id: r for r in reqs}
    firsts = [r for r in reqs if r.session not in {x.session for x in reqs[:r.id]}]
    assert len(firsts) >= 4
    for r in firsts[1:]:
        if r.parent >= 0:   # the system prompt of the same agent, sent by another session
            assert by_id[r.parent].session != r.session and r.n_shared >= 3000
    # the first request of a later append session may find an earlier append session's prompt
    assert any(r.parent >= 0 for r in firsts[1:])
    own = sum(r.parent >= 0 and by_id[r.parent].session == r.session and r.parent != r.id - 1
              for r in reqs)
    assert own > 20   # parents older than the previous request: other sessions came in between


def test_unshared_system_prompts_give_first_requests_no_parent():
    reqs = list(generate("multi-session", 200, seed=8, shared_system=False))
    for r in reqs:
        if r.session not in {x.session for x in reqs[:r.id]}:
            assert r.parent == -1 and r.n_shared == 0


# --- determinism and errors -------------------------------------------------------------------

def test_same_seed_same_bytes(tmp_path):
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    write_synth(str(a), "multi-session", 300, seed=11)
    write_synth(str(b), "multi-session", 300, seed=11)
    write_synth(str(c), "multi-session", 300, seed=12)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_shorter_run_is_a_prefix(kind):
    assert list(generate(kind, 40, seed=9)) == list(generate(kind, 120, seed=9))[:40]


def test_bad_kind_and_parameters_are_clear_errors():
    with pytest.raises(ValueError, match="unknown synthetic kind 'nope'.*agent-append"):
        generate("nope", 10, 0)
    with pytest.raises(ValueError, match="unknown parameter.*bogus"):
        generate("agent-edit", 10, 0, bogus=1)
    with pytest.raises(ValueError, match="think_frac"):
        generate("agent-edit", 10, 0, think_frac=1.5)
    with pytest.raises(ValueError, match="keep_think"):
        generate("chat-edit", 10, 0, keep_think="sometimes")
    with pytest.raises(ValueError, match="tool_tokens"):
        generate("agent-append", 10, 0, tool_tokens=(500, 100))
    with pytest.raises(ValueError, match="p_edit"):
        generate("agent-edit", 10, 0, p_edit=2)
    assert make_params("agent-edit", tool_tokens="200,3000", shared_system="false").tool_tokens == (200, 3000)


def test_kinds_are_documented():
    for k in KINDS.values():
        assert len(k.doc) > 200 and k.summary
        assert k.params.__doc__


@pytest.mark.slow
def test_ten_thousand_requests_in_a_few_seconds():
    t0 = time.perf_counter()
    n = sum(1 for _ in generate("multi-session", 10_000, seed=0))
    assert n == 10_000
    assert time.perf_counter() - t0 < 15.0


# --- shipped traces ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(SHIPPED))
def test_shipped_trace_is_small_valid_and_reproducible(kind, tmp_path):
    path = REPO / "traces" / SHIPPED[kind]
    assert path.stat().st_size < 200_000
    tr = load_trace(path)
    meta = tr.header.meta
    assert meta["kind"] == kind and 200 <= len(tr) <= 600
    again = tmp_path / "again.jsonl"
    write_synth(str(again), kind, meta["n_requests"], meta["seed"], **meta["params"])
    assert again.read_bytes() == path.read_bytes(), \
        f"traces/{SHIPPED[kind]} is stale: regenerate it (traces/README.md, 'Regenerating')"


def test_readme_example_is_a_valid_trace(tmp_path):
    text = (REPO / "traces" / "README.md").read_text()
    example = text.split("### A small example")[1].split("```json\n")[1].split("```")[0]
    (tmp_path / "ex.jsonl").write_text(example)
    tr = load_trace(tmp_path / "ex.jsonl")
    assert tr[2].user_starts == (4000, 4850) and tr[2].tool_starts == (4250,)
    assert tr.seq_lcp(3, 0) == 4000 and tr.seq_lcp(2, 0) == 4101 and tr.seq_lcp(1, 0) == 4400


# --- CLI --------------------------------------------------------------------------------------

def test_cli_writes_refuses_overwrite_and_prints_one_json(tmp_path):
    runner = CliRunner()
    out = tmp_path / "x.jsonl"
    res = runner.invoke(app, ["synth", "chat-edit", "-o", str(out), "--seed", "3", "--requests", "50",
                              "--json", "-p", "p_edit=0.5"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["n_requests"] == 50 and doc["params"]["p_edit"] == 0.5
    assert len(load_trace(out)) == 50
    res = runner.invoke(app, ["synth", "chat-edit", "-o", str(out), "--seed", "3"])
    assert res.exit_code == 2 and "--force" in res.output
    res = runner.invoke(app, ["synth", "chat-edit", "-o", str(out), "--seed", "4", "--requests", "20",
                              "--force"])
    assert res.exit_code == 0 and len(load_trace(out)) == 20


def test_cli_errors_and_list(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["synth", "nope", "-o", str(tmp_path / "y.jsonl")])
    assert res.exit_code == 2 and "unknown synthetic kind" in res.output
    assert not (tmp_path / "y.jsonl").exists()
    res = runner.invoke(app, ["synth", "agent-edit", "-o", str(tmp_path / "y.jsonl"), "-p", "bogus"])
    assert res.exit_code == 2 and "KEY=VALUE" in res.output
    res = runner.invoke(app, ["synth", "--list", "--json"])
    assert res.exit_code == 0
    assert [k["kind"] for k in json.loads(res.stdout)["kinds"]] == list(KINDS)
    res = runner.invoke(app, ["synth", "--list"])
    assert res.exit_code == 0 and all(k in res.stdout for k in KINDS)
