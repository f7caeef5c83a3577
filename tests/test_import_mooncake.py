"""Mooncake importer: parents, derived sessions, partial-block rule, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ckptsim.cli import app
from ckptsim.ingest.blockhash import PartialBlockRule
from ckptsim.ingest.mooncake import MooncakeFormatError, MooncakeOptions, import_mooncake
from ckptsim.trace import load_trace

DATA = Path(__file__).parent / "data" / "real"


def _lines(tmp: Path, recs: list, name: str = "mc.jsonl") -> Path:
    p = tmp / name
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in recs))
    return p


def _rec(ts: int, n_in: int, hashes: list, out: int = 50) -> dict:
    return {"timestamp": ts, "input_length": n_in, "output_length": out, "hash_ids": hashes}


def _load(path: Path, tmp: Path, opts: MooncakeOptions = MooncakeOptions()):
    out = tmp / "out.jsonl"
    stats = import_mooncake(path, out, opts, overwrite=True)
    return load_trace(out), stats


def test_continuation_joins_the_session_and_keeps_the_partial_tail(tmp_path):
    # a chat: each turn keeps the previous prompt's full blocks; its partial block gets a new id
    path = _lines(tmp_path, [_rec(0, 700, [0, 1]), _rec(30000, 1300, [0, 2, 3]),
                             _rec(61000, 1900, [0, 2, 4, 5])])
    tr, stats = _load(path, tmp_path)
    assert list(tr.t_s) == [0.0, 30.0, 61.0]                  # ms -> s
    assert (tr[1].parent, tr[1].n_shared) == (0, 700)         # whole earlier prompt (append)
    assert (tr[2].parent, tr[2].n_shared) == (1, 1300)
    assert tr[0].session == tr[1].session == tr[2].session
    assert tr[2].user_starts == (700, 1300)                   # one user turn per new input
    assert stats.n_append_rule == 2 and stats.n_append_tokens == (700 - 512) + (1300 - 1024)
    tr_s, _ = _load(path, tmp_path, MooncakeOptions(partial_block=PartialBlockRule.STRICT))
    assert (tr_s[1].n_shared, tr_s[2].n_shared) == (512, 1024)
    assert tr_s[2].session == tr_s[0].session                 # sessions do not depend on the rule


def test_a_shared_system_block_is_not_a_conversation(tmp_path):
    # 0 and 1 both go past block 0; 2 shares only block 0 with them: a new session, 512 tokens
    path = _lines(tmp_path, [_rec(0, 1300, [0, 1, 2]), _rec(0, 1400, [0, 3, 4]), _rec(0, 900, [0, 5])])
    tr, _ = _load(path, tmp_path)
    assert tr[2].parent == 1 and tr[2].n_shared == 512
    assert len({tr[i].session for i in range(3)}) == 3


def test_identical_partial_block_is_shared_exactly(tmp_path):
    path = _lines(tmp_path, [_rec(0, 700, [0, 1]), _rec(5, 700, [0, 1])])
    tr, _ = _load(path, tmp_path, MooncakeOptions(partial_block=PartialBlockRule.STRICT))
    assert tr[1].n_shared == 700 and tr[1].session == tr[0].session


def test_limit_and_sample_file(tmp_path):
    tr, stats = _load(DATA / "mooncake-conversation-head300.jsonl", tmp_path, MooncakeOptions(limit=120))
    assert len(tr) == 120 and stats.n_requests == 120
    # the first request of the file: 6758 input tokens, 500 output (first line of the sample)
    assert (tr[0].n_prompt, tr[0].n_output, tr[0].parent) == (6758, 500, -1)


@pytest.mark.parametrize("line, message", [
    ('{"timestamp": 5, "input_length": 10', "mc.jsonl:2: not valid JSON"),
    ('{"timestamp": 5, "input_length": 10, "output_length": 1}', "mc.jsonl:2: missing field(s) hash_ids"),
    ('{"timestamp": 5, "input_length": "10", "output_length": 1, "hash_ids": [0]}',
     "mc.jsonl:2: field 'input_length' must be a positive integer"),
    ('{"timestamp": 5, "input_length": 10, "output_length": 1, "hash_ids": [0, 1]}',
     "mc.jsonl:2: 2 hash_ids for 10 input tokens"),
    ('{"timestamp": -5, "input_length": 10, "output_length": 1, "hash_ids": [0]}', "mc.jsonl:2: field 'timestamp'"),
    ('[1, 2]', "mc.jsonl:2: expected a JSON object"),
    ('{"id": "x", "requests": []}', "use `ckptsim import weka`"),
])
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    path = _lines(tmp_path, [_rec(10, 700, [0, 1]), line])
    with pytest.raises(MooncakeFormatError) as e:
        _load(path, tmp_path)
    assert message in str(e.value)
    assert not (tmp_path / "out.jsonl").exists()


def test_out_of_order_timestamps_are_refused(tmp_path):
    path = _lines(tmp_path, [_rec(10, 700, [0, 1]), _rec(5, 700, [0, 1])])
    with pytest.raises(MooncakeFormatError, match="earlier than the line before"):
        _load(path, tmp_path)


def test_cli_mooncake(tmp_path):
    runner = CliRunner()
    out = tmp_path / "m.jsonl"
    args = ["import", "mooncake", str(DATA / "mooncake-conversation-head300.jsonl"), "-o", str(out), "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["n_requests"] == 300 == len(load_trace(out))
    assert runner.invoke(app, args).exit_code == 2          # refuses to overwrite
    res = runner.invoke(app, ["import", "mooncake", str(DATA / "weka-trace_0026.json"), "-o",
                              str(tmp_path / "x.jsonl")])
    assert res.exit_code == 2 and "import weka" in res.output


@pytest.mark.shared
def test_whole_conversation_trace(shared_dir, tmp_path):
    src = shared_dir / "corpus" / "traces" / "mooncake" / "conversation_trace.jsonl"
    tr, stats = _load(src, tmp_path)
    assert len(tr) == 12031                              # PROVENANCE.md: 12,031 requests
    assert tr.t_s[-1] == pytest.approx(3536.999)         # last timestamp, 3,536,999 ms
    # every request shares the first block (system prompt); only the first has no parent
    assert stats.n_roots == 1
    # continuations arrive after a think time, never at the same millisecond as their parent
    cont = [i for i in range(len(tr)) if tr[i].parent >= 0 and tr[i].session == tr[int(tr.parent[i])].session]
    assert len(cont) == stats.n_continuations
    assert sum(tr.t_s[i] == tr.t_s[int(tr.parent[i])] for i in cont) < 0.01 * len(cont)
