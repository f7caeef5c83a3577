"""Parser tests. Expected facts were read by hand from the corpus logs (file and line named in
each comment), never copied from the parser's output."""
from __future__ import annotations

import gzip
import io
import sys
from pathlib import Path

import pytest

from ckptsim.ingest.llama_log import FactKind, LogError, LogStats, iter_facts, parse_log, strip_prefixes
from ckptsim.ingest.log_trace import read_tasks, trace_from_log

REPO = Path(__file__).resolve().parents[1]
LOGS = REPO.parent / "shared" / "corpus" / "logs"
ALL_LOGS = sorted(LOGS.glob("*.log")) if LOGS.is_dir() else []


def _log(shared_dir: Path, prefix: str) -> Path:
    return next((shared_dir / "corpus" / "logs").glob(prefix + "_*.log"))


def _ns(facts, kind):
    return [f.v["n_tokens"] for f in facts if f.kind is kind]


# --- every corpus log -------------------------------------------------------------------------
@pytest.mark.shared
@pytest.mark.parametrize("path", ALL_LOGS, ids=[p.name[:3] for p in ALL_LOGS])
def test_every_corpus_log_parses(path: Path, shared_dir: Path) -> None:
    r = parse_log(path)
    assert r.stats.known > 0
    assert r.stats.malformed == 0, r.stats.issues      # all corpus wordings are understood
    read_tasks(path)                                   # and assemble into tasks without error


# --- multi-task logs, read by hand ------------------------------------------------------------
@pytest.mark.shared
def test_009_restore_erase_cycle(shared_dir: Path) -> None:
    r = parse_log(_log(shared_dir, "009"))
    created = r.of(FactKind.CREATED)
    # lines 64, 70, 76, 81, 83: task 0 creates 1..5 of 32; 8192/16384/24576 come from every-N
    assert [f.v["n_tokens"] for f in created[:5]] == [8192, 16384, 24576, 32675, 33187]
    assert [f.line for f in created[:5]] == [64, 70, 76, 81, 83]
    assert created[0].v["size_mib"] == pytest.approx(166.782) and created[0].v["max"] == 32
    assert len(r.of(FactKind.EVERY_N)) == 3                     # lines 63, 69, 75
    # lines 99, 118, 138, 159: restores 32675 three times, then 32910
    assert _ns(r.facts, FactKind.RESTORED) == [32675, 32675, 32675, 32910]
    # lines 100, 119, 139, 160: each turn erases the newest checkpoint
    assert _ns(r.facts, FactKind.ERASED_INVALIDATED) == [33187, 33215, 33251, 33422]
    assert r.of(FactKind.ERASED_INVALIDATED)[0].v["pos_next"] == 32675
    probe = r.of(FactKind.PROBE)[0]                             # line 96, task 23
    assert (probe.line, probe.task, probe.slot) == (96, 23, 3)
    assert (probe.v["n_past"], probe.v["n_cache"]) == (32876, 33198)
    tp = r.of(FactKind.TIMING_PROMPT)                           # lines 85 and 167
    assert (tp[0].v["ms"], tp[0].v["n_tokens"], tp[0].task) == (16743.45, 33191, 0)
    assert (tp[-1].v["ms"], tp[-1].v["n_tokens"], tp[-1].task) == (1046.61, 676, 258)
    assert [f.task for f in r.of(FactKind.TASK_START)] == [0, 23, 56, 170, 258]
    assert r.of(FactKind.STOP)[0].v["n_cache"] == 33198         # line 90
    s = r.stats.settings                                        # lines 2, 7, 24, 28-31, 32
    assert (s["verbosity"], s["n_slots"], s["kv_unified"], s["n_ctx_slot"], s["cache_ram_mib"]) == \
        (3, 4, True, 131072, 8192)
    assert {"docker", "uptime"} <= r.stats.prefixes
    # uptime column: line 58 "0.56.039.349" = 56.039349 s
    assert r.of(FactKind.TASK_START)[0].t_s == pytest.approx(56.039349)


@pytest.mark.shared
def test_008_four_slots_counts(shared_dir: Path) -> None:
    r = parse_log(_log(shared_dir, "008"))
    # grep counts over the file: 17 "processing task", 35 created, 24 erased invalidated,
    # 5 restored, 1 cancel (line 314), 2 prompt saves (lines 103, 320), 4 every-N lines
    assert len(r.of(FactKind.TASK_START)) == 17
    assert len(r.of(FactKind.CREATED)) == 35
    assert len(r.of(FactKind.ERASED_INVALIDATED)) == 24
    assert len(r.of(FactKind.RESTORED)) == 5
    assert [f.task for f in r.of(FactKind.CANCEL)] == [2322]
    assert [f.v["n_tokens"] for f in r.of(FactKind.CACHE_SAVE)] == [1630, 46225]
    assert r.of(FactKind.CACHE_SAVE)[1].v["size_mib"] == pytest.approx(1782.130)
    assert len(r.of(FactKind.EVERY_N)) == 4
    # tasks 0 and 2 run at once on slots 3 and 2 (INDEX.md; lines 58, 65)
    starts = r.of(FactKind.TASK_START)
    assert [(f.task, f.slot) for f in starts[:2]] == [(0, 3), (2, 2)]
    assert [f.slot for f in r.of(FactKind.IDLE_SAVE)] == [3]    # slot 3 saved when task 301 starts


@pytest.mark.shared
def test_008_tasks(shared_dir: Path) -> None:
    lt = read_tasks(_log(shared_dir, "008"))
    by = {t.task: t for t in lt.tasks}
    t = by[2571]
    # task 2571: n_past 8525 of 46225 (probe), restores 8324, erases 23, then every-N creations
    # 16516..41092 and the near-end pair 44508/45020; prompt eval 36700 tokens => T = 8324 + 36700
    assert (t.n_lcp, t.parent_n_cache, t.restored) == (8525, 46225, 8324)
    assert len(t.erased) == 23
    assert [n for n, _, _ in t.created] == [16516, 24708, 32900, 41092, 44508, 45020]
    assert t.n_prompt == 8324 + 36700
    assert by[2322].cancelled and by[2571].parent_task == 2322
    # task 4815 is cut right after its probe line (the last line of the excerpt)
    assert by[4815].n_prompt is None
    # every-N (<= b9309, until #22929) + prefixed progress (>= b9151, #23021): builds as merged
    assert lt.build_lo == 9151 and lt.build_hi == 9309
    assert lt.settings["ctx_checkpoints"] == 32           # "... of 32"


@pytest.mark.shared
def test_009_trace_prefix_structure(shared_dir: Path) -> None:
    lt = trace_from_log(_log(shared_dir, "009"))
    rs = lt.requests
    assert [r.parent for r in rs] == [-1, 0, 1, 2, 3]
    # n_shared = the probe's n_past (lines 96, 115, 135, 156)
    assert [r.n_shared for r in rs[1:]] == [32876, 32904, 32940, 33111]
    # T: task 0 prompt eval 33191 tokens from 0; task 23 restores 32675 then evaluates 544
    assert rs[0].n_prompt == 33191 and rs[1].n_prompt == 32675 + 544
    # output: the cache keeps prompt + generated[:-1]: 33198 (line 90) = 33191 + 8 - 1
    assert rs[0].n_output == 8
    assert rs[1].observed["restored"] == 32675 and rs[1].observed["erased"] == [33187]
    assert ["restored", 32675, 99] in rs[1].observed["events"]
    assert len({r.session for r in rs}) == 1
    assert rs[1].t_s == pytest.approx((60 + 40.407986) - 56.038618)   # lines 93 and 52 (selection)


@pytest.mark.shared
def test_040_full_reprocess(shared_dir: Path) -> None:
    lt = trace_from_log(_log(shared_dir, "040"))
    a, b = lt.requests
    # line 41: task.n_tokens = 133; line 47: created at n_tokens 129 (T-4)
    assert a.n_prompt == 133 and a.observed["created"] == [129]
    # line 68: T = 11; line 69: n_past = 3 of 2180; line 71: forcing full; line 72: erase 129
    assert (b.n_prompt, b.parent, b.n_shared) == (11, 0, 3)
    assert b.observed["full_reprocess"] and b.observed["cache_n"] == 0
    assert b.observed["erased"] == [129]
    s = lt.log.settings
    assert s["hybrid"] and s["spec_checkpoints"] and s["n_slots"] == 4    # lines 2, 3, 1


@pytest.mark.shared
def test_010_newest_format(shared_dir: Path) -> None:
    r = parse_log(_log(shared_dir, "010"))
    cs = r.of(FactKind.CHECK_SIM)[0]                  # line 2: " - checking sim = 0.002 (3/1262)"
    assert (cs.v["lcp"], cs.v["n_prompt"], cs.slot) == (3, 1262, 0)
    assert _ns(r.facts, FactKind.ERASED_INVALIDATED) == [638, 1146]       # lines 26, 27
    assert _ns(r.facts, FactKind.CREATED) == [750, 1258]                  # lines 31, 34
    assert [f.v["n_cached"] for f in r.of(FactKind.SEQ_RM)] == [0, 512, 750, 1258]   # lines 28-32
    assert len(r.of(FactKind.CACHE_CANDIDATE)) == 3                      # lines 7-9
    tp = r.of(FactKind.TIMING_PROMPT)[0]                                 # line 44, prefixed
    assert (tp.v["ms"], tp.v["n_tokens"], tp.task) == (2210.24, 1262, 1665)
    assert "n_gen" in r.stats.formats and "checking_lower" in r.stats.formats


# --- prefix styles and old/odd wordings, one log each -----------------------------------------
@pytest.mark.shared
def test_prefix_styles(shared_dir: Path) -> None:
    # 001 journald + uptime: line 5 checking against 60120, line 6 restored 60029, line 7 created
    # 60121 "2 of 8", line 1 message_spans checkpoint_n_tokens=60121
    r = parse_log(_log(shared_dir, "001"))
    assert r.of(FactKind.CHECKING)[0].v["against"] == 60120
    assert _ns(r.facts, FactKind.RESTORED) == [60029] and _ns(r.facts, FactKind.CREATED) == [60121]
    assert _ns(r.facts, FactKind.USER_SPAN) == [60121] and "journald" in r.stats.prefixes
    # 046 ISO-8601 journald + [42751] router + uptime: line 3 selected by LCP, f_keep 0.999
    r = parse_log(_log(shared_dir, "046"))
    sel = r.of(FactKind.SLOT_SELECTED)[0]
    assert (sel.line, sel.slot, sel.v["f_keep"]) == (3, 0, 0.999)
    assert {"iso", "router", "uptime"} <= r.stats.prefixes
    # 015 router child "[54531]": line 9 task.n_tokens = 865; the file ends mid-line (line 15)
    r = parse_log(_log(shared_dir, "015"))
    assert r.of(FactKind.NEW_PROMPT)[0].v["n_prompt"] == 865 and r.stats.truncated_last_line
    # 013 starts with a stray backtick; line 10 task.n_tokens = 19892
    assert parse_log(_log(shared_dir, "013")).of(FactKind.NEW_PROMPT)[0].v["n_prompt"] == 19892
    # 022 is poster-abbreviated and indented: created has no pos_max (n_tokens 38584)
    r = parse_log(_log(shared_dir, "022"))
    assert _ns(r.facts, FactKind.CREATED) == [38584] and _ns(r.facts, FactKind.RESTORED) == [38584]


@pytest.mark.shared
def test_old_and_fork_wordings(shared_dir: Path) -> None:
    # 019: oldest erase format, no n_tokens: pos_max 5049 => n_tokens 5050 for hybrid memory
    r = parse_log(_log(shared_dir, "019"))
    assert _ns(r.facts, FactKind.ERASED_INVALIDATED) == [5050] and len(r.of(FactKind.FULL_REPROCESS)) == 1
    # 030: "erasing old context checkpoint (pos_min = 16037, ...)" without n_tokens
    assert _ns(parse_log(_log(shared_dir, "030")).facts, FactKind.ERASED_OLD) == [16038]
    # 005 ik_llama.cpp: created 27648 and 30720 (lines 1, 4), erasing old 24576 (line 3), and the
    # JSON-ish INFO line 2 "kv cache rm [p0, end) ... id_slot=0 id_task=1 p0=27648"
    r = parse_log(_log(shared_dir, "005"))
    assert _ns(r.facts, FactKind.CREATED) == [27648, 30720] and _ns(r.facts, FactKind.ERASED_OLD) == [24576]
    rm = r.of(FactKind.SEQ_RM)[0]
    assert (rm.v["n_cached"], rm.slot, rm.task) == (27648, 0, 1)
    # 042 ik "apply_checkp": 10 complete erase lines, the 11th is cut
    assert len(parse_log(_log(shared_dir, "042")).of(FactKind.ERASED_INVALIDATED)) == 10
    # 020 unmerged PR wording "created prompt processing context checkpoint 2 of 256", pos 4095
    r = parse_log(_log(shared_dir, "020"))
    assert _ns(r.facts, FactKind.CREATED) == [4096, 6144] and r.of(FactKind.CREATED)[0].v["max"] == 256
    # 043 llama-cpp-python's HybridCheckpointCache: 4 saves, evictions of 4096 and 6023
    r = parse_log(_log(shared_dir, "043"))
    assert _ns(r.facts, FactKind.CREATED) == [28320, 32416, 36512, 40608]
    assert _ns(r.facts, FactKind.ERASED_OLD) == [4096, 6023]
    # 034 abbreviated: two scans against 3, two erasures, timings 301603.16 ms / 28367 tokens
    r = parse_log(_log(shared_dir, "034"))
    assert [f.v["against"] for f in r.of(FactKind.CHECKING)] == [3, 3]
    assert len(r.of(FactKind.ERASED_INVALIDATED)) == 2
    assert r.of(FactKind.TIMING_PROMPT)[0].v["n_tokens"] == 28367
    # 035 newest selection: " - checking sim = 0.798 (11674/14633)", f_sim_best
    r = parse_log(_log(shared_dir, "035"))
    assert r.of(FactKind.CHECK_SIM)[0].v["lcp"] == 11674 and "f_sim_best" in r.stats.formats
    # 017 start-up: "context checkpoints enabled, max = 32, min spacing = 256", 1 slot, 262144,
    # and "--cache-idle-slots requires --kv-unified, disabling"
    s = parse_log(_log(shared_dir, "017")).stats.settings
    assert (s["ctx_checkpoints"], s["min_step"], s["n_slots"], s["n_ctx_slot"], s["cache_idle_slots"]) == \
        (32, 256, 1, 262144, False)
    # 048: "(> 0.250 thold)" is the -sps flag
    assert parse_log(_log(shared_dir, "048")).stats.settings["slot_prompt_similarity"] == 0.25
    # 028: the same three lines pasted twice
    r = parse_log(_log(shared_dir, "028"))
    assert len(r.of(FactKind.FULL_REPROCESS)) == 2 and len(r.of(FactKind.ERASED_INVALIDATED)) == 4


# --- synthetic input: prefixes, streams, bad files ----------------------------------------------
LINE = ("slot create_check: id  0 | task 7 | created context checkpoint 1 of 8 "
        "(pos_min = 99, pos_max = 99, n_tokens = 100, size = 1.500 MiB)")


@pytest.mark.parametrize("prefix", [
    "", "I ", "0.01.853.355 I ", "[38491] 0.01.853.355 I ", "2026-05-17 11:03:17.644 | 0.00.720.589 I ",
    "May 22 01:30:52 host start.sh[37450]: 63.17.950.107 I ",
    "2026-07-28T20:08:39.809061-04:00 t0 llama-server[1686919]: [42751] 107.53.131.684 I ", "  ",
])
def test_prefixes_are_stripped(prefix: str) -> None:
    body, _, _ = strip_prefixes(prefix + LINE)
    assert body == LINE


def test_uptime_minutes_are_unbounded() -> None:
    _, t, level = strip_prefixes("261.48.759.162 W srv  x: y")
    assert t == pytest.approx(261 * 60 + 48.759162) and level == "W"


def test_gzip_and_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gz = tmp_path / "x.log.gz"
    gz.write_bytes(gzip.compress((LINE + "\n").encode()))
    assert [f.v["n_tokens"] for f in parse_log(gz).facts] == [100]
    # stdin, gzip-compressed too (detected by its magic bytes, not its name)
    fake = io.TextIOWrapper(io.BytesIO(gzip.compress((LINE + "\n").encode())))
    monkeypatch.setattr(sys, "stdin", fake)
    assert [f.v["n_tokens"] for f in parse_log("-").facts] == [100]


def test_streams_without_reading_everything(tmp_path: Path) -> None:
    p = tmp_path / "big.log"
    p.write_text((LINE + "\n") * 50_000)
    stats = LogStats()
    it = iter_facts(p, stats)
    next(it)
    assert stats.lines < 100          # one fact costs one line, not the file


def test_malformed_line_is_reported_with_its_number(tmp_path: Path) -> None:
    p = tmp_path / "m.log"
    bad = LINE.replace("pos_min = 99", "pos_min = x")
    p.write_text(f"{LINE}\nsome unknown line\n{bad}\n{LINE}\n")
    r = parse_log(p)
    assert r.stats.malformed == 1 and r.stats.issues[0].line == 3
    assert r.stats.unknown == 1 and len(r.facts) == 2
    assert not r.stats.truncated_last_line


def test_cut_last_line_is_a_warning_not_an_error(tmp_path: Path) -> None:
    p = tmp_path / "cut.log"
    p.write_text(LINE + "\n" + LINE[:70])
    r = parse_log(p)
    assert r.stats.truncated_last_line and r.stats.malformed == 0 and len(r.facts) == 1


@pytest.mark.parametrize("content,msg", [
    (b"", "empty file"),
    (b"\n\n  \n", "empty file"),
    (bytes(range(256)) * 40, "binary data"),
    (b"root:x:0:0:root:/root:/bin/bash\nhello world\n", "no llama-server log lines"),
])
def test_bad_input_is_one_clear_error(tmp_path: Path, content: bytes, msg: str) -> None:
    p = tmp_path / "bad.log"
    p.write_bytes(content)
    with pytest.raises(LogError, match=msg):
        parse_log(p)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(LogError, match="no such file"):
        parse_log(tmp_path / "nope.log")
    with pytest.raises(LogError, match="directory"):
        parse_log(tmp_path)


def test_overlong_line_is_cut(tmp_path: Path) -> None:
    p = tmp_path / "long.log"
    p.write_text("x" * 200_000 + "\n" + LINE + "\n")
    r = parse_log(p)
    assert r.stats.overlong == 1 and len(r.facts) == 1 and r.facts[0].line == 2


def test_settings_carry_the_line_that_shows_them(tmp_path):
    """Log 009 (tests/data/logs/): printed settings keep their start-up line; ctx_checkpoints and
    every-N are read from 'N of 32' and '8192 tokens since last checkpoint' when not printed."""
    from ckptsim.ingest.log_trace import read_tasks
    log = Path(__file__).parent / "data" / "logs" / "009_repo-qwen36-27b-mtp-docker-1slot-restore-erase-cycle.log"
    lt = read_tasks(log)
    ev = lt.evidence
    assert ev["cache_ram_mib"]["value"] == 8192 and "printed" in ev["cache_ram_mib"]["how"]
    lines = log.read_text().splitlines()
    assert "8192" in lines[ev["cache_ram_mib"]["line"] - 1]
    assert ev["every_n"]["value"] == 8192 and "since last checkpoint" in lines[ev["every_n"]["line"] - 1]


def test_slot_ids_bound_n_slots_in_an_excerpt(tmp_path):
    """An excerpt that shows slot 2 and no start-up lines: -np is at least 3 (issue: a log showing
    slots 1-3 was replayed with -np 1); the evidence names the line."""
    from ckptsim.ingest.log_trace import read_tasks
    log = tmp_path / "x.log"
    log.write_text(
        "slot launch_slot_: id  2 | task 7 | processing task\n"
        "slot update_slots: id  2 | task 7 | new prompt, n_ctx_slot = 4096, n_keep = 0, task.n_tokens = 900\n")
    lt = read_tasks(log)
    assert lt.settings["n_slots"] == 3
    assert lt.evidence["n_slots"]["line"] == 1 and "slot 2" in lt.evidence["n_slots"]["how"]


def test_journald_month_in_lower_case(tmp_path):
    """journalctl in some locales prints 'apr 03' (issue: such a log found no task)."""
    from ckptsim.ingest.log_trace import read_tasks
    log = tmp_path / "j.log"
    body = ("slot launch_slot_: id  0 | task 5 | processing task\n"
            "slot update_slots: id  0 | task 5 | new prompt, n_ctx_slot = 4096, n_keep = 0, task.n_tokens = 900\n")
    log.write_text("".join(f"apr 03 10:00:0{i} host llama-server[42]: {ln}\n"
                           for i, ln in enumerate(body.splitlines())))
    lt = read_tasks(log)
    assert [t.task for t in lt.tasks] == [5] and lt.tasks[0].n_prompt == 900
    assert "journald" in lt.stats.prefixes


def test_n_batch_inferred_from_full_batches(tmp_path):
    """No -b printed but 'batch.n_tokens = 2048' on two batches (as corpus log 013): -b is 2048,
    with the line; a single batch of a size proves nothing (it may be a cut one)."""
    from ckptsim.ingest.log_trace import read_tasks
    head = "slot update_slots: id  0 | task 1 | "
    lines = [head + "new prompt, n_ctx_slot = 128000, n_keep = 0, task.n_tokens = 5000"] + [
        head + f"prompt processing progress, n_tokens = {n}, batch.n_tokens = {b}, progress = {n / 5000:.6f}"
        for n, b in ((2048, 2048), (4096, 2048), (5000, 904))]
    log = tmp_path / "b.log"
    log.write_text("\n".join(lines) + "\n")
    lt = read_tasks(log)
    assert lt.settings["n_batch"] == 2048 and lt.evidence["n_batch"]["line"] == 2
    log.write_text("\n".join(lines[:2]) + "\n")
    assert "n_batch" not in read_tasks(log).settings
