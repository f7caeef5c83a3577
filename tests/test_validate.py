"""``ckptsim validate``: replaying real logs through the llama-server policy, decision by decision."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ckptsim.cli import app
from ckptsim.validate import validate_log

runner = CliRunner()


def _log(shared_dir: Path, prefix: str) -> Path:
    return next((shared_dir / "corpus" / "logs").glob(prefix + "_*.log"))


@pytest.mark.shared
@pytest.mark.parametrize("prefix,min_known", [("008", 60), ("009", 25), ("040", 10)])
def test_multitask_logs_agree(shared_dir: Path, prefix: str, min_known: int) -> None:
    v = validate_log(_log(shared_dir, prefix))
    assert len(v.known) >= min_known
    # Target >= 95%; all three currently agree on every known decision.
    assert v.agreement is not None and v.agreement >= 0.95, v.to_json()["mismatches"]


@pytest.mark.shared
def test_008_unknowns_are_not_counted_as_agreed(shared_dir: Path) -> None:
    j = validate_log(_log(shared_dir, "008")).to_json()
    why = j["unknown_reasons"]
    # task 2322 was cancelled before its timings: its prompt length is only inferred; task 4815
    # is cut right after its probe line: no prompt length, so all five of its decisions are open
    lost = "the prompt length is not in the log (it starts or ends too close to the task to show it)"
    assert why == {"prompt length only inferred": 2, lost: 5}
    # 9 pure extensions: at -lv 3 this build prints no "cached n_tokens" line, but no restore or
    # reset line either, which it does print (a search always ends in one, spec §2.2), with
    # "f_keep = 1.000" on the selection: n_past = the slot's whole length. Task 596 (line 146)
    # follows task 348's "stop processing: n_tokens = 13333" on slot 2.
    t596 = next(t for t in j["per_task"] if t["task"] == 596)
    assert t596["logged"]["cache_n"] == 13333 and t596["status"]["cache_n"] == "agreed"
    assert sum(1 for t in j["per_task"] if t["status"]["cache_n"] == "agreed") == 16
    assert j["decisions"] + j["unknown"] == 5 * 17        # 17 tasks, 5 decisions each
    assert [x["task"] for x in j["left_out"]] == [4815]   # no request of the trace, but a task
    t4815 = j["per_task"][-1]
    assert (t4815["task"], t4815["request"], t4815["slot"], t4815["line"]) == (4815, -1, 2, 452)


@pytest.mark.shared
def test_wrong_build_is_caught_with_line_numbers(shared_dir: Path) -> None:
    # b10573 has no every-N checkpoints: task 0 of 009 created 8192/16384/24576 (lines 64-76)
    v = validate_log(_log(shared_dir, "009"), version="b10573")
    mm = [d for d in v.decisions if d.status == "mismatch"]
    first = next(d for d in mm if d.task == 0 and d.decision == "created")
    assert first.line == 64 and first.logged[:3] == [8192, 16384, 24576]
    assert v.agreement < 0.8
    # b9231-b9508 searched even on pure extensions: 008's extensions (task 596, ...) would restore
    v = validate_log(_log(shared_dir, "008"), version="b9300")
    assert any(d.task == 596 and d.decision == "restored" and d.status == "mismatch" for d in v.decisions)


@pytest.mark.shared
def test_excerpt_started_after_the_restore_leaves_it_unknown(shared_dir: Path) -> None:
    # 026 holds one create line and the timings of a task whose start is not in the excerpt: neither
    # n_past nor the slot's checkpoints are shown, so nothing can be settled (and it says why)
    v = validate_log(_log(shared_dir, "026"))
    assert v.agreement is None and all(d.status == "unknown" for d in v.decisions)
    assert all("after its restore decision" in d.why for d in v.decisions)


def test_default_verbosity_log_of_a_new_build_settles_nothing(tmp_path: Path) -> None:
    # b9838+ at -lv 3: no checkpoint line at all (spec §6); decisions cannot be checked
    p = tmp_path / "lv3.log"
    p.write_text(
        "0.00.100.000 I srv    load_model: initializing slots, n_slots = 1\n"
        "0.00.100.001 I slot   load_model: id  0 | task -1 | new slot, n_ctx = 8192\n"
        "0.01.000.000 I slot launch_slot_: id  0 | task 0 | processing task, is_child = 0\n"
        "0.02.000.000 I slot print_timing: id  0 | task 0 | prompt eval time =     100.00 ms /  3000 tokens "
        "(    0.03 ms per token, 30000.00 tokens per second)\n"
        "0.02.000.001 I slot print_timing: id  0 | task 0 |        eval time =      10.00 ms /     5 tokens "
        "(    2.00 ms per token,   500.00 tokens per second)\n"
        "0.02.000.002 I slot      release: id  0 | task 0 | stop processing: n_tokens = 3004, truncated = 0\n")
    v = validate_log(p)
    # the slot is empty (the log shows the server start): nothing to restore or reset (spec §2.2),
    # which needs no checkpoint line; what the prefill created and erased the log cannot show
    st = {d.decision: d.status for d in v.decisions}
    assert st == {"cache_n": "agreed", "restored": "agreed", "full": "agreed", "created": "unknown",
                  "erased": "unknown"}
    assert {d.why for d in v.decisions if d.status == "unknown"} == {"checkpoint lines not visible (use -lv 4)"}
    # a later task of an excerpt without the start-up lines: what the slot held is not shown
    q = tmp_path / "lv3-later.log"
    q.write_text("".join(p.read_text().splitlines(keepends=True)[2:]).replace("task 0 |", "task 7 |"))
    v = validate_log(q)
    assert v.agreement is None and {d.why for d in v.decisions} == {"checkpoint lines not visible (use -lv 4)"}


# --- the command line ---------------------------------------------------------------------------
@pytest.mark.shared
def test_cli_validate_json(shared_dir: Path) -> None:
    r = runner.invoke(app, ["validate", str(_log(shared_dir, "040")), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert {"tasks", "decisions", "agreed", "agreement", "mismatches"} <= set(doc)
    assert doc["tasks"] == 2 and doc["agreement"] == 1.0


@pytest.mark.shared
def test_cli_min_agreement_fails_on_wrong_build(shared_dir: Path) -> None:
    r = runner.invoke(app, ["validate", str(_log(shared_dir, "009")), "--version", "b10573",
                            "--min-agreement", "0.95"])
    assert r.exit_code == 1
    assert "mismatch line 64" in r.stdout


@pytest.mark.shared
def test_cli_parse_writes_a_loadable_trace(shared_dir: Path, tmp_path: Path) -> None:
    from ckptsim.trace import load_trace
    out = tmp_path / "t.jsonl"
    r = runner.invoke(app, ["parse", str(_log(shared_dir, "009")), "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["requests_written"] == 5
    t = load_trace(out)
    assert len(t) == 5 and t.header.meta["settings"]["n_slots"] == 4
    assert t[1].observed["restored"] == 32675
    r = runner.invoke(app, ["parse", str(_log(shared_dir, "009")), "-o", str(out)])
    assert r.exit_code == 2 and "--force" in r.output


def test_cli_bad_input_exit_2(tmp_path: Path) -> None:
    p = tmp_path / "garbage.bin"
    p.write_bytes(bytes(range(256)) * 100)
    for cmd in ("parse", "validate"):
        r = runner.invoke(app, [cmd, str(p)])
        assert r.exit_code == 2
        assert "binary data" in r.output and "Traceback" not in r.output


def test_calibration_log_round_trip_and_total_time() -> None:
    """The -lv 4 log of the committed CPU calibration run (docs/calibration/, a real llama.cpp
    server, b11549) replays decision by decision, and the committed profile predicts its total
    prompt time within the calibration issue's 15% (per-task errors are machine noise)."""
    from ckptsim.validate import validate_log
    repo = Path(__file__).resolve().parents[1]
    v = validate_log(repo / "docs" / "calibration" / "tiny-qwen35-cpu-2core.server.log.gz",
                     profile="tiny-qwen35-cpu-2core")
    doc = v.to_json()
    assert doc["tasks"] == 152 and doc["decisions"] == 760 and doc["agreement"] == 1.0
    assert abs(doc["prompt_time"]["total_error_pct"]) < 15.0


@pytest.mark.parametrize("ub", [64, 256, 1024])
def test_calibration_logs_at_several_ubatch_sizes(ub: int) -> None:
    """The committed -ub sweep (docs/calibration/tiny-ub-sweep-cpu.server-ub*.log.gz, real llama.cpp
    b11549 at -b 1024): every decision, including the T-(4+ub) checkpoints, replays at every -ub."""
    from ckptsim.validate import validate_log
    repo = Path(__file__).resolve().parents[1]
    v = validate_log(repo / "docs" / "calibration" / f"tiny-ub-sweep-cpu.server-ub{ub}.log.gz")
    doc = v.to_json()
    assert doc["tasks"] == 152 and doc["decisions"] == 760 and doc["agreement"] == 1.0


@pytest.mark.parametrize("name", ["tiny-qwen35-h200", "qwen35-0.8b-h200"])
@pytest.mark.parametrize("ub", [128, 512, 2048])
def test_gpu_calibration_logs_replay_every_decision(name: str, ub: int) -> None:
    """The H200 calibration logs (llama-server b11434 built with CUDA, bench/gpu_calibrate.sh):
    the simulator reproduces every decision of every task at every -ub on a GPU build too."""
    from ckptsim.validate import validate_log
    repo = Path(__file__).resolve().parents[1]
    doc = validate_log(repo / "docs" / "calibration" / f"{name}.server-ub{ub}.log.gz").to_json()
    assert doc["tasks"] == 152 and doc["decisions"] == 760 and doc["agreement"] == 1.0


def test_a_dated_build_range_is_replayed_per_rule_group() -> None:
    """xllamacpp 0.2.14 reports build 0; its wording dates it to b8260-b8392 (its erasure lines
    have no pos_next, spec §6: before #20671, merged as b8393; restore lines with n_past: #20287,
    b8260). tests/data/conformance/xllamacpp-0.2.14-slots-np2.server.log.gz was written by
    `conformance`. Replayed per rule group: b8260-b8270 (one near-end checkpoint) is contradicted
    at line 610 -- the log creates two, T-512 and T-4 (#20288, b8271) -- and b8271-b8392 agrees on
    all 40, including the idle slot's checkpoints erased by the invalidation pass (it runs for
    every request before b8393 too; 0.2.13 vendors the same llama.cpp commit and prints b8352).
    So the log is replayed as b8271, inside its wording. (Builds are the merge commits' own build
    numbers, server.RULE_CHANGES.)"""
    from ckptsim.validate import validate_log
    repo = Path(__file__).resolve().parents[1]
    v = validate_log(repo / "tests" / "data" / "conformance" / "xllamacpp-0.2.14-slots-np2.server.log.gz")
    rows = {r["builds"]: r for r in v.build_range}
    assert set(rows) == {"b8260-b8270", "b8271-b8392"}
    # b8260's single near-end checkpoint is contradicted at the first task (line 610 creates two)
    assert rows["b8260-b8270"]["first_mismatch_line"] == 610
    assert rows["b8271-b8392"]["agreed"] == rows["b8271-b8392"]["decisions"] == 40
    assert not any(r.get("outside_wording") for r in v.build_range)
    assert "version=b8271" in v.policy and v.agreement == 1.0 and v.to_json()["build_range"] == v.build_range
    # a printed build is not second-guessed
    assert validate_log(repo / "docs" / "calibration" / "tiny-qwen35-h200.server-ub512.log.gz").build_range == []


# --- no task left out (issue #12, done-when) -----------------------------------------------------
DATA = Path(__file__).parent / "data" / "logs"


def _shipped(prefix: str) -> Path:
    return next(DATA.glob(prefix + "_*.log"))


def test_a_paste_without_task_ids_is_still_a_task() -> None:
    # 034 (PR #20819, hand-edited: prefixes stripped, fields replaced by "..."): two checking
    # lines against n_past 3, a reset, two erasures, the prompt eval time of 28,367 tokens. The
    # reset is what the server's rule gives (no checkpoint at or below 3, spec §2.2); what the
    # paste does not show (created lines) may have been left out, so it is not evidence.
    v = validate_log(_shipped("034"))
    st = {d.decision: d for d in v.decisions}
    assert v.n_tasks == 1 and {d.task for d in v.decisions} == {-1000}
    assert all(st[k].status == "agreed" for k in ("cache_n", "restored", "full")) and st["full"].logged is True
    assert st["created"].status == st["erased"].status == "unknown" and "hand-edited" in st["created"].why
    # nothing in the log tells its rule groups apart: it is replayed as the build parse dates it
    from ckptsim.ingest.log_trace import read_tasks
    assert v.policy.startswith(f"llama-server:version=b{read_tasks(_shipped('034')).build}")
    # 022 (PR #25592, also abbreviated): a create then a restore; a restore decision after a
    # create is the next task's (spec §2.2 comes before §2.3 in a task)
    v = validate_log(_shipped("022"))
    assert v.n_tasks == 2 and [p["task"] for p in v.per_task()] == [-1000, -1001]
    assert v.per_task()[1]["logged"]["restored"] == 38584


def test_a_selection_cut_before_its_task_is_a_task() -> None:
    # 035 (issue #25913) ends in the sampler parameters after "- checking sim = 0.798
    # (11674/14633)" and the slot selection: a task of 14,633 tokens with n_past 11,674 whose
    # restore decision the log does not reach
    v = validate_log(_shipped("035"))
    (p,) = v.per_task()
    assert (p["task"], p["slot"]) == (-1000, 0)
    assert all(s == "unknown" for s in p["status"].values())
    from ckptsim.explain import explain_log
    (t,) = explain_log(_shipped("035")).tasks
    assert (t.n_prompt, t.n_past) == (14633, 11674)
    assert "ends before the server decided" in t.text and t.text.startswith("task ? (line 4, slot 0)")


def test_a_task_without_a_prompt_length_is_listed_with_its_decisions() -> None:
    # 019 (issue #16416): a reset and one erasure of task 3666, nothing else; no prompt length,
    # so no request of the trace, but validate lists the task with what the log shows
    v = validate_log(_shipped("019"))
    (p,) = v.per_task()
    assert (p["task"], p["request"], p["slot"], p["line"]) == (3666, -1, 0, 1)
    assert p["logged"]["full"] is True and p["logged"]["erased"] == [5050]
    assert set(p["status"].values()) == {"unknown"} and "prompt length" in p["why_unknown"]["full"]
    assert v.to_json()["tasks"] == 1 and v.agreement is None


def test_llama_cpp_python_is_named_as_a_relative() -> None:
    # corpus 043 (JamePeng/llama-cpp-python #59): its own HybridCheckpointCache, not a server
    from ckptsim.ingest.llama_log import _fork_of
    assert _fork_of("HybridCheckpointCache: Saved checkpoint at pos 28320 (186.33 MiB)  total=31  "
                    "used=5776.20 MiB") == "llama-cpp-python"
    assert _fork_of("Llama.eval: [Periodic Checkpoint] Saving hybrid state at pos 28320.") == "llama-cpp-python"


def test_inferred_settings_and_the_build_range_are_printed_with_their_lines() -> None:
    # 033 (late-cli #12): "created context checkpoint 11 of 32" (line 5) gives --ctx-checkpoints,
    # slot 3 (line 1) -np >= 4; its wording dates it to b8152-b9150 (merge-commit builds,
    # server.RULE_CHANGES). parse, validate and explain print the same settings, each with its
    # line, and the build range (validate and explain: per rule group; b8152-b8270 would have
    # placed a checkpoint the log does not show, line 5).
    log = str(_shipped("033"))
    want = "ctx_checkpoints=32 (line 5, inferred), n_slots=4 (line 1, inferred)"
    outs = {cmd: runner.invoke(app, [cmd, log]) for cmd in ("parse", "validate", "explain")}
    for cmd, r in outs.items():
        assert r.exit_code == 0, (cmd, r.output)
        assert want in " ".join(r.output.split()), (cmd, r.output)
    assert "rule group b8152-b8217: 0/1 agree, first mismatch at line 5" in outs["validate"].output
    assert "b8271-b8392: 1/1 agree (replayed as this)" in outs["validate"].output
    assert "rule groups tried: b8152-b8217 0/1" in " ".join(outs["explain"].output.split())
    assert "replayed as b8271" in outs["explain"].output
    # the range with the lines that bound it: the created line's n_tokens (line 5: b8152 on) and
    # "n_tokens = 62983, memory_seq_rm" (line 1: up to b9150, spec §6), in all three
    rng = ("wording fits b8152-b9150 (from b8152: line 5, a 'created context checkpoint' line with "
           "n_tokens; to b9150: line 1, 'n_tokens = ..., memory_seq_rm')")
    for cmd, r in outs.items():
        assert rng in " ".join(r.output.split()), (cmd, r.output)
    doc = json.loads(runner.invoke(app, ["explain", log, "--json"]).stdout)
    assert doc["settings_evidence"]["ctx_checkpoints"]["line"] == 5 and doc["build_range"]


def test_checkpoint_lines_without_n_tokens_date_a_log_before_b8152() -> None:
    # 019 (issue #16416, 2025-10-04): "erased invalidated context checkpoint (pos_min = 5049,
    # pos_max = 5049, n_swa = 1, size = 143.938 MiB)" reaches its size field without n_tokens,
    # which builds print from b8152 on (spec §6: b6685-b8156 without it): it dates the log, with
    # the line, where before it fitted every build from b6685.
    from ckptsim.ingest.log_trace import read_tasks
    lt = read_tasks(_shipped("019"))
    assert (lt.build_lo, lt.build_hi) == (6685, 8151)
    assert lt.build_evidence["to"]["line"] == 2 and "without n_tokens" in lt.build_evidence["to"]["wording"]
    r = runner.invoke(app, ["validate", str(_shipped("019")), "--json"])
    doc = json.loads(r.stdout)
    assert doc["build_wording"]["range"] == [6685, 8151] and doc["build_wording"]["evidence"]["to"]["line"] == 2
    # a line cut before its size field proves nothing of the kind
    from ckptsim.ingest.llama_log import Fact, FactKind, _format_feature
    cut = Fact(FactKind.ERASED_INVALIDATED, 2, 0, 3666, None, {"pos_min": 5049, "pos_max": 5049,
                                                               "n_tokens": 5050, "n_tokens_logged": False})
    assert _format_feature(cut, "erased invalidated context checkpoint (pos_min = 5049, pos_max = 5049", "") is None


def test_a_relatives_log_is_not_dated_or_replayed_as_mainline() -> None:
    # 005 (ik_llama.cpp issue #2226): its wording dates no llama-server build
    for cmd in ("parse", "validate", "explain"):
        r = runner.invoke(app, [cmd, str(_shipped("005"))])
        assert r.exit_code == 0 and "wording fits" not in r.output and "replayed as b" not in r.output, (cmd, r.output)


def test_a_development_state_of_pr_22929_is_a_relative() -> None:
    # 023: "skip checkpoint at 25055, expected boundary before user input = 30104" (line 7) is
    # wording, and a rule (no every-N checkpoint below the last user message), that no merged
    # build has: its decisions are not replayed as mainline's
    v = validate_log(_shipped("023"))
    assert v.fork == {"name": "development branch of llama.cpp PR #22929", "line": 7, "modelled": False}
    assert v.decisions and all(d.status == "unknown" for d in v.decisions) and not v.build_range
    assert not v.build_wording
