"""`ckptsim conformance`: the fixed workload matrix against a real llama.cpp server (issue 11)."""
from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ckptsim.cli import app
from ckptsim.live.conformance import build_of_xllamacpp, matrix

runner = CliRunner()


def test_matrix_is_seeded_and_names_its_rules():
    """The same seed gives the same requests; every workload says which spec rules it exercises,
    and the matrix covers §2.2, §2.3, §3 and §5 with the flags those rules need."""
    a, b = matrix(0), matrix(0)
    assert [w.steps for w in a] == [w.steps for w in b]
    assert [w.steps for w in matrix(1)] != [w.steps for w in a]
    assert len({w.name for w in a}) == len(a) >= 12
    rules = " ".join(w.rules for w in a)
    for sec in ("§2.2", "§2.3", "§3", "§5"):
        assert sec in rules
    flags = [w.flags for w in a]
    assert {"n_parallel": 2, "n_ctx": 8192} in flags
    assert any(f.get("cache_ram_mib") == 0 for f in flags) and any(f.get("ctx_checkpoints") == 3 for f in flags)
    assert any(f.get("n_ubatch") == 64 for f in flags) and any(f.get("checkpoint_min_step") == 1024 for f in flags)
    for w in a:                       # token prompts fit one slot's context with room for output
        n_ctx_slot = w.flags.get("n_ctx", 8192) // w.flags.get("n_parallel", 1)
        assert all(len(s.prompt) < n_ctx_slot - 8 for s in w.steps)


def test_build_of_a_wheel_version():
    assert build_of_xllamacpp("2026.10.11549") == "b11549"
    assert build_of_xllamacpp("2026.5.9093") == "b9093"
    assert build_of_xllamacpp("0.2.14") is None        # the 0.x series: dated from the log's wording
    # a post-release of the same build (pip lists 2026.4.8672.1 beside 2026.4.8672), not 'b1'
    assert build_of_xllamacpp("2026.4.8672.1") == "b8672"
    assert build_of_xllamacpp("0.1.26") is None


def test_usage_errors_are_one_line(tmp_path):
    r = runner.invoke(app, ["conformance", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "exactly one of" in r.output
    r = runner.invoke(app, ["conformance", "--url", "http://127.0.0.1:9"])
    assert r.exit_code == 2 and "--log" in r.output
    r = runner.invoke(app, ["conformance", "--server", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "no such llama-server binary" in r.output
    r = runner.invoke(app, ["conformance", "--xllamacpp", "2026.10.11549", "--workloads", "truncate,bogus"])
    assert r.exit_code == 2 and "unknown bogus" in r.output and "extend" in r.output


def test_existing_output_folder_is_not_reused_without_force(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("x")
    r = runner.invoke(app, ["conformance", "--xllamacpp", "2026.10.11549", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--force" in r.output
    assert (tmp_path / "o" / "keep.txt").read_text() == "x"


def test_a_server_that_dies_is_reported_with_its_workload(tmp_path):
    """A server that exits at start-up: each workload is reported as failed, by name, exit 1, and
    the document still comes out (what was measured is kept)."""
    pytest.importorskip("gguf")
    fake = tmp_path / "llama-server"
    fake.write_text("#!/bin/sh\necho 'version: 11549 (abc1234)'\necho 'fatal: no GPU' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / "o"
    r = runner.invoke(app, ["conformance", "--server", str(fake), "--workloads", "truncate,extend",
                            "--out", str(out), "--json", "--cache-dir", str(tmp_path / "cache")])
    assert r.exit_code == 1
    doc = json.loads((out / "conformance.json").read_text())
    assert doc["build"] == "b11549"
    assert [w["name"] for w in doc["workloads"]] == ["truncate", "extend"]
    assert all("server failed in workload" in e for e in doc["errors"]) and len(doc["errors"]) == 2
    assert "truncate" in doc["errors"][0] and "exited during start-up" in doc["errors"][0]


@pytest.mark.live
def test_fixed_matrix_on_the_installed_build(tmp_path):
    """The whole matrix against the xllamacpp build installed here (b11549): every known decision
    agrees, none is unknown, >= 200 are known and most of them are not 'nothing happened'; every
    request and log line is kept."""
    pytest.importorskip("gguf")
    xl = pytest.importorskip("xllamacpp", reason="xllamacpp (pip install ckptsim[live]) is not installed")
    from importlib.metadata import version
    v = version("xllamacpp")
    out = tmp_path / "conf"
    r = runner.invoke(app, ["conformance", "--xllamacpp", v, "--out", str(out), "--json"])
    doc = json.loads(r.stdout)
    assert r.exit_code == 0, (doc["mismatches"], doc["errors"])
    assert set(doc) >= {"build", "server", "workloads", "tasks", "decisions", "agreed", "agreement",
                        "unknown", "mismatches"}
    assert doc["agreement"] == 1.0 and doc["decisions"] >= 200
    assert doc["unknown"] < 0.05 * (doc["decisions"] + doc["unknown"])
    assert doc["nothing_happened"] < doc["decisions"] / 2
    wls = {w.name: w for w in matrix(0)}
    for w in doc["workloads"]:
        assert w["tasks"] == len(wls[w["name"]].steps) and w["decisions"] > 0 and not w["mismatches"]
        assert (out / f"{w['name']}.server.log").stat().st_size > 0
        sent = (out / f"{w['name']}.requests.jsonl").read_text().splitlines()
        assert len(sent) == len(wls[w["name"]].steps) and "timings" in json.loads(sent[0])
    del xl


def test_supersede_comes_after_the_fifo_erase():
    """Found by `conformance --random` on b11549 and shrunk to two requests (the real log is
    tests/data/conformance/b11549-supersede-after-fifo.server.log.gz): -ctxcp 2 -b 512 -ub 128
    --checkpoint-min-step 0, the same 852-token prompt twice. The second restores 848, and the
    server logs "erasing old ... 720" (FIFO: the list is full), then "superseding ... 848", then
    "created ... 1 of 2": both are erased (spec §2.4 order: (a), FIFO, (c)). Superseding first
    would leave room and keep 720."""
    from ckptsim.validate import validate_log
    log = Path(__file__).parent / "data" / "conformance" / "b11549-supersede-after-fifo.server.log.gz"
    doc = validate_log(log, version="b11549").to_json()
    assert doc["tasks"] == 2 and doc["agreement"] == 1.0 and doc["decisions"] == 10
    from ckptsim.ingest.log_trace import trace_from_log
    assert trace_from_log(log).requests[1].observed["erased"] == [720, 848]


@pytest.mark.parametrize("name,build,erased", [("b8156-xllamacpp-0.2.12", "b8156", [1488]),
                                               ("b8352-xllamacpp-0.2.13", "b8352", [1488, 1996])])
def test_invalidation_runs_for_every_request_before_b8400(name, build, erased):
    """Found by the matrix on xllamacpp 0.2.12 (prints build 8156) and 0.2.13 (build 8352), the
    first two requests of `cache-ram-off` (tests/data/conformance/NAME-cache-ram-off.server.log.gz):
    -c 8192 --cache-ram 0, session s1 (2000 tokens) then s2 (2200 tokens, nothing in common). The
    second task logs "erased invalidated context checkpoint" (n_swa = 1) for s1's checkpoints with
    no restore and no search: the pass ran for n_past == 0 too. The model had it run only after a
    search before b8400 (#20671) and kept them (30 and 40 mismatches on these two builds)."""
    from ckptsim.ingest.log_trace import trace_from_log
    from ckptsim.validate import validate_log
    log = Path(__file__).parent / "data" / "conformance" / f"{name}-cache-ram-off.server.log.gz"
    lt = trace_from_log(log)
    assert lt.requests[1].observed["cache_n"] == 0 and lt.requests[1].observed["erased"] == erased
    doc = validate_log(log).to_json()
    assert f"version={build}" in doc["policy"] and doc["agreement"] == 1.0 and doc["decisions"] == 10


def test_prompt_cache_before_b9908_trims_only_after_the_load():
    """Found by the matrix on xllamacpp 0.2.11 (b7964, the lfm2 model), `slots-np4-cache-evict`
    (-np 4 --cache-ram 2), its first 8 requests (tests/data/conformance/b7964-xllamacpp-0.2.11-lfm2-
    slots-np4-cache-evict.server.log.gz; the request/response echo lines are left out). Request 6
    (session 0 + 200 tokens) gets slot 1 by LRU: line 1041 saves its 1501 tokens (0.756 MiB) next to
    1201 (0.612) and 1351 (0.687), 2.055 MiB against a 2 MiB limit, yet line 1043 loads the
    1201-token entry and restores 1136; only then does `update` trim. The model popped the oldest
    entry while saving (#25070, b9908) and so re-processed the prompt: 18 mismatches."""
    from ckptsim.ingest.log_trace import trace_from_log
    from ckptsim.server import ServerRules
    from ckptsim.validate import validate_log
    log = Path(__file__).parent / "data" / "conformance" / "b7964-xllamacpp-0.2.11-lfm2-slots-np4-cache-evict.server.log.gz"
    obs = trace_from_log(log).requests[6].observed
    assert (obs["cache_n"], obs["restored"]) == (1136, 1136)
    doc = validate_log(log).to_json()
    assert "version=b7964" in doc["policy"] and doc["agreement"] == 1.0 and doc["decisions"] == 40
    assert not ServerRules(9907).cache_alloc_makes_room and ServerRules(9908).cache_alloc_makes_room


@pytest.mark.live
def test_random_mode_runs_and_writes_the_document(tmp_path):
    """--random N draws N traces and flag sets; each runs on its own server and is validated."""
    pytest.importorskip("gguf")
    pytest.importorskip("xllamacpp", reason="xllamacpp (pip install ckptsim[live]) is not installed")
    from importlib.metadata import version
    out = tmp_path / "r"
    r = runner.invoke(app, ["conformance", "--xllamacpp", version("xllamacpp"), "--random", "2", "--seed", "5",
                            "--out", str(out), "--json"])
    doc = json.loads(r.stdout)
    assert [w["name"] for w in doc["workloads"]] == ["random-5-0", "random-5-1"]
    assert doc["decisions"] > 0 and not doc["errors"]
    assert r.exit_code == (1 if doc["mismatches"] else 0)
    for w in doc["workloads"]:
        assert (w.get("repro") is not None) == bool(w["mismatches"])


def test_kv_unified_read_from_the_context_line():
    """b9713 prints no "initializing, n_slots = ..., kv_unified" line, only llama_context's
    "kv_unified    = false" (real log: tests/data/conformance/b9713-slots-np2.server.log.gz,
    -np 2). Read there, the idle slot keeps its checkpoints (the server erases them as invalidated
    later, task 32); assumed unified, the replay cleared them and missed 9 erasures."""
    from ckptsim.ingest.log_trace import trace_from_log
    from ckptsim.validate import validate_log
    log = Path(__file__).parent / "data" / "conformance" / "b9713-slots-np2.server.log.gz"
    lt = trace_from_log(log)
    assert lt.log.settings["kv_unified"] is False and lt.log.settings["n_slots"] == 2
    doc = validate_log(log, version="b9713").to_json()
    assert doc["agreement"] == 1.0 and doc["decisions"] >= 35
    assert any(r.observed["erased"] == [988, 1496] for r in lt.requests)


def test_a_build_that_knows_no_generated_architecture_says_which_it_needs(tmp_path):
    """A build that does not know qwen35 gets the lfm2 model (xllamacpp 0.2.7-0.2.11 load only
    that); one that knows neither stops at the first workload, and the error names both. A fake
    llama-server prints llama.cpp's own line ("unknown model architecture: 'qwen35'") and exits."""
    from ckptsim.live.conformance import run_matrix
    starts = tmp_path / "starts"
    fake = tmp_path / "llama-server"
    fake.write_text("#!/bin/sh\necho start >> " + str(starts) + "\n"
                    "case \"$2\" in *lfm2*) a=lfm2;; *) a=qwen35;; esac\n"
                    "echo \"llama_model_load: error loading model: error loading model architecture: "
                    "unknown model architecture: '$a'\"\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    models = []
    for arch in ("qwen35", "lfm2"):
        (tmp_path / f"tiny-{arch}.gguf").write_bytes(b"GGUF")
        models.append((arch, tmp_path / f"tiny-{arch}.gguf"))
    res = run_matrix(matrix(0)[:3], tmp_path / "out", backend=str(fake), python=None, model=models, build="b8000")
    assert len(res) == 1 and res[0].sent == 0 and len(starts.read_text().splitlines()) == 2
    assert "knows none of the architectures qwen35, lfm2" in res[0].error and "it needs one of them" in res[0].error


def test_a_build_for_other_cpus_is_named(tmp_path):
    """xllamacpp 2026.4.8672 dies of SIGILL here (built for AVX-512): the error says so."""
    from ckptsim.live.server import LiveServer, ServerFlags
    fake = tmp_path / "llama-server"
    fake.write_text("#!/bin/sh\nkill -ILL $$\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    with pytest.raises(RuntimeError, match="illegal instruction.*CPU features"):
        LiveServer(model, tmp_path / "s.log", ServerFlags(), backend=str(fake)).start()


@pytest.mark.slow
@pytest.mark.live
@pytest.mark.parametrize("wheel,build,arch", [("2026.9.11063", "b11063", "qwen35"), ("2026.6.9538", "b9538", "qwen35"),
                                              ("0.2.11", "b7964", "lfm2"), ("0.2.5", "b7079", "lfm2")])
def test_matrix_on_older_builds(tmp_path, wheel, build, arch):
    """The matrix on earlier builds, each wheel installed into a cached environment of its own
    (needs the package index): one on each side of #28302; the last-user era; b7964, which cannot
    load qwen35 and runs the lfm2 model (and kept the prompt-cache entry #25070 later evicts);
    b7079, whose wheel has no HTTP server (serve.py answers for it). The whole build list:
    python bench/conformance_all.py."""
    pytest.importorskip("gguf")
    out = tmp_path / wheel
    r = runner.invoke(app, ["conformance", "--xllamacpp", wheel, "--out", str(out), "--json"])
    if r.exit_code != 0 and "installing xllamacpp" in r.output:
        pytest.skip(f"xllamacpp=={wheel} could not be installed: {r.output.strip()[-200:]}")
    doc = json.loads(r.stdout)
    assert doc["build"] == build       # from the version, or (0.x wheels) the build the log prints
    assert doc["agreement"] == 1.0 and doc["decisions"] >= 400, doc["mismatches"][:3]
    assert doc["unknown"] < 0.05 * (doc["decisions"] + doc["unknown"])
    assert {w.get("model_arch") for w in doc["workloads"]} == {arch}
    # b7079 aborts when the whole cache is resent (GGML_ASSERT(!slot.is_processing()), server.cpp:2875
    # in 0.2.6's log): the run names it, in that workload only; the other builds run everything
    died = {w["name"]: w["error"] for w in doc["workloads"] if w.get("error")}
    if build == "b7079":
        assert list(died) == ["extend-answer"] and "GGML_ASSERT(!slot.is_processing()) failed" in died["extend-answer"]
    else:
        assert not died


def test_shrink_drops_requests_while_the_mismatch_stays():
    """A mismatch that needs requests 1 and 3 of 0..5: shrinking keeps exactly those two."""
    from ckptsim.live.conformance import Step, Workload, shrink
    wl = Workload("w", "", tuple(Step(prompt=(i,)) for i in range(6)))
    small, runs = shrink(wl, lambda t: {(1,), (3,)} <= {s.prompt for s in t.steps})
    assert [s.prompt for s in small.steps] == [(1,), (3,)] and runs == 6


@pytest.mark.live
def test_url_mode_checks_a_server_the_user_started(tmp_path):
    """--url --log: the workloads that need no flags of their own run on the user's server; the
    decisions of the requests it sent (not of earlier tasks in the log) are attributed to them."""
    pytest.importorskip("gguf")
    pytest.importorskip("xllamacpp", reason="xllamacpp (pip install ckptsim[live]) is not installed")
    from ckptsim.live.server import LiveServer, ServerFlags
    from ckptsim.live.tinymodel import preset, write_model
    model = write_model(tmp_path / "tiny.gguf", preset("tiny"))
    log = tmp_path / "server.log"
    with LiveServer(model, log, ServerFlags(n_ctx=8192)) as srv:
        r = runner.invoke(app, ["conformance", "--url", srv.url, "--log", str(log), "--out", str(tmp_path / "o"),
                                "--workloads", "truncate,extend,min-step", "--json"])
    doc = json.loads(r.stdout)
    assert [w["name"] for w in doc["workloads"]] == ["truncate", "extend"]    # min-step needs its own flags
    assert doc["tasks"] == 6 + 7 and doc["decisions"] == 5 * 13 and doc["agreement"] == 1.0, doc["mismatches"]


@pytest.mark.parametrize("build,searched_on_extension", [("b9294", True), ("b9538", False)])
def test_pure_extension_with_the_answer_kept(build, searched_on_extension):
    """The matrix's `extend-answer` workload on xllamacpp 2026.5.9294 and 2026.6.9538
    (tests/data/conformance/BUILD-extend-answer.server.log.gz, request echo lines left out). Each
    prompt repeats the one answer token the slot kept ("stop processing: n_tokens = 1501" after a
    1500-token prompt), so n_past == L with new tokens (spec §2.2). b9294 searches anyway (line 209
    "Checking checkpoint with [1495, 1495] against 1500", line 210 restores 1496: #23280's
    thold = n_past - 1); b9538 does not (line 212 "cached n_tokens = 1501"): #24110, merged as
    b9509, is in that wheel though the spec dates it by its release tag, b9542. Replayed with the
    old boundary, b9538 mismatched on 10 of 40 decisions."""
    from ckptsim.ingest.log_trace import trace_from_log
    from ckptsim.server import ServerRules
    from ckptsim.validate import validate_log
    log = Path(__file__).parent / "data" / "conformance" / f"{build}-extend-answer.server.log.gz"
    obs = trace_from_log(log).requests[1].observed
    assert (obs["cache_n"], obs["restored"]) == ((1496, 1496) if searched_on_extension else (1501, -1))
    doc = validate_log(log, version=build).to_json()
    assert doc["agreement"] == 1.0 and doc["decisions"] == 40 and doc["unknown"] == 0
    assert ServerRules(int(build[1:])).searches_every_request == searched_on_extension
    assert ServerRules(9508).searches_every_request and not ServerRules(9509).searches_every_request


def test_a_failed_truncate_is_a_full_reprocess():
    """xllamacpp 2026.5.9093 (prints build 0), `extend-answer`'s fourth prompt is exactly what the
    slot holds (n_past == T == L, tests/data/conformance/b9093-extend-answer.server.log.gz): "need
    to evaluate at least 1 token", "n_past was set to 2302", "n_tokens = 2302, memory_seq_rm [2302,
    end)", then "failed to truncate tokens with position >= 2302 - clearing the memory" and the
    whole prompt is processed again (spec §3, before #23280). The parser took the seq_rm line as
    2302 tokens kept; the simulator (full re-processing) was right."""
    from ckptsim.ingest.log_trace import trace_from_log
    from ckptsim.validate import validate_log
    log = Path(__file__).parent / "data" / "conformance" / "b9093-extend-answer.server.log.gz"
    obs = [r.observed for r in trace_from_log(log).requests]
    resend = next(o for o in obs if o.get("full_reprocess"))
    assert resend["cache_n"] == 0 and resend["restored"] == -1
    assert sum(bool(o.get("full_reprocess")) for o in obs) == 1
    doc = validate_log(log, version="b9093").to_json()
    assert doc["agreement"] == 1.0 and doc["decisions"] == 40


def test_a_server_abort_is_named_from_its_log():
    """xllamacpp 0.2.7 (b7376, lfm2), `extend-answer`'s fourth prompt resends the whole cache
    (tests/data/conformance/b7376-xllamacpp-0.2.7-lfm2-extend-answer.server.log.gz): after "failed
    to truncate tokens with position >= 2302 - clearing the memory" the server dies on
    "server-context.cpp:943: GGML_ASSERT(!slot.is_processing()) failed" (0.2.5/0.2.6, b7079, the
    same in server.cpp; 0.2.8, b7551, re-processes instead). The run names the assertion, and the
    tasks before it still count."""
    from ckptsim.live.conformance import _why, server_abort
    from ckptsim.validate import validate_log
    log = Path(__file__).parent / "data" / "conformance" / "b7376-xllamacpp-0.2.7-lfm2-extend-answer.server.log.gz"
    assert server_abort(log).startswith("server-context.cpp:943: GGML_ASSERT(!slot.is_processing()) failed")
    why = _why(OSError("Remote end closed connection without response"), log)
    assert why.startswith("the server aborted: server-context.cpp:943") and "Remote end closed" in why
    doc = validate_log(log, version="b7376").to_json()
    assert doc["agreement"] == 1.0 and doc["decisions"] >= 15
    ok = Path(__file__).parent / "data" / "conformance" / "b9093-extend-answer.server.log.gz"
    assert server_abort(ok) is None


def test_before_17009_the_last_position_truncates():
    """xllamacpp 0.2.3 (b6751, lfm2), `extend-answer`'s fourth prompt resends the whole cache
    (tests/data/conformance/b6751-xllamacpp-0.2.3-lfm2-extend-answer.server.log.gz): "n_past was
    set to 2302", "n_past = 2302, memory_seq_rm [2302, end)", "prompt done, n_past = 2303,
    n_tokens = 1" -- no failed truncate, one token decoded again. Before #17009 (b7011) the
    recurrent seq_rm refused only p0 < pos (the state's last position), so starting at it
    succeeds; the spec dates the failure from b6685, which the model followed (2 mismatches on
    b6751 and b6900)."""
    from ckptsim.ingest.log_trace import trace_from_log
    from ckptsim.server import RULE_CHANGES, ServerRules
    from ckptsim.validate import validate_log
    log = Path(__file__).parent / "data" / "conformance" / "b6751-xllamacpp-0.2.3-lfm2-extend-answer.server.log.gz"
    obs = trace_from_log(log).requests[3].observed
    assert obs["cache_n"] == 2302 and not obs.get("full_reprocess")
    doc = validate_log(log).to_json()
    assert "version=b6751" in doc["policy"] and doc["agreement"] == 1.0 and doc["decisions"] == 40
    assert RULE_CHANGES["truncate_last_fails"] == (7011, "#17009")
    assert not ServerRules(7010).full_on_resend and ServerRules(7011).full_on_resend
