"""`ckptsim explain LOG`: each task in plain words, numbers taken from the log and matching validate."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ckptsim.cli import app
from ckptsim.explain import explain_log
from ckptsim.validate import validate_log

DATA = Path(__file__).parent / "data"
LOG009 = DATA / "logs" / "009_repo-qwen36-27b-mtp-docker-1slot-restore-erase-cycle.log"


def test_restore_story_of_a_real_log():
    """Log 009 task 23 (read off the log by hand): n_past 32876, checkpoints 8192 ... 33187 held,
    33187 past n_past so 32675 restored, 544 tokens re-processed, 33187 erased, 33215 created;
    201 = 32876 - 32675 common-prefix tokens lost; a checkpoint every 256 tokens would have been at
    32768, keeping 93 of them."""
    ex = explain_log(LOG009)
    t = next(t for t in ex.tasks if t.task == 23)
    assert (t.n_past, t.restored, t.prompt_n, t.erased, t.created) == (32876, 32675, 544, [33187], [33215])
    assert t.held_before == [8192, 16384, 24576, 32675, 33187] and t.lost == 201
    for words in ("33,187 lay past n_past", "32,675 was restored", "544 tokens re-processed",
                  "201 of them", "every 256 tokens would have kept 93"):
        assert words in t.text
    assert all(st == "agreed" for st in t.simulator.values())


def test_numbers_match_validate_and_the_verdict_adds_them_up():
    ex = explain_log(LOG009)
    v = validate_log(LOG009)
    assert (ex.validation.agreed, len(ex.validation.known)) == (v.agreed, len(v.known)) == (25, 25)
    assert ex.totals["lost_tokens"] == sum(t.lost for t in ex.tasks) == 201 + 229 + 265 + 201
    assert ex.totals["full_reprocess"] == 0
    assert "reproduces 25 of 25" in ex.verdict and "ckptsim recommend" in ex.verdict


def test_chat_log_is_explained(tmp_path):
    """The b9538 chat log written by `conformance` (tests/data/conformance/): the first task starts
    cold and creates 987 and 1463 (read off the log); the restores are told as restores."""
    import gzip
    log = tmp_path / "t.log"
    log.write_bytes(gzip.decompress((DATA / "conformance" / "b9538-chat-user-turns.server.log.gz").read_bytes()))
    ex = explain_log(log, version="b9538")
    assert len(ex.tasks) == 6 and not ex.left_out
    first = ex.tasks[0]
    assert "nothing in common" in first.text and first.created == [987, 1463]
    restored = [t for t in ex.tasks if t.restored >= 0]
    assert restored and all("was restored" in t.text for t in restored)


def test_cli_text_and_json():
    r = CliRunner().invoke(app, ["explain", str(LOG009)])
    assert r.exit_code == 0 and "task 23" in r.stdout and "reproduces 25 of 25" in r.stdout
    r = CliRunner().invoke(app, ["explain", str(LOG009), "--json"])
    doc = json.loads(r.stdout)
    assert [t["task"] for t in doc["tasks"]] == [0, 23, 56, 170, 258]
    assert doc["validation"]["agreed"] == 25 and doc["totals"]["lost_tokens"] == 896


def test_not_a_log_is_one_line(tmp_path):
    f = tmp_path / "x.log"
    f.write_text("hello\nworld\n")
    r = CliRunner().invoke(app, ["explain", str(f)])
    assert r.exit_code == 2 and "llama-server log" in r.output and len(r.output.strip().splitlines()) == 1


def test_validate_json_has_per_task():
    doc = validate_log(LOG009).to_json()
    t = doc["per_task"][1]
    assert t["task"] == 23 and t["slot"] == 3
    assert set(t["logged"]) == set(t["simulated"]) == set(t["status"]) == {"cache_n", "restored", "full",
                                                                          "created", "erased"}
    assert t["logged"]["restored"] == 32675 and t["status"]["erased"] == "agreed"


@pytest.mark.shared
def test_explain_runs_on_every_corpus_log(shared_dir):
    """Every log users posted: explain never fails, tells every task the log shows (a task without
    an id as 'task ?'), and its numbers are validate's; only the logs that hold no task line at
    all (start-up only: 017, 037, 045) have none."""
    taskless = []
    for log in sorted((shared_dir / "corpus" / "logs").glob("*.log")):
        ex = explain_log(log)
        v = validate_log(log)
        assert ex.verdict
        assert len(ex.tasks) + len(ex.left_out) == v.n_tasks
        assert (len(ex.validation.known), ex.validation.agreed) == (len(v.known), v.agreed)
        assert {p["task"] for p in v.per_task()} == {t.task for t in ex.tasks} | {x["task"] for x in ex.left_out}
        for t in ex.tasks:
            assert t.text.startswith(f"task {t.task} " if t.task >= 0 else "task ? ")
        if not v.n_tasks:
            taskless.append(log.name[:3])
    assert taskless == ["017", "037", "045"]


def test_a_fork_is_named_not_replayed_as_mainline():
    """ik_llama.cpp's log (tests/data/logs/005_*, its `took N ms` and `INFO [ ... ] tid=` wording):
    parse names the fork, validate settles no decision (each unknown, with why), explain says so."""
    log = DATA / "logs" / "005_ik2226-ik-llama-erase-old-keep-last.log"
    v = validate_log(log)
    assert v.fork == {"name": "ik_llama.cpp", "line": 1, "modelled": False}
    assert v.decisions and all(d.status == "unknown" and "not modelled" in d.why for d in v.decisions)
    r = CliRunner().invoke(app, ["parse", str(log), "--json"])
    assert json.loads(r.stdout)["logs"][0]["fork"]["name"] == "ik_llama.cpp"
    r = CliRunner().invoke(app, ["explain", str(log)])
    assert r.exit_code == 0 and "ik_llama.cpp log" in r.stdout and "does not model" in r.stdout


def test_an_unmerged_pr_branch_is_named_not_replayed_as_mainline():
    """Corpus 020 ran PR #17428's branch (never merged): a checkpoint after every 2048-token batch,
    printed as "created prompt processing context checkpoint N of 256". Replayed as mainline, its
    creates at 4096 and 6144 (seen below the last batch start shown) read as a mismatch; it is a
    relative whose rules the spec does not cover, so nothing is settled and no mainline build
    range is dated from it."""
    log = DATA / "logs" / "020_pr17428-granite-fork-pp-checkpoints-of-256.log"
    v = validate_log(log)
    assert v.fork == {"name": "unmerged llama.cpp PR #17428 branch", "line": 3, "modelled": False}
    assert v.decisions and all(d.status == "unknown" for d in v.decisions) and v.build_range == []
    r = CliRunner().invoke(app, ["explain", str(log)])
    assert r.exit_code == 0 and "PR #17428" in r.stdout


def test_a_story_names_which_decisions_the_excerpt_leaves_open():
    """015 ends inside its prompt: what it created there is checked (349, placed by its batch),
    what it erased is not; the story says which, not that the task went unchecked."""
    ex = explain_log(DATA / "logs" / "015_opencode15059-qwen35-router-task0-create.log")
    (st,) = ex.tasks
    assert st.created == [349] and st.simulator["created"] == "agreed"
    assert st.text.endswith("created 349. [not checked: what it erased: the prompt was not finished "
                            "inside the log]")


def test_ollama_runner_wording_is_recognised(tmp_path):
    from ckptsim.ingest.llama_log import _fork_of
    assert _fork_of('time=2026-05-01T10:00:00Z level=INFO source=runner.go:912 msg="llama runner started"') \
        == "ollama"
    assert _fork_of("slot update_slots: id  0 | task 3 | created context checkpoint 1 of 8 "
                    "(pos_min = 9, pos_max = 9, n_tokens = 10, size = 0.2 MiB)") == ""


def test_prompt_length_from_progress_lines(tmp_path):
    """An excerpt with only progress lines (as corpus log 025: 'prompt processing, n_tokens = 36864,
    progress = 0.51'): the task is no longer left out; its length is an estimate (36864 / 0.51 ->
    72282, from the furthest line: 57344 / 0.79 = 72587) and is told as 'about'."""
    log = tmp_path / "x.log"
    log.write_text(
        "slot print_timing: id  0 | task 22504 | prompt processing, n_tokens =  36864, progress = 0.51, "
        "t =  13.50 s / 2730.53 tokens per second\n"
        "slot print_timing: id  0 | task 22504 | prompt processing, n_tokens =  57344, progress = 0.79, "
        "t =  22.80 s / 2515.49 tokens per second\n")
    ex = explain_log(log)
    assert not ex.left_out and len(ex.tasks) == 1
    t = ex.tasks[0]
    assert t.n_prompt == round(57344 / 0.79) and t.length_inferred and "prompt about 72,587" in t.text
    assert "no loss can be counted" in ex.verdict


def test_a_task_without_length_still_gets_its_story(tmp_path):
    """Corpus log 019's two lines (a full re-processing and an erase, no prompt length)."""
    log = tmp_path / "x.log"
    log.write_text(
        "slot update_slots: id  0 | task 3666 | forcing full prompt re-processing due to lack of cache data "
        "(likely due to SWA or hybrid/recurrent memory, see https://github.com/ggml-org/llama.cpp/pull/13194"
        "#issuecomment-2868343055)\n"
        "slot update_slots: id  0 | task 3666 | erased invalidated context checkpoint (pos_min = 5049, "
        "pos_max = 5049, n_swa = 1, size = 143.938 MiB)\n")
    ex = explain_log(log)
    assert not ex.tasks and len(ex.left_out) == 1
    assert "whole prompt was re-processed" in ex.left_out[0]["text"] and "its prompt length" in ex.verdict


def test_the_readme_explain_excerpt_is_what_explain_prints():
    # README's "Diagnose your server" quotes `ckptsim explain` on 009: its task 23 story must be
    # the command's own words (whitespace aside), so the README stays true
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = readme.split("## Diagnose your server", 1)[1].split("```", 2)[1]
    story = " ".join(block.split("...")[0].split())
    assert story.startswith("task 23 (line 93, slot 3)")
    ex = explain_log(DATA / "logs" / "009_repo-qwen36-27b-mtp-docker-1slot-restore-erase-cycle.log")
    said = " ".join(" ".join(t.text for t in ex.tasks).split())
    assert story in said
    assert "reproduces 25 of 25 decisions" in ex.verdict
