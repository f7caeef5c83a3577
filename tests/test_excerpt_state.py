"""Excerpts (issue #12, item 1): the slot state before a log starts, read off the first task's lines.

The restore scan names the checkpoints it checks (newest first, down to the one restored), the
invalidation names the ones past n_past, "created ... N of M" counts the list (spec §2.2, §2.4,
§6). ``validate`` stands the unseen rest in with every history those lines allow and settles a
decision only where all of them agree. Real logs: tests/data/logs (corpus copies, PROVENANCE.md)
and tests/data/conformance (whole logs of real servers, cut here into excerpts).
"""
from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import pytest

from ckptsim.ingest.log_trace import SlotSeed, excerpt_seeds, read_tasks
from ckptsim.validate import config_from_log, validate_log

DATA = Path(__file__).parent / "data"


def _log(prefix: str) -> Path:
    return next((DATA / "logs").glob(prefix + "_*.log"))


def _by_decision(v) -> dict[str, object]:
    return {d.decision: d for d in v.decisions}


def test_a_reset_names_every_checkpoint_and_settles_the_task() -> None:
    # 010: "checking checkpoint with [1145, 1145] against 3" and [637, 637], then a reset and two
    # "erased invalidated" lines: the scan lists every checkpoint when none is chosen.
    lt = read_tasks(_log("010"))
    seeds, why_not = excerpt_seeds(lt)
    (seed,) = seeds.values()
    assert seed.listed == (638, 1146) and seed.n_older == (0, 0) and not why_not
    v = validate_log(_log("010"))
    assert {d.decision: d.status for d in v.decisions} == dict.fromkeys(
        ("cache_n", "restored", "full", "created", "erased"), "agreed")
    d = _by_decision(v)
    assert d["erased"].logged == [638, 1146] and d["created"].logged == [750, 1258]


def test_a_scan_that_contradicts_the_rule_is_a_mismatch(tmp_path: Path) -> None:
    # The same lines with n_past = 700: checkpoint 638 lies at or below it, so the server's rule
    # (spec §2.2) restores it; a log that shows a reset instead must be flagged, not explained away.
    text = _log("010").read_text().replace("against 3...", "against 700...")
    p = tmp_path / "contradicts.log"
    p.write_text(text)
    v = validate_log(p)
    d = _by_decision(v)
    assert d["full"].status == "mismatch" and d["full"].logged is True and d["full"].simulated is False
    assert d["restored"].status == "mismatch" and d["restored"].simulated == 638


def test_the_probe_line_gives_the_slot_length() -> None:
    # 003: "n_past = 70, slot.prompt.tokens.size() = 2775", no scan line (none held), a reset
    seeds, _ = excerpt_seeds(read_tasks(_log("003")))
    (seed,) = seeds.values()
    assert seed.n_cache == 2775 and seed.n_past == 70 and seed.listed == ()
    v = validate_log(_log("003"))
    assert all(d.status == "agreed" for d in v.decisions) and len(v.decisions) == 5
    assert _by_decision(v)["full"].logged is True


def test_the_created_count_leaves_no_older_checkpoint() -> None:
    # 001: the scan checks [60028, 60028] against 60120 and restores it; "created context
    # checkpoint 2 of 8" after it: the restored one was the only checkpoint left.
    seeds, _ = excerpt_seeds(read_tasks(_log("001")))
    (seed,) = seeds.values()
    assert seed.listed == (60029,) and seed.n_older == (0, 0)
    d = _by_decision(validate_log(_log("001")))
    assert d["restored"].status == "agreed" and d["restored"].logged == 60029
    assert d["cache_n"].status == "agreed" and d["full"].status == "agreed"
    # the excerpt is cut before the prompt finished: where it would have placed more is not known
    assert d["created"].status == "unknown"


def _lines(name: str) -> list[str]:
    with gzip.open(DATA / "conformance" / name, "rt") as f:
        return f.read().splitlines(keepends=True)


def _cuts(lines: list[str]) -> list[tuple[int, str]]:
    """Excerpts as users paste them: from a task's slot selection on, with no start-up line that
    would show the slots starting empty (settings lines are kept; the test passes the rest)."""
    first = next(i for i, ln in enumerate(lines) if "get_availabl" in ln or "processing task" in ln)
    head = [ln for ln in lines[:first] if "n_slots" not in ln and "new slot" not in ln]
    out = []
    for i, ln in enumerate(lines):
        if "processing task" not in ln or i <= first + 1:
            continue
        j = i
        while j > first and any(s in lines[j - 1] for s in ("get_availabl", "launch_slot_", "srv")):
            j -= 1
        out.append((j, "".join(head + lines[j:])))
    return out


@pytest.mark.parametrize("name,version", [
    ("b11549-supersede-after-fifo.server.log.gz", "b11549"),
    ("b9538-chat-user-turns.server.log.gz", "b9538"),
    ("b9713-slots-np2.server.log.gz", "b9713"),
])
def test_excerpts_of_a_real_log_never_contradict_it(tmp_path: Path, name: str, version: str) -> None:
    # Every excerpt of a log the simulator replays in full (100% in `conformance`) must agree on
    # every decision it settles; what depends on the cut-off history must come out unknown.
    whole = tmp_path / "whole.log"
    lines = _lines(name)
    whole.write_text("".join(lines))
    full = validate_log(whole, version=version)
    assert full.known and all(d.status == "agreed" for d in full.known)
    cfg = dataclasses.asdict(config_from_log(read_tasks(whole).settings))
    min_step = read_tasks(whole).settings.get("min_step")
    settled = total = 0
    for j, text in _cuts(lines):
        p = tmp_path / f"cut{j}.log"
        p.write_text(text)
        v = validate_log(p, version=version, overrides=cfg, min_step=min_step)
        bad = [(d.task, d.decision, d.logged, d.simulated) for d in v.decisions if d.status == "mismatch"]
        assert not bad, f"excerpt from line {j + 1}: {bad}"
        # each settled decision is one the whole log shows the same way
        logged = {(d.task, d.decision): d.logged for d in full.decisions}
        assert all(logged[(d.task, d.decision)] == d.logged for d in v.known)
        settled += len(v.known)
        total += len(v.decisions)
    # the first tasks' scans and counts settle most of what the excerpts show
    assert total and settled / total > 0.5, (settled, total)


def test_the_stand_ins_span_what_the_lines_leave_open() -> None:
    # 3 older checkpoints the lines count but do not name, below the oldest scanned one (700) and
    # above one FIFO named (100): each stand-in keeps the named ones and puts the 3 in (100, 699]
    seed = SlotSeed(task=1, n_cache=1000, n_past=800, listed=(100, 700, 900), n_older=(3, 3), bound=699,
                    evidence="counted", above=100)
    vs = seed.variants()
    assert len(vs) == 3 and len(set(vs)) == 3
    for v in vs:
        older = sorted(set(v) - {100, 700, 900})
        assert len(v) == 6 and len(older) == 3 and all(100 < k <= 699 for k in older)
    assert min(min(set(v) - {100, 700, 900}) for v in vs) == 101      # packed at the bottom
    assert max(max(set(v) - {100, 700, 900}) for v in vs) == 699      # packed under the scan
    # a count known only as a range: the fewest and the most are both tried
    ranged = dataclasses.replace(seed, n_older=(0, 2))
    assert {len(v) for v in ranged.variants()} == {3, 5}


def test_a_later_user_start_below_the_excerpt_leaves_placement_open(tmp_path: Path) -> None:
    # b9538 chat turns cut at the second task: a later task resumes at 1738, below everything
    # the excerpt prefilled, where a user message start (which places a checkpoint, spec §2.3)
    # may sit unseen; its placement is left open, and says why.
    lines = _lines("b9538-chat-user-turns.server.log.gz")
    whole = tmp_path / "whole.log"
    whole.write_text("".join(lines))
    settings = read_tasks(whole).settings
    _, text = _cuts(lines)[1]
    p = tmp_path / "cut.log"
    p.write_text(text)
    v = validate_log(p, version="b9538", overrides=dataclasses.asdict(config_from_log(settings)),
                     min_step=settings.get("min_step"))
    assert not [d for d in v.decisions if d.status == "mismatch"]
    open_ = [d for d in v.decisions if d.status == "unknown"]
    assert open_ and all(d.decision in ("created", "erased") and "user-message starts" in d.why for d in open_)
    # restores of the same tasks are settled
    assert {d.decision for d in v.known if d.task in {o.task for o in open_}} >= {"cache_n", "restored"}


def test_a_line_cut_mid_way_gives_the_fields_before_the_cut(tmp_path: Path) -> None:
    # 010 pasted up to the middle of its second 'created' line (real text, cut inside "size = 50.251")
    text = _log("010").read_text()
    line = next(ln for ln in text.splitlines() if "created context checkpoint 2 of 32" in ln)
    cut = text[:text.index(line) + line.index("size = 50.2") + len("size = 50.2")]
    p = tmp_path / "cut.log"
    p.write_text(cut)
    from ckptsim.ingest.llama_log import FactKind, parse_log
    parsed = parse_log(p)
    assert parsed.stats.truncated_last_line and parsed.stats.cut_line_used
    last = parsed.of(FactKind.CREATED)[-1]
    assert last.v["n_tokens"] == 1258 and last.v["index"] == 2 and "size_mib" not in last.v
    # a number the cut may have shortened is not trusted: "n_tokens = 12" of 1258 is dropped
    p.write_text(text[:text.index(line) + line.index("n_tokens = 12") + len("n_tokens = 12")])
    parsed = parse_log(p)
    assert parsed.of(FactKind.CREATED)[-1].v["n_tokens"] == 1258     # from pos_max, not "12"
    assert not parsed.of(FactKind.CREATED)[-1].v["n_tokens_logged"]
