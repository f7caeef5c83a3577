"""kv-cache-tester ("Weka") importer: prefix rules, sub-agents, placement, older schema, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from ckptsim.cli import app
from ckptsim.ingest.blockhash import BlockIndex, PartialBlockRule, shared_tokens
from ckptsim.ingest.weka import (Pairs, Placement, WekaFormatError, WekaOptions, import_weka)
from ckptsim.trace import iter_trace, load_trace

DATA = Path(__file__).parent / "data" / "real"
STRICT = WekaOptions(partial_block=PartialBlockRule.STRICT)


def _conv(requests: list, **top) -> dict:
    doc = {"id": "conv", "models": ["m"], "block_size": 64, "hash_id_scope": "local",
           "tool_tokens": 100, "system_tokens": 28, "requests": requests}
    doc.update(top)
    return doc


def _req(t: float, n_in: int, hashes: list, types=("tool_result",), out: int = 10, kind: str = "n") -> dict:
    return {"t": t, "type": kind, "in": n_in, "out": out, "hash_ids": list(hashes),
            "input_types": list(types), "output_types": ["text"], "stop": "tool_use"}


def _write(tmp: Path, doc: object, name: str = "conv.json") -> Path:
    p = tmp / name
    p.write_text(json.dumps(doc))
    return p


def _load(src, tmp: Path, opts: WekaOptions = WekaOptions()):
    out = tmp / "out.jsonl"
    stats = import_weka(src if isinstance(src, list) else [src], out, opts, overwrite=True)
    return load_trace(out), stats


# --- the partial-block rule -------------------------------------------------------------------

def test_append_rule_takes_the_unhashed_tail_as_shared(tmp_path):
    # 300 tokens = 4 full blocks + 44 unhashed; the next prompt keeps all 4 blocks and grows.
    doc = _conv([_req(0, 300, [1, 2, 3, 4], types=["text"]), _req(5, 420, [1, 2, 3, 4, 5, 6])])
    tr, stats = _load(_write(tmp_path, doc), tmp_path)
    assert tr[1].parent == 0
    assert tr[1].n_shared == 300           # whole earlier prompt: a 0-token rollback, not 44
    assert stats.n_append_rule == 1 and stats.n_append_tokens == 44
    tr_s, stats_s = _load(_write(tmp_path, doc), tmp_path, STRICT)
    assert tr_s[1].n_shared == 256         # 4 whole blocks only
    assert stats_s.n_append_rule == 0


def test_changed_last_full_block_stays_at_block_granularity(tmp_path):
    # The earlier prompt's 4th block differs: its content changed, the append rule must not apply.
    doc = _conv([_req(0, 300, [1, 2, 3, 4], types=["text"]), _req(5, 420, [1, 2, 3, 9, 5, 6])])
    tr, stats = _load(_write(tmp_path, doc), tmp_path)
    assert tr[1].n_shared == 192
    assert stats.n_tail_changed == 1 and stats.n_append_rule == 0


def test_shared_tokens_covers_both_hashing_conventions():
    # kv-cache-tester: 4 hashes for 300 tokens, all shared -> 300 (append) / 256 (strict)
    assert shared_tokens(4, 64, 420, 300, PartialBlockRule.APPEND) == 300
    assert shared_tokens(4, 64, 420, 300, PartialBlockRule.STRICT) == 256
    # Mooncake: 2 hashes for 700 tokens (1 full + partial); the partial one changed on growth
    assert shared_tokens(1, 512, 2000, 700, PartialBlockRule.APPEND) == 700
    assert shared_tokens(1, 512, 2000, 700, PartialBlockRule.STRICT) == 512
    # never more than the later prompt
    assert shared_tokens(4, 64, 280, 300, PartialBlockRule.APPEND) == 280


def test_append_rule_skips_a_shared_prefix_that_others_went_past():
    # P ends right after the system block; Q went past it. A later prompt sharing only the system
    # block must not inherit P's own tail (it is P's user text, not the new prompt's).
    idx = BlockIndex(64, PartialBlockRule.APPEND)
    idx.add_prompt(0, [1], 100)            # P: 1 full block + 36 tokens of its own
    idx.add_prompt(1, [1, 2, 3], 200)      # Q: went past block 1
    m = idx.best([1, 7, 8], 200)
    assert (m.parent, m.n_blocks, m.n_shared, m.continues) == (1, 1, 64, False)
    idx2 = BlockIndex(64, PartialBlockRule.APPEND)
    idx2.add_prompt(0, [1], 100)
    m2 = idx2.best([1, 7, 8], 200)         # P is the tip of its branch: an append
    assert (m2.parent, m2.n_shared, m2.continues) == (0, 100, True)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.lists(st.integers(0, 5), max_size=8), st.integers(1, 600)), max_size=12),
       st.sampled_from(list(PartialBlockRule)))
def test_insert_is_best_then_add_prompt(prompts, rule):
    # the importers' one-walk insert (a corpus import spends most of its time in this trie) must
    # match and index exactly as the two calls it replaces, on any mix of shared and new blocks
    one, two = BlockIndex(64, rule), BlockIndex(64, rule)
    for rid, (blocks, n_prompt) in enumerate(prompts):
        expected = two.best(blocks, n_prompt)
        two.add_prompt(rid, blocks, n_prompt)
        assert one.insert(rid, blocks, n_prompt) == expected
    assert one._root == two._root


# --- sessions, sub-agents, user turns, placement ----------------------------------------------

def test_subagents_become_concurrent_sessions_on_the_parent_clock(tmp_path):
    tr, stats = _load(DATA / "weka-trace_0010-cut.json", tmp_path)
    sessions = {tr[i].session for i in range(len(tr))}
    assert sessions == {"trace_0010", "trace_0010/sub-1"}
    sub = [tr[i] for i in range(len(tr)) if tr[i].session == "trace_0010/sub-1"]
    # sub-agent at t = 100.65 on the parent's clock, its requests at +0, ... (file values)
    raw = json.loads((DATA / "weka-trace_0010-cut.json").read_text())["requests"][1]
    assert [r.t_s for r in sub] == pytest.approx([100.65 + q["t"] for q in raw["requests"]])
    assert all(tr.t_s[i] <= tr.t_s[i + 1] for i in range(len(tr) - 1))   # merged in time order
    # the parent's request at t = 107 comes after the sub-agent started: interleaved
    assert [tr[i].session for i in range(len(tr))].index("trace_0010/sub-1") == 1
    assert stats.n_subagents == 1 and stats.n_requests == 3 + len(raw["requests"])


def test_two_subagents_share_their_tool_prefix_but_not_each_others_tail(tmp_path):
    tr, _ = _load(DATA / "weka-trace_0004-cut.json", tmp_path)
    first_sub2 = next(r for r in tr if r.session == "trace_0004/sub-2")
    parent = tr[first_sub2.parent]
    assert parent.session == "trace_0004/sub-1"
    assert first_sub2.n_shared % 64 == 0 and first_sub2.n_shared < parent.n_prompt   # strict there


def test_user_turns_from_input_types(tmp_path):
    doc = _conv([_req(0, 300, [1, 2, 3, 4], types=["text"]),
                 _req(5, 420, [1, 2, 3, 4, 5, 6], types=["tool_result"]),
                 _req(9, 600, [1, 2, 3, 4, 5, 6, 7, 8, 9], types=["text"])])
    tr, stats = _load(_write(tmp_path, doc), tmp_path)
    assert tr[0].user_starts == (128,)          # after system (28) + tool (100) tokens
    assert tr[1].tool_starts == (300,) and tr[1].user_starts == (128,)
    assert tr[2].user_starts == (128, 420)      # inherited + new at the end of the shared prefix
    assert stats.n_user_turns == 2


def test_sequential_and_concurrent_placement(tmp_path):
    a = _write(tmp_path, _conv([_req(0, 100, [1]), _req(10, 200, [1, 2])], id="a"), "a.json")
    b = _write(tmp_path, _conv([_req(0, 100, [1]), _req(3, 200, [1, 2])], id="b"), "b.json")
    seq, _ = _load([a, b], tmp_path, WekaOptions(gap_s=5.0))
    # b starts 5 s after a's last request (no api_time in these records)
    assert list(seq.t_s) == [0.0, 10.0, 15.0, 18.0]
    assert seq[2].parent == -1                 # local hash ids never link conversations
    conc, _ = _load([a, b], tmp_path, WekaOptions(placement=Placement.CONCURRENT))
    assert list(conc.t_s) == [0.0, 0.0, 3.0, 10.0]
    assert [conc[i].session for i in range(4)] == ["a", "b", "b", "a"]
    assert conc[3].parent == 0 and conc[2].parent == 1


def test_global_hash_scope_links_conversations_only_when_sequential(tmp_path):
    a = _write(tmp_path, _conv([_req(0, 100, [1])], id="a", hash_id_scope="global"), "a.json")
    b = _write(tmp_path, _conv([_req(0, 200, [1, 2])], id="b", hash_id_scope="global"), "b.json")
    tr, _ = _load([a, b], tmp_path)
    assert tr[1].parent == 0 and tr[1].n_shared == 100
    with pytest.raises(WekaFormatError, match="global"):
        _load([a, b], tmp_path, WekaOptions(placement=Placement.CONCURRENT))


# --- the older (paired) schema ----------------------------------------------------------------

def test_older_paired_schema_merges_duplicates(tmp_path):
    path = DATA / "weka-v1-paired-trace_0629.json"   # 5 records: s, n, s, n, s
    tr, stats = _load(path, tmp_path)
    assert stats.schemas == {"paired": 1} and stats.n_pairs_merged == 2 and len(tr) == 3
    assert tr[0].n_output == 122                    # the non-streaming answer's output
    assert tr[0].user_starts == (8264 + 832,)       # input_types of the streaming record
    kept, stats_k = _load(path, tmp_path, WekaOptions(pairs=Pairs.KEEP))
    assert len(kept) == 5 and kept[1].n_shared == kept[1].n_prompt   # a resend: all cached


# --- bad input: file and record named ---------------------------------------------------------

@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["requests"][1].pop("in"), "record 2 (requests[1]): missing field 'in'"),
    (lambda d: d["requests"][1].update({"in": "420"}), "record 2 (requests[1]): field 'in' must be"),
    (lambda d: d["requests"][0].update({"hash_ids": [1, None]}), "record 1 (requests[0]): field 'hash_ids'"),
    (lambda d: d["requests"][0].update({"t": -1}), "record 1 (requests[0]): field 't'"),
    (lambda d: d["requests"][0].update({"type": "x"}), "unknown request type 'x'"),
    (lambda d: d["requests"][0].update({"hash_ids": list(range(9))}), "more than one per 64-token block"),
    (lambda d: d["requests"].append({"type": "subagent", "t": 1, "requests": [{"t": 0}]}),
     "record 4 (requests[2].requests[0]): missing field 'in'"),
    (lambda d: d.pop("requests"), "no 'requests' list"),
])
def test_bad_records_name_file_and_record(tmp_path, mutate, message):
    doc = _conv([_req(0, 300, [1, 2, 3, 4], types=["text"]), _req(5, 420, [1, 2, 3, 4, 5, 6])])
    mutate(doc)
    path = _write(tmp_path, doc)
    with pytest.raises(WekaFormatError) as e:
        _load(path, tmp_path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)
    assert not (tmp_path / "out.jsonl").exists()      # no half-written trace


def test_truncated_json_names_file_and_line(tmp_path):
    text = (DATA / "weka-trace_0026.json").read_text()
    path = tmp_path / "cut.json"
    path.write_text(text[: len(text) // 2])
    with pytest.raises(WekaFormatError, match=r"cut\.json: line 1 column \d+: not valid JSON"):
        _load(path, tmp_path)


def test_mooncake_file_given_to_weka_is_named(tmp_path):
    with pytest.raises(WekaFormatError, match="import mooncake"):
        _load(DATA / "mooncake-conversation-head300.jsonl", tmp_path)


def test_cli_weka_writes_refuses_overwrite_and_reports_errors(tmp_path):
    runner = CliRunner()
    out = tmp_path / "t.jsonl"
    args = ["import", "weka", str(DATA / "weka-trace_0026.json"), str(DATA / "weka-trace_0022.json"),
            "-o", str(out), "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["n_conversations"] == 2 and summary["n_requests"] == len(load_trace(out))
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "exists" in res.output
    res = runner.invoke(app, args + ["--force", "--partial-block", "sideways"])
    assert res.exit_code == 2 and "--partial-block" in res.output
    bad = _write(tmp_path, [1, 2])
    res = runner.invoke(app, ["import", "weka", str(bad), "-o", str(tmp_path / "u.jsonl")])
    assert res.exit_code == 2 and "conv.json" in res.output and "Traceback" not in res.output


# --- the real sample ---------------------------------------------------------------------------

@pytest.mark.shared
def test_whole_sample_imports_and_parents_are_consistent(shared_dir, tmp_path):
    src = shared_dir / "corpus" / "traces" / "weka-sample"
    out = tmp_path / "w.jsonl"
    stats = import_weka([src], out)
    header, reqs = iter_trace(out)
    n = 0
    sessions = set()
    for r in reqs:
        n += 1
        sessions.add(r.session)
    # 24 files, 2,659 requests including 11 sub-agents' (counted from the files themselves)
    assert (stats.n_files, n, stats.n_subagents) == (24, 2659, 11)
    assert len(sessions) == 35 and "trace_0003/sub-2" in sessions
    assert header.meta["partial_block"] == "append"
    # append-only continuations dominate agent traffic: almost every request extends its parent
    assert stats.n_append_rule > 0.8 * n
    assert 0 < stats.n_append_tokens < 64 * stats.n_append_rule
