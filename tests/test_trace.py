"""Trace format: round trip, validation errors with line numbers, exact prefix queries."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptsim.records import Request
from ckptsim.trace import Ragged, Trace, TraceError, TraceHeader, load_trace, save_trace
from strategies import materialise, token_lcp, traces


@settings(max_examples=60, deadline=None)
@given(traces())
def test_seq_lcp_matches_explicit_tokens(trace):
    seqs = materialise(trace)
    for a in range(len(trace)):
        for b in range(len(trace)):
            assert trace.seq_lcp(a, b) == token_lcp(seqs[a], seqs[b])


@given(st.lists(st.lists(st.integers(0, 2**40), max_size=6).map(tuple), max_size=12))
def test_ragged_reads_back_each_tuple_as_a_list_would(runs):
    # the trace keeps message starts flat (bench/scale.py: a million requests in < 1 GB); every
    # way the code reads them must see the tuples it was given
    r = Ragged()
    for xs in runs:
        r.append(xs)
    assert len(r) == len(runs) and list(r) == runs
    assert [r[i] for i in range(-len(runs), len(runs))] == runs + runs
    assert r[1:-1:2] == runs[1:-1:2]
    with pytest.raises(IndexError):
        r[len(runs)]


@settings(max_examples=40, deadline=None)
@given(traces())
def test_round_trip(tmp_path_factory, trace):
    p = tmp_path_factory.mktemp("t") / "x.jsonl"
    save_trace(p, trace.header, trace)
    back = load_trace(p)
    assert [r for r in back] == [r for r in trace]


def test_compact_for_long_repeated_prompts(tmp_path):
    """A 120k-token prompt sent 200 times must stay small on disk (no per-token entries)."""
    reqs = [Request(0, "s", 0.0, 120_000, 10)]
    reqs += [Request(i, "s", float(i), 120_000, 10, parent=i - 1, n_shared=120_000) for i in range(1, 200)]
    p = tmp_path / "big.jsonl"
    save_trace(p, TraceHeader(name="big"), reqs)
    assert p.stat().st_size < 200 * 150
    assert load_trace(p).total_prompt_tokens() == 200 * 120_000


def test_user_positions_are_inherited(tmp_path):
    reqs = [Request(0, "s", 0.0, 1000, 10, user_starts=(0, 500)),
            Request(1, "s", 1.0, 1500, 10, parent=0, n_shared=1010, user_starts=(0, 500, 1200))]
    p = tmp_path / "u.jsonl"
    save_trace(p, TraceHeader(), reqs)
    line = json.loads(p.read_text().splitlines()[2])
    assert line["user"] == [1200]                 # only positions past the shared prefix are stored
    assert load_trace(p)[1].user_starts == (0, 500, 1200)


HEADER = json.dumps({"schema": "ckptsim-trace", "version": 1})


@pytest.mark.parametrize("body,line,msg", [
    ('{"id":0,"session":"s","t":0,"n_prompt":10}', 2, "missing field(s) n_output"),
    ('{"id":0,"session":"s","t":0,"n_prompt":10,"n_output":1}\n{"id":1', 3, "not valid JSON"),
    ('{"id":0,"session":"s","t":0,"n_prompt":10,"n_output":1}\n'
     '{"id":1,"session":"s","t":1,"n_prompt":30,"n_output":1,"parent":0,"n_shared":20}', 3, "exceeds the parent"),
    ('{"id":5,"session":"s","t":0,"n_prompt":10,"n_output":1}', 2, "expected id 0"),
    ('{"id":0,"session":"s","t":-1,"n_prompt":10,"n_output":1}', 2, "non-negative"),
    ('{"id":0,"session":"s","t":0,"n_prompt":10,"n_output":1,"colour":"red"}', 2, "unknown field"),
    ('{"id":0,"session":"s","t":0,"n_prompt":"10","n_output":1}', 2, "must be an integer"),
])
def test_bad_files_name_the_line(tmp_path, body, line, msg):
    p = tmp_path / "bad.jsonl"
    p.write_text(HEADER + "\n" + body + "\n")
    with pytest.raises(TraceError) as e:
        load_trace(p)
    assert f"bad.jsonl:{line}:" in str(e.value) and msg in str(e.value)


@pytest.mark.parametrize("content,msg", [(b"", "empty file"), (b"\x00\xff\xfe garbage", "not"),
                                         (b"hello world\n", "not JSON"),
                                         (b'{"schema":"ckptsim-trace","version":9}\n', "unsupported")])
def test_bad_headers(tmp_path, content, msg):
    p = tmp_path / "h.jsonl"
    p.write_bytes(content)
    with pytest.raises(TraceError, match=msg):
        load_trace(p)


def test_writer_refuses_overwrite(tmp_path):
    p = tmp_path / "x.jsonl"
    save_trace(p, TraceHeader(), [Request(0, "s", 0.0, 5, 1)])
    with pytest.raises(FileExistsError):
        save_trace(p, TraceHeader(), [Request(0, "s", 0.0, 5, 1)])
    save_trace(p, TraceHeader(), [Request(0, "s", 0.0, 7, 1)], overwrite=True)
    assert load_trace(p)[0].n_prompt == 7


def test_trace_rejects_bad_parent():
    with pytest.raises(TraceError):
        Trace(TraceHeader(), [Request(0, "s", 0.0, 5, 1, parent=0, n_shared=1)])


def test_positions_that_differ_from_the_parent_are_kept(tmp_path):
    """A re-rendered chat can put a user start on a shared token where the parent had another role."""
    reqs = [Request(0, "s", 0.0, 1000, 10, user_starts=(0, 500)),
            Request(1, "s", 1.0, 1500, 10, parent=0, n_shared=900, user_starts=(0, 800))]
    p = tmp_path / "u.jsonl"
    save_trace(p, TraceHeader(), reqs)
    assert json.loads(p.read_text().splitlines()[2])["user_all"] == [0, 800]
    assert load_trace(p)[1].user_starts == (0, 800)


def test_deep_chains_use_the_trie_order():
    """Sessions chained through a shared system prompt make parent chains thousands deep; the
    O(1) path (trie order, range minima) must give the same LCP as explicit tokens."""
    import random
    rnd = random.Random(7)
    reqs: list[Request] = []
    for i in range(600):
        n_prompt = rnd.randint(1, 40)
        parent = i - 1 if i and rnd.random() < 0.9 else (rnd.randrange(i) if i else -1)
        n_shared = 0
        if parent >= 0:
            n_shared = rnd.randint(0, min(n_prompt, reqs[parent].n_seq))
        reqs.append(Request(i, "s", float(i), n_prompt, rnd.randint(0, 5), parent, n_shared))
    t = Trace(TraceHeader(), reqs)
    seqs = materialise(t)
    for _ in range(3000):
        a, b = rnd.randrange(600), rnd.randrange(600)
        assert t.seq_lcp(a, b) == token_lcp(seqs[a], seqs[b])
    assert t._trie is not None          # the table path was exercised
