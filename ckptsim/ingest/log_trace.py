"""From log facts to a ckptsim trace: one request per task, prefix structure from ``n_past``.

Each task becomes a ``Request``. Its parent is the sequence the chosen slot held when the task
started (the slot's previous task, or a prompt-cache entry it loaded), and ``n_shared`` is the
logged common prefix with it, read from the first of these that the build prints::

    probe   "n_past = 8381, slot.prompt.tokens.size() = 8759"   (b6766-b9309, before any restore)
    scan    "checking checkpoint with [a, b] against 8381"      (against = n_past before the restore)
    select  " - checking sim = 0.948 (8381/8842)"               (b10184+, per candidate slot)
    rm      "cached n_tokens = 8381, memory_seq_rm [8381, end)" (after the restore: exact only if none)

What the server did is kept in ``Request.observed`` in the simulator's vocabulary
(``records.EventKind`` values), with the log line of each event, so that validation is a diff.
"""
from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..records import EventKind, Request
from ..server import ServerRules
from ..trace import TraceHeader
from .llama_log import Fact, FactKind, LogStats, check_is_log, iter_facts

# Build ranges implied by the wording of a line (spec §6). (feature, lo, hi): lo <= build <= hi.
_LATEST = 11549
_FORMAT_RANGES: dict[str, tuple[int, int]] = {
    "created_no_n_tokens": (6685, 8151),
    # restored / erased invalidated / erasing old without n_tokens (corpus 019, 030)
    "ckpt_no_n_tokens": (6685, 8151),
    "erased_old_n_tokens": (8152, _LATEST),
    "created_n_tokens": (8152, _LATEST),
    "restored_n_past": (8260, _LATEST),
    "restored_no_n_past": (8152, 8259),
    "erased_pos_next": (8393, _LATEST),
    "erased_no_pos_next": (8152, 8392),
    "probe_prompt_tokens": (6766, 9309),
    "probe_cache_tokens": (6173, 6765),
    "Checking_upper": (8218, 9828),
    "checking_lower": (9829, _LATEST),
    "every_n": (8218, 9309),
    "create_check_func": (8842, _LATEST),
    "pp_new_progress": (9151, _LATEST),
    "pp_old_progress": (6967, 9150),
    "prompt_processing_done": (8152, 9150),
    "seq_rm_cached": (9151, _LATEST),
    "seq_rm_n_tokens": (6967, 9150),
    "new_prompt_task_n_tokens": (6967, _LATEST),
    "min_spacing_startup": (9310, _LATEST),
    "f_sim_best": (10184, _LATEST),
    "sim_best": (6723, 10183),
    "check_sim": (10184, _LATEST),
    "n_gen": (10574, _LATEST),
    "spacing_erase": (9978, _LATEST),
    "superseded": (11000, _LATEST),
}


@dataclass(frozen=True)
class TaskObs:
    """What the log says about one task (one request), with the line of each fact."""

    task: int
    slot: int
    line: int                        # first line of the task (slot selection or "processing task")
    t_s: float | None
    n_prompt: int | None             # T
    n_prompt_source: str             # how T was read: new_prompt, check_sim, timings, init_sampler, inferred
    n_lcp: int | None                # common prefix with the slot's sequence before any restore
    n_lcp_source: str
    cache_n: int | None              # tokens kept after the restore decision (the server's cache_n)
    cache_n_source: str              # restored, full, seq_rm, need_one, prompt_n, empty, inferred
    restored: int                    # n_tokens of the restored checkpoint, -1 none
    restored_line: int
    full_reprocess: bool
    full_line: int
    searched: bool                   # a probe / scan / restore / reset line was printed
    created: tuple[tuple[int, float, int], ...]          # (n_tokens, MiB, line)
    erased: tuple[tuple[str, int, int], ...]             # (EventKind value, n_tokens, line)
    cache: tuple[tuple[str, int, int], ...]              # prompt-cache events (kind, n_tokens, line)
    selected: str                    # lcp | lru | id | ""
    prompt_ms: float | None
    prompt_n: int | None
    gen_n: int | None
    n_cache_after: int | None        # "stop processing: n_tokens" = the slot's cache afterwards
    t_stop_s: float | None           # when that line was written: the slot is free from then on
    cancelled: bool
    complete: bool                   # prefill finished inside the log (timings or release seen)
    user_starts: tuple[int, ...]
    parent_task: int                 # task id of the sequence the slot held (-1: none or unknown)
    parent_n_cache: int              # its length (the slot's cache length L)
    history_known: bool = True       # the slot's whole history (tokens, checkpoints) is in the log
    # For excerpts (issue #12, item 1): what the task's own lines show of the slot's state before it.
    checked: tuple[int, ...] = ()    # n_tokens of the checkpoints 'checking checkpoint with [a, b]' named
    created_index: tuple[int, ...] = ()   # the N of 'created context checkpoint N of M', per created line
    n_cache_probe: int | None = None # slot.prompt.tokens.size() from the probe line (b6766-b9309)
    seed_root: int = -1              # first task of this slot's unseen history (-1: none or unseedable)
    started_in_log: bool = True      # the task's start (selection, 'processing task', new prompt) is in the log
    # the full re-processing came from a failed truncate (b7011-b9230, n_past == T == L), not a
    # search: no scan ran, and the slot's checkpoints outlive it
    truncate_failed: bool = False
    # The slot's checkpoint count and length at the restore decision as the prompt-cache listing
    # shows them (spec §5: an entry holds a copy of the slot's checkpoints; loading one replaces
    # the slot's tokens and checkpoints): the entry this task's slot was saved to (and kept), or
    # the entry it loaded. None where the log lists no such entry.
    n_ckpt_held: int | None = None
    n_ckpt_held_line: int = -1       # the listing line that gives it
    n_cache_held: int | None = None  # the slot's length then (that entry's tokens)
    first_batch: int | None = None   # the first seq_rm line's position: where the excerpt's view of the prefill begins
    abbreviated: bool = False        # lines without their "id N | task M |" prefix: what is absent may be left out
    prefilling: bool = False         # a seq_rm or progress line shows the prompt being processed
    # Every checkpoint this task created below this position is in the log (the prompt may not
    # finish inside it): a create holds the state at its batch's start and is logged after that
    # batch's seq_rm line, so all below the last batch start shown, and up to the last create
    # shown, were logged. None: no prefill line after the restore decision.
    seen_to: int | None = None
    # A batch of the prompt ran (a progress line, a second seq_rm line, a create, or the end):
    # before b9191 a "n_past was set to T-1" and its seq_rm line can still end in a failed
    # truncate that clears the memory (spec §3), so until then that restore is not decided.
    batch_ran: bool = True
    # An inferred T that the progress lines bound: (lo, hi), both ends possible
    n_prompt_range: tuple[int, int] | None = None

    def observed(self, visible: bool) -> dict:
        """The ``obs`` dict stored in the trace (EventKind vocabulary; lines for every event)."""
        ev: list[list] = []
        if self.restored >= 0:
            ev.append([EventKind.RESTORED.value, self.restored, self.restored_line])
        if self.full_reprocess:
            ev.append([EventKind.FULL_REPROCESS.value, 0, self.full_line])
        ev += [[k, n, ln] for k, n, ln in self.erased]
        ev += [[EventKind.CREATED.value, n, ln] for n, _, ln in self.created]
        ev += [[k, n, ln] for k, n, ln in self.cache]
        return {"task": self.task, "slot": self.slot, "line": self.line,
                "visible": visible, "history_known": self.history_known, "complete": self.complete, "cancelled": self.cancelled,
                "n_prompt_source": self.n_prompt_source, "n_prompt_range": self.n_prompt_range,
                "seed_root": self.seed_root,
                "n_lcp": self.n_lcp, "n_lcp_source": self.n_lcp_source,
                "cache_n": self.cache_n, "cache_n_source": self.cache_n_source,
                "restored": self.restored, "full_reprocess": self.full_reprocess,
                "searched": self.searched, "selected": self.selected,
                "created": [n for n, _, _ in self.created],
                "erased": [n for _, n, _ in self.erased],
                "prompt_ms": self.prompt_ms, "prompt_n": self.prompt_n, "gen_n": self.gen_n,
                "n_cache_after": self.n_cache_after, "started_in_log": self.started_in_log,
                "first_batch": self.first_batch,
                "slot_empty": self.history_known and self.parent_task == -1 and self.parent_n_cache == 0,
                "abbreviated": self.abbreviated, "prefilling": self.prefilling,
                "seen_to": self.seen_to, "batch_ran": self.batch_ran, "events": ev}


@dataclass
class _Acc:
    """A task being assembled while the log streams by."""

    task: int
    slot: int
    line: int
    t_s: float | None
    selected: str = ""
    sel_f_keep: float | None = None
    check_sim: tuple[int, int] | None = None          # (lcp, T) for this slot
    n_prompt_logged: int | None = None
    n_prompt_src: str = ""
    probe: tuple[int, int] | None = None              # (n_past, n_cache)
    progress_all: list[tuple[int, float, int]] = field(default_factory=list)   # (tokens, fraction, its decimals) per progress line
    against: int | None = None
    restored: int = -1
    restored_n_past: int | None = None
    restored_line: int = -1
    full_line: int = -1
    truncate_failed: bool = False     # the full re-processing came from a failed seq_rm, not a search
    erased: list[tuple[str, int, int]] = field(default_factory=list)
    created: list[tuple[int, float, int]] = field(default_factory=list)
    cache: list[tuple[str, int, int]] = field(default_factory=list)
    seq_rm: int | None = None
    need_one: tuple[int, int] | None = None
    n_past_set: int | None = None
    prompt_ms: float | None = None
    prompt_n: int | None = None
    gen_n: int | None = None
    stop_n: int | None = None
    t_stop_s: float | None = None
    cancelled: bool = False
    user: set[int] = field(default_factory=set)
    parent_task: int = -1
    parent_n_cache: int = 0
    state_known: bool = True
    load_unresolved: bool = False
    prefill_done: bool = False         # "prompt processing done" (b8152-b9150: after the creates)
    checked: list[int] = field(default_factory=list)
    created_index: list[int] = field(default_factory=list)
    seed_root: int = -1
    started: bool = True
    held: tuple[int | None, int, int] | None = None   # (checkpoints, tokens, listing line) at the restore decision
    abbreviated: bool = False          # its lines have no "id N | task M |" prefix (a hand-edited paste)
    batch_start: int | None = None     # the latest seq_rm line's position: the current batch's start
    created_unplaced: int = 0          # creates cut before their numbers, with no batch to place them
    n_seq_rm: int = 0                  # seq_rm lines seen (one per batch of the prompt)

    @property
    def progress(self) -> tuple[int, float, int] | None:
        """The furthest progress line (the latest of equal fractions)."""
        return max(reversed(self.progress_all), key=lambda p: p[1], default=None)


@dataclass(eq=False)
class _Entry:
    """One prompt-cache entry as the builder knows it (identity matters: two can look alike)."""

    task: int                        # task whose sequence it holds (-1 empty, -3 history not in the log)
    n_tokens: int
    n_ckpt: int | None = None        # checkpoints it holds, once a listing showed it
    ptr: str = ""                    # the listing's %p: names the entry across listings
    line: int = -1                   # the listing line that showed it last


@dataclass
class LogTasks:
    """All tasks of a log, the parse counts, the settings and the build range the wording implies."""

    tasks: list[TaskObs]
    stats: LogStats
    settings: dict[str, Any]
    build_lo: int
    build_hi: int
    visible: bool                    # checkpoint lines can be seen at this verbosity
    ckpt_sizes: list[tuple[int, float]] = field(default_factory=list)    # (n_tokens, MiB) created
    state_sizes: list[tuple[int, float]] = field(default_factory=list)   # (n_tokens, MiB) cache saves
    evidence: dict[str, dict] = field(default_factory=dict)   # setting -> {"value", "line", "how"}
    build_evidence: dict[str, dict] = field(default_factory=dict)   # "from"/"to" -> the line setting that bound

    @property
    def build(self) -> int:
        """The build the log most likely comes from: printed, else dated from its wording.

        An open range (wording still printed today) means a recent build: take the newest. A
        closed range (wording that was later changed) is taken at its start.
        """
        b = self.settings.get("build")
        if b:
            return int(b)
        return self.build_hi if self.build_hi >= _LATEST else self.build_lo


def read_tasks(path: str | Path, on_bytes: Callable[[int], None] | None = None) -> LogTasks:
    """Stream a log and assemble its tasks (raises LogError when the file is not a log)."""
    stats = LogStats()
    builder = _Builder(stats.settings)
    for f in iter_facts(path, stats, on_bytes):
        builder.add(f)
    check_is_log(stats)
    tasks = builder.finish(stats.cut_line_kind)
    lo, hi, build_why = _build_range(stats.formats, stats.format_lines)
    visible = builder.visible(stats.cut_line_kind)
    settings = dict(stats.settings)
    evidence = {k: {"value": settings[k], "line": ln, "how": "printed at start-up"}
                for k, ln in stats.setting_lines.items() if k in settings and not k.startswith("_")}
    if builder.ckpt_max is not None and "ctx_checkpoints" not in settings:
        settings["ctx_checkpoints"] = builder.ckpt_max
        evidence["ctx_checkpoints"] = {"value": builder.ckpt_max, "line": builder.ckpt_max_line,
                                       "how": "inferred from 'created context checkpoint N of M'"}
    if builder.every_n is not None and "every_n" not in settings:
        settings["every_n"] = builder.every_n
        evidence["every_n"] = {"value": builder.every_n, "line": builder.every_n_line,
                               "how": "inferred from 'N tokens since last checkpoint'"}
    if builder.batch_sizes and "n_batch" not in settings:
        # A batch is n_batch tokens unless a break point or the prompt's end cut it: the largest
        # size, seen at least twice, is taken as -b (once could be a cut batch of a longer -b).
        big = max(builder.batch_sizes)
        if builder.batch_sizes[big] >= 2:
            settings["n_batch"] = big
            evidence["n_batch"] = {"value": big, "line": builder.batch_lines[big],
                                   "how": f"inferred from 'batch.n_tokens = {big}' ({builder.batch_sizes[big]} "
                                          "batches of that size, none larger)"}
    slots = [(t.slot, t.line) for t in tasks if t.slot is not None and t.slot >= 0]
    if slots and "n_slots" not in settings:
        top, ln = max(slots)
        # an excerpt shows only the slots it uses: -np is at least the highest id + 1
        settings["n_slots"] = top + 1
        evidence["n_slots"] = {"value": top + 1, "line": ln,
                               "how": f"inferred: slot {top} is used, so -np >= {top + 1}"}
    return LogTasks(tasks, stats, settings, lo, hi, visible, builder.ckpt_sizes, builder.state_sizes,
                    evidence, build_why)


# Task ids of tasks the log shows without one: UNNAMED_TASK, UNNAMED_TASK - 1, ... (printed "?")
UNNAMED_TASK = -1000

# lines of a task's restore decision, and lines any task prints
_DECISION_KINDS = {FactKind.CHECKING, FactKind.RESTORED, FactKind.FULL_REPROCESS, FactKind.PROBE}
_TASK_KINDS = _DECISION_KINDS | {
    FactKind.CREATED, FactKind.ERASED_INVALIDATED, FactKind.ERASED_OLD, FactKind.ERASED_SPACING,
    FactKind.SUPERSEDED, FactKind.SEQ_RM, FactKind.PROGRESS, FactKind.PROMPT_DONE, FactKind.NEW_PROMPT,
    FactKind.INIT_SAMPLER, FactKind.TIMING_PROMPT, FactKind.TIMING_EVAL, FactKind.STOP, FactKind.EVERY_N,
    FactKind.NEED_ONE, FactKind.N_PAST_SET}

# lines that only a slot taking checkpoints prints (FactKind values)
_CKPT_KINDS = {FactKind.CREATED.value, FactKind.RESTORED.value, FactKind.ERASED_INVALIDATED.value,
               FactKind.CHECKING.value, FactKind.FULL_REPROCESS.value, FactKind.PROBE.value,
               FactKind.ERASED_SPACING.value, FactKind.SUPERSEDED.value}


# what each dating wording is, in the words a user can grep for
_FORMAT_WORDS: dict[str, str] = {
    "created_no_n_tokens": "a 'created context checkpoint' line without n_tokens",
    "created_n_tokens": "a 'created context checkpoint' line with n_tokens",
    "ckpt_no_n_tokens": "a restored or erased checkpoint line without n_tokens",
    "erased_old_n_tokens": "'erasing old context checkpoint' with n_tokens",
    "restored_n_past": "'restored context checkpoint' with n_past",
    "restored_no_n_past": "'restored context checkpoint' with n_tokens and no n_past",
    "erased_pos_next": "'erased invalidated context checkpoint' with pos_next",
    "erased_no_pos_next": "'erased invalidated context checkpoint' with n_tokens and no pos_next",
    "probe_prompt_tokens": "'slot.prompt.tokens.size()'",
    "probe_cache_tokens": "'cache_tokens.size()'",
    "Checking_upper": "'Checking checkpoint with' (capital C)",
    "checking_lower": "'checking checkpoint with' (lower case)",
    "every_n": "'N tokens since last checkpoint'",
    "create_check_func": "the 'create_check' function tag",
    "pp_new_progress": "'prompt processing, n_tokens = ..., progress = 0.xx'",
    "pp_old_progress": "'prompt processing progress, n_tokens = ..., batch.n_tokens'",
    "prompt_processing_done": "'prompt processing done'",
    "seq_rm_cached": "'cached n_tokens = ..., memory_seq_rm'",
    "seq_rm_n_tokens": "'n_tokens = ..., memory_seq_rm'",
    "new_prompt_task_n_tokens": "'new prompt, ... task.n_tokens'",
    "min_spacing_startup": "'min spacing' at start-up",
    "f_sim_best": "'f_sim_best'",
    "sim_best": "'sim_best' (not f_sim_best)",
    "check_sim": "'- checking sim = '",
    "n_gen": "'n_gen = '",
    "spacing_erase": "'erasing context checkpoint too close'",
    "superseded": "'superseding context checkpoint'",
}


def _build_range(features: set[str], lines: dict[str, int] | None = None
                 ) -> tuple[int, int, dict[str, dict]]:
    """(lo, hi, evidence): the builds whose wording every dating line fits, and for each bound
    that a line sets, {"build", "line", "wording"} of that line (parse, validate, explain)."""
    lines = lines or {}
    lo, hi = 6685, _LATEST
    why: dict[str, dict] = {}
    for ft in sorted(features, key=lambda f: (lines.get(f, 0), f)):
        a, b = _FORMAT_RANGES[ft]
        if max(lo, a) <= min(hi, b):      # a fork's mixture of wordings: keep what agrees so far
            said = {"line": lines.get(ft), "wording": _FORMAT_WORDS.get(ft, ft)}
            if a > lo:
                why["from"] = {"build": a, **said}
            if b < hi:
                why["to"] = {"build": b, **said}
            lo, hi = max(lo, a), min(hi, b)
    return lo, hi, why


def build_range_text(lo: int, hi: int, why: dict[str, dict]) -> str:
    """'b6685-b8151 (to b8151: line 2, a restored or erased checkpoint line without n_tokens)'."""
    parts = [f"{k} b{e['build']}: line {e['line']}, {e['wording']}" for k, e in
             (("from", why.get("from")), ("to", why.get("to"))) if e and e.get("line")]
    return f"b{lo}-b{hi}" + (f" ({'; '.join(parts)})" if parts else "")


class _Builder:
    """Folds facts into tasks, tracking what each slot holds and what the prompt cache holds."""

    def __init__(self, settings: dict) -> None:
        self.settings = settings                                # filled live by the parser
        self.ckpt_sizes: list[tuple[int, float]] = []           # (n_tokens, MiB) of created checkpoints
        self.state_sizes: list[tuple[int, float]] = []          # (n_tokens, MiB) of prompt-cache saves
        self.every_n: int | None = None
        self.tasks: dict[int, _Acc] = {}
        self.order: list[int] = []
        self.slot_state: dict[int, tuple[int, int]] = {}       # slot -> (task id, n_cache)
        self.load_match: dict[int, tuple[float, float]] = {}    # slot -> (f_keep, sim) of a load to name
        self.entries: list[_Entry] = []                         # prompt cache, oldest first (spec §5)
        # The listing " - cache state: N prompts" + one line per entry (spec §5, `update`), printed
        # after the round's save, load and evictions: it names what the cache holds and how many
        # checkpoints each entry has.
        self.listing: tuple[int, list[Fact]] | None = None     # (N, entry lines so far)
        self.pending_save: tuple[int, _Entry] | None = None      # (slot, entry) saved this round
        self.round_gone: list[_Entry] | None = None            # entries the round's listing no longer shows
        self.round_evictions = 0                                # 'removing oldest entry' lines this round
        self.slot_held: dict[int, tuple[int | None, int, int]] = {}   # slot -> (checkpoints, tokens, line)
        self.load_pool: dict[int, list[_Entry]] = {}            # slot -> entries its pending load took one of
        self.pending: dict[int, list[Fact]] = {}                # slot -> facts before its task starts
        self.pending_srv: list[Fact] = []                       # srv lines before the next start
        self.idle_saving: int = -1                              # slot being saved as idle
        self.sel_slot: int = -1
        self.n_ckpt_lines = 0
        self.ckpt_max: int | None = None
        self.ckpt_max_line = self.every_n_line = 0
        self.batch_sizes: dict[int, int] = {}                   # batch.n_tokens -> how often
        self.batch_lines: dict[int, int] = {}
        self.last_task_on_slot: dict[int, int] = {}
        self.pos_equal = self.pos_differ = 0                    # checkpoint lines with pos_min == / != pos_max
        # tasks the log shows without an id (a hand-edited paste whose lines lost their "id N |
        # task M |" prefix, or a selection cut before its task started) are numbered from here down
        self.synthetic_id = UNNAMED_TASK

    # -- helpers --
    def _task(self, f: Fact) -> _Acc | None:
        if f.task >= 0:
            acc = self.tasks.get(f.task)
            if acc is None:          # the excerpt starts inside this task
                # the new-prompt and probe lines come before the restore decision: it is in the log
                acc = self._start(f.task, f.slot, f.line, f.t_s,
                                  started=f.kind in (FactKind.NEW_PROMPT, FactKind.PROBE))
            return acc
        if f.slot >= 0 and f.slot in self.last_task_on_slot:
            return self.tasks[self.last_task_on_slot[f.slot]]
        if f.slot < 0:
            # poster-abbreviated lines without id/task: the last task's, unless it has passed the
            # point this line belongs before (a restore decision after its creates is the next task's)
            last = self.tasks[self.order[-1]] if self.order else None
            passed = last is not None and last.abbreviated and f.kind in _DECISION_KINDS and \
                (last.restored >= 0 or last.full_line >= 0 or bool(last.created) or last.prompt_ms is not None)
            if last is not None and not passed:
                return last
            if f.kind not in _TASK_KINDS:
                return None
            acc = self._start(self._new_id(), -1, f.line, f.t_s,
                              started=f.kind in _DECISION_KINDS or f.kind is FactKind.NEW_PROMPT)
            acc.abbreviated = True
            return acc
        return None

    def _new_id(self) -> int:
        self.synthetic_id -= 1
        return self.synthetic_id + 1

    def _start(self, task: int, slot: int, line: int, t_s: float | None, started: bool) -> _Acc:
        acc = _Acc(task, slot, line, t_s, started=started)
        st = self.slot_state.get(slot)
        if st is not None:
            acc.parent_task, acc.parent_n_cache = max(st[0], -1), st[1]
            acc.state_known = self._known(st)
            acc.seed_root = self._root(st, acc.task)
        else:
            # Every slot starts empty: known when the log shows the server starting up, or when
            # this is task 0, the first task the server numbered (server_queue::get_new_id
            # counts from 0 as requests arrive): no task ran before it on any slot.
            acc.state_known = "n_slots" in self.settings or "n_ctx_slot" in self.settings or task == 0
            acc.parent_task, acc.parent_n_cache = -1, 0
            if not acc.state_known:
                acc.seed_root = task   # the slot's history before this task is not in the log
        self.tasks[task] = acc
        self.order.append(task)
        self.last_task_on_slot[slot] = task
        return acc

    def add(self, f: Fact) -> None:
        k = f.kind
        if k.value in _CKPT_KINDS:
            self.n_ckpt_lines += 1
        if k in (FactKind.CREATED, FactKind.RESTORED, FactKind.ERASED_INVALIDATED, FactKind.ERASED_OLD,
                 FactKind.CHECKING) and "pos_min" in f.v:
            if f.v["pos_min"] == f.v.get("pos_max", f.v["pos_min"]):
                self.pos_equal += 1
            else:
                self.pos_differ += 1
        if k is FactKind.SLOT_SELECTED or k is FactKind.CHECK_SIM:
            if k is FactKind.SLOT_SELECTED:
                self.sel_slot = f.slot
                self.idle_saving = -1     # this round's save is the selected slot's (spec §2.1)
            self.pending.setdefault(f.slot, []).append(f)
            return
        if k in (FactKind.CACHE_UPDATE, FactKind.CACHE_SAVE, FactKind.CACHE_LOOK, FactKind.CACHE_LOAD,
                 FactKind.CACHE_CANDIDATE, FactKind.CACHE_EVICT, FactKind.CACHE_SKIP,
                 FactKind.CACHE_LOAD_FAILED, FactKind.CACHE_STATE, FactKind.CACHE_ENTRY):
            self._cache_fact(f)
            return
        if k is FactKind.USER_SPAN and f.task < 0:
            self.pending_srv.append(f)
            return
        if k is FactKind.IDLE_SAVE:
            self.idle_saving = f.slot
            self._new_round()
            return
        if k is FactKind.PROMPT_CLEAR:
            self.slot_state[f.slot] = (-1, 0)
            self.slot_held.pop(f.slot, None)
            self.idle_saving = -1
            return
        if k is FactKind.TASK_START:
            # the queue's own "start_loop: processing task, id = N" (old builds, -v) names no slot:
            # an internal step of a running task, not a task starting
            if f.task >= 0:
                self._on_start(f)
            return
        if k is FactKind.EVERY_N:
            # "%d tokens since last checkpoint": the value printed is the --checkpoint-every-n flag
            if self.every_n is None or f.v["n_since"] < self.every_n:
                self.every_n, self.every_n_line = f.v["n_since"], f.line
        if k is FactKind.CANCEL:
            acc = self.tasks.get(f.task)
            if acc is not None:
                acc.cancelled = True
            return
        acc = self._task(f)
        if acc is None:
            return
        v = f.v
        if k is FactKind.NEW_PROMPT:
            acc.n_prompt_logged, acc.n_prompt_src = v["n_prompt"], "new_prompt"
            if acc.slot in self.load_match:
                self._resolve_load(acc, *self.load_match.pop(acc.slot))
        elif k is FactKind.INIT_SAMPLER and acc.n_prompt_logged is None:
            acc.n_prompt_logged, acc.n_prompt_src = v["n_prompt"], "init_sampler"
        elif k is FactKind.PROBE:
            acc.probe = (v["n_past"], v["n_cache"])
        elif k is FactKind.CHECKING:
            if acc.against is None:
                acc.against = v["against"]
            acc.checked.append(v["pos_max"] + 1)     # hybrid/recurrent: n_tokens = pos_max + 1 (spec §0)
        elif k is FactKind.RESTORED:
            acc.restored, acc.restored_line = v["n_tokens"], f.line
            acc.restored_n_past = v.get("n_past")
        elif k is FactKind.FULL_REPROCESS:
            acc.full_line = f.line
        elif k is FactKind.TRUNCATE_FAILED:
            acc.full_line, acc.truncate_failed = f.line, True
        elif k is FactKind.ERASED_INVALIDATED:
            acc.erased.append((EventKind.ERASED_INVALIDATED.value, v["n_tokens"], f.line))
        elif k is FactKind.ERASED_OLD:
            acc.erased.append((EventKind.ERASED_OLD.value, v["n_tokens"], f.line))
        elif k is FactKind.ERASED_SPACING:
            acc.erased.append((EventKind.ERASED_SPACING.value, v["n_tokens"], f.line))
        elif k is FactKind.SUPERSEDED:
            acc.erased.append((EventKind.SUPERSEDED.value, v["n_tokens"], f.line))
        elif k is FactKind.CREATED:
            if "max" in v:
                if self.ckpt_max is None:
                    self.ckpt_max_line = f.line
                self.ckpt_max = v["max"]
            if "n_tokens" not in v:
                # a last line cut before its numbers: the create is at the start of the batch its
                # seq_rm line began (spec §2.3: the state before the batch is decoded)
                if acc.batch_start is None or any(n >= acc.batch_start for n, _, _ in acc.created):
                    acc.created_unplaced += 1
                    return
                v = {**v, "n_tokens": acc.batch_start}
            acc.created.append((v["n_tokens"], float(v.get("size_mib", 0.0)), f.line))
            acc.created_index.append(int(v.get("index", -1)))
            if "size_mib" in v:
                self.ckpt_sizes.append((v["n_tokens"], v["size_mib"]))
        elif k is FactKind.SEQ_RM:
            if acc.seq_rm is None:
                acc.seq_rm = v["n_cached"]
            acc.batch_start = v["n_cached"]
            acc.n_seq_rm += 1
        if k is FactKind.PROGRESS and v.get("n_batch_tokens"):
            nb = v["n_batch_tokens"]
            self.batch_sizes[nb] = self.batch_sizes.get(nb, 0) + 1
            self.batch_lines.setdefault(nb, f.line)
        if k is FactKind.PROGRESS and v.get("progress"):
            # b9160 and older print the fraction with %f (6 decimals), later builds with %.2f
            pr = (v.get("n_cache", v.get("n_done", 0)), v["progress"], 6 if "n_cache" in v else 2)
            acc.progress_all.append(pr)
        elif k is FactKind.NEED_ONE:
            acc.need_one = (v["n_past"], v["n_prompt"])
        elif k is FactKind.N_PAST_SET:
            acc.n_past_set = v["n_past"]
        elif k is FactKind.PROMPT_DONE and f.v.get("after_creates"):
            acc.prefill_done = True
        elif k is FactKind.TIMING_PROMPT:
            acc.prompt_ms, acc.prompt_n = v["ms"], int(v["n_tokens"])
        elif k is FactKind.TIMING_EVAL:
            acc.gen_n = int(v["n_tokens"])
        elif k is FactKind.STOP:
            acc.stop_n = v["n_cache"]
            acc.t_stop_s = f.t_s
            self.slot_state[acc.slot] = (acc.task, v["n_cache"])
        elif k is FactKind.USER_SPAN:
            acc.user.add(v["n_tokens"])

    def _cache_fact(self, f: Fact) -> None:
        k, v = f.kind, f.v
        if k is FactKind.CACHE_UPDATE:
            self._new_round()
        elif k is FactKind.CACHE_SAVE:
            self.state_sizes.append((v["n_tokens"], v["size_mib"]))
            src = self.idle_saving if self.idle_saving >= 0 else self.sel_slot
            st = self.slot_state.get(src)
            if st is None:
                # a slot the log never showed: empty only if the log shows the server starting
                started = "n_slots" in self.settings or "n_ctx_slot" in self.settings
                st = (-1, 0) if started else (-3, v["n_tokens"])
            e = _Entry(st[0], v["n_tokens"])
            self.entries.append(e)
            self.pending_save = (src, e)
        elif k is FactKind.CACHE_SKIP:
            # "already in the cache" / "exceeds the cache size limit": the save added nothing
            if self.pending_save is not None and self.entries and self.entries[-1] is self.pending_save[1]:
                self.entries.pop()
            self.pending_save = None
        elif k is FactKind.CACHE_LOAD:
            # Which entry? The candidate listing (newer builds) says; else match the probe later.
            slot = self.sel_slot
            self.slot_state[slot] = (-2, -1)      # unknown until resolved
            self.slot_held.pop(slot, None)
        elif k is FactKind.CACHE_CANDIDATE:
            self.pending_srv.append(f)
        elif k is FactKind.CACHE_EVICT and v.get("why") == "obsolete":
            n = v["n_tokens"]
            self.entries = [e for e in self.entries if e.n_tokens != n]
        elif k is FactKind.CACHE_EVICT:
            self.round_evictions += 1
        elif k is FactKind.CACHE_STATE:
            self.listing = (int(v["n_prompts"]), [])
            if v["n_prompts"] == 0:
                self._apply_listing([])
        elif k is FactKind.CACHE_ENTRY and self.listing is not None:
            # an entry line without its 'cache state' line (an excerpt that starts mid-listing)
            # may not be the whole cache: only a complete listing is used
            self.listing[1].append(f)
            if len(self.listing[1]) == self.listing[0]:
                self._apply_listing(self.listing[1])
        self.pending_srv.append(f)

    def _new_round(self) -> None:
        self.listing, self.pending_save, self.round_gone, self.round_evictions = None, None, None, 0

    def _apply_listing(self, lines: list[Fact]) -> None:
        """Take a complete listing as what the cache holds, oldest first (spec §5 `update`).

        The builder knows the entries saved inside the log, which are the newest; an entry it does
        not know was saved before the log began, so it is older than all of them. Pairing from the
        newest end, an entry of the builder that the listing skips has left the cache (loaded or
        evicted). Where two entries of the same length could be swapped, neither history is taken
        as known."""
        self.listing = None
        old, new = self.entries, [(f.v["n_tokens"], f.v["n_ckpt"], f.v.get("ptr", ""), f.line) for f in lines]
        pair: dict[int, _Entry] = {}
        gone: list[_Entry] = []
        i, j = len(new) - 1, len(old) - 1
        while i >= 0 and j >= 0:
            o, (n, _, ptr, _) = old[j], new[i]
            if o.n_tokens == n and (not o.ptr or not ptr or o.ptr == ptr):
                pair[i] = o
                i -= 1
            else:
                gone.append(o)
            j -= 1
        gone += old[:j + 1]
        out: list[_Entry] = []
        for i, (n, c, ptr, ln) in enumerate(new):
            o = pair.get(i)
            if o is None:
                o = _Entry(-3, n)                # saved before the log: its history is not in it
            elif not o.ptr and any(g.n_tokens == n for g in gone):
                o.task = -3                      # it or a gone one of the same length: not known which
                for g in gone:
                    if g.n_tokens == n:
                        g.task = -3
            o.n_ckpt, o.ptr, o.line = c, ptr, ln
            out.append(o)
        self.entries = out
        self.round_gone = gone
        if self.pending_save is not None:
            src, e = self.pending_save
            # the save appends its entry (newest, listed last); the slot keeps that state unless
            # a load replaced it this round (then its state is the loaded entry's)
            if out and out[-1] is e and self.slot_state.get(src, (0, 0))[0] != -2:
                self.slot_held[src] = (int(e.n_ckpt), e.n_tokens, e.line)
            self.pending_save = None

    def _on_start(self, f: Fact) -> None:
        slot = f.slot
        pend = self.pending.pop(slot, [])
        fresh = any(p.kind is FactKind.SLOT_SELECTED and p.v.get("t_last") == -1 for p in pend)
        no_load = f.task == 0 or self.settings.get("cache_ram_mib") == 0 or \
            any(p.kind is FactKind.CACHE_LOOK for p in self.pending_srv)
        if slot not in self.slot_state and fresh and no_load:
            # "selected slot by LRU, t_last = -1": the slot was never used since the server
            # started (t_last_used starts at -1, spec §2.1), so it is empty -- unless the prompt
            # cache filled it, which this selection's cache lines (or task 0's empty cache, or a
            # disabled one) rule out (a load replaces the state (-2) before this point)
            self.slot_state[slot] = (-1, 0)
        # a CACHE_LOAD earlier marked the slot unknown: resolve with the best-listed candidate
        if self.slot_state.get(slot, (0, 0))[0] == -2:
            cands = [p for p in self.pending_srv if p.kind is FactKind.CACHE_CANDIDATE]
            # the loaded entry left the cache before the round's listing (spec §5): when one was
            # printed, it is one of the entries the listing no longer shows
            pool = self.round_gone if self.round_gone is not None else self.entries
            taken: _Entry | None = None
            loads = [p for p in self.pending_srv if p.kind is FactKind.CACHE_LOAD]
            if cands:
                # the load line prints the chosen entry's f_keep and f_sim as its candidate line did
                want = loads[-1].v if loads else None
                chosen = [p for p in cands if want is not None and p.v["f_keep"] == want["f_keep"]
                          and p.v["sim"] == want["sim"]] or \
                    [max(cands, key=lambda p: (p.v["f_keep"], p.v["sim"]))]
                lengths = {p.v["n_tokens"] for p in chosen}
                if len(lengths) == 1:
                    n = lengths.pop()
                    same = [i for i, e in enumerate(pool) if e.n_tokens == n]
                    if len(same) == 1:
                        taken = pool.pop(same[0])
                    else:
                        # saved before the log (its length is all that is known), or one of
                        # several entries of that length: which one's history is not known
                        counts = {pool[i].n_ckpt for i in same}
                        for i in reversed(same):
                            pool[i].task = -3
                        taken = _Entry(-3, n, counts.pop() if len(counts) == 1 else None,
                                       line=max((pool[i].line for i in same), default=-1))
                        if same:
                            pool.pop(same[-1])
            elif self.round_gone is not None and len(pool) == 1 and not self.round_evictions:
                taken = pool.pop()               # nothing evicted: the one entry gone was loaded
            if taken is not None:
                self._load(slot, taken)
            else:
                self.slot_state[slot] = (-3, 0)    # holds an entry we cannot name
                if not cands and loads:
                    # builds that list no candidates (b9873 and older): name the entry from the
                    # load line's f_keep and sim once the task's length is known (NEW_PROMPT)
                    self.load_match[slot] = (loads[-1].v["f_keep"], loads[-1].v["sim"])
                    self.load_pool[slot] = pool

        acc = self.tasks.get(f.task) or self._start(f.task, slot, f.line, f.t_s, started=True)
        sel = [p for p in pend if p.kind is FactKind.SLOT_SELECTED]
        if sel:
            acc.selected = sel[-1].v.get("how", "")
            acc.sel_f_keep = sel[-1].v.get("f_keep")
            acc.line, acc.t_s = sel[-1].line, sel[-1].t_s if sel[-1].t_s is not None else acc.t_s
        sims = [p for p in pend if p.kind is FactKind.CHECK_SIM]
        if sims:
            acc.check_sim = (sims[-1].v["lcp"], sims[-1].v["n_prompt"])
        for p in self.pending_srv:
            if p.kind is FactKind.USER_SPAN:
                acc.user.add(p.v["n_tokens"])
            elif p.kind is FactKind.CACHE_SAVE:
                acc.cache.append((EventKind.CACHE_SAVE.value, p.v["n_tokens"], p.line))
            elif p.kind is FactKind.CACHE_LOAD:
                acc.cache.append((EventKind.CACHE_LOAD.value, -1, p.line))
            elif p.kind is FactKind.CACHE_EVICT:
                acc.cache.append((EventKind.CACHE_EVICT.value, int(p.v.get("n_tokens", -1)), p.line))
        self.pending_srv = []
        st = self.slot_state.get(slot)
        if st is not None:
            acc.parent_task, acc.parent_n_cache = max(st[0], -1), st[1]
            acc.state_known = self._known(st)
            acc.seed_root = self._root(st, acc.task)
        # what the slot holds now as the cache listing showed it; its own task changes it from here
        acc.held = self.slot_held.pop(slot, None)

    def _load(self, slot: int, e: _Entry) -> None:
        """The slot took entry ``e``: its tokens and checkpoints are the entry's (spec §5 `load`)."""
        self.slot_state[slot] = (e.task, e.n_tokens)
        self.slot_held[slot] = (e.n_ckpt, e.n_tokens, e.line)

    def _resolve_load(self, acc: _Acc, f_keep: float, sim: float) -> None:
        """The prompt-cache entry a load took, from f_keep = lcp/len(entry) and sim = lcp/T as
        printed (3 decimals): the one entry whose length admits a common lcp, else still unknown."""
        T = acc.n_prompt_logged
        lo_l, hi_l = (sim - 5e-4) * T, (sim + 5e-4) * T
        pool = self.load_pool.pop(acc.slot, self.entries)
        fits = []
        for i, e in enumerate(pool):
            n = e.n_tokens
            lo, hi = max(lo_l, (f_keep - 5e-4) * n), min(hi_l, (f_keep + 5e-4) * n, n, T)
            if math.ceil(lo) <= math.floor(hi):
                fits.append(i)
        if len(fits) == 1:
            self._load(acc.slot, pool.pop(fits[0]))
            acc.held = self.slot_held.pop(acc.slot, None)
            st = self.slot_state[acc.slot]
            acc.parent_task, acc.parent_n_cache = max(st[0], -1), st[1]
            acc.state_known = self._known(st)
            acc.seed_root = self._root(st, acc.task)

    def _known(self, st: tuple[int, int]) -> bool:
        """Whether a slot holding ``st`` has a history we saw whole (tokens and checkpoints)."""
        if st[0] == -1:
            return True          # cleared or never used: empty
        if st[0] < -1:
            return False         # loaded from the prompt cache, entry unknown
        parent = self.tasks.get(st[0])
        return parent is not None and parent.state_known

    def _root(self, st: tuple[int, int], task: int) -> int:
        """The seedable first task of the unseen history a slot holding ``st`` descends from."""
        if st[0] == -3:
            # a prompt-cache entry saved before the log (or not named): what this task's own lines
            # show of it is read as for a slot's first task
            return task
        if st[0] < 0:
            return -1            # empty: nothing unseen
        parent = self.tasks.get(st[0])
        return parent.seed_root if parent is not None else -1

    def visible(self, cut_kind: str = "") -> bool:
        """Whether the log shows checkpoint lines at all (a line cut before its numbers counts)."""
        return self.n_ckpt_lines > 0 or cut_kind in _CKPT_KINDS or int(self.settings.get("verbosity", 3)) >= 4

    def finish(self, cut_kind: str = "") -> list[TaskObs]:
        # a slot selection the log ends after, before its task started: a task all the same
        for slot in [s for s, pend in self.pending.items() if any(p.kind is FactKind.SLOT_SELECTED for p in pend)]:
            sel = [p for p in self.pending[slot] if p.kind is FactKind.SLOT_SELECTED][-1]
            self._on_start(Fact(FactKind.TASK_START, sel.line, slot, self._new_id(), sel.t_s))
        # A search always ends in a restore or a reset line (spec §2.2, §6). Where those lines are
        # shown and the checkpoints are whole recurrent states (pos_min = pos_max: a hybrid or
        # recurrent model, spec §0, where a slot holding more than n_past > 0 tokens always
        # searches), a task without them kept n_past = 0 or all L tokens of its slot.
        no_search_shows = self.visible(cut_kind) and self.pos_equal > 0 and not self.pos_differ
        return [_finalize(self.tasks[tid], no_search_shows) for tid in self.order]


def _seen_to(a: _Acc) -> int | None:
    """``TaskObs.seen_to``: the latest batch start a seq_rm line shows, or just past the last
    create shown, whichever is further; None when the log shows no batch after the first (no
    create can lie below the prefill's start, so nothing would be seen) or a create it could not
    place."""
    ends = [n + 1 for n, _, _ in a.created]
    if a.batch_start is not None and a.n_seq_rm >= 2:
        ends.append(a.batch_start)
    return max(ends) if ends and not a.created_unplaced else None


def _length_from_progress(pr: tuple[int, float, int] | None) -> int | None:
    """The prompt length from "progress = p" when the printed digits leave one integer.

    Up to b9160 the line prints the cache length n after the batch and p = n / T with %f (spec
    §6; corpus 033: 64688 / 0.992086 = 65204.0, the length its init_sampler line prints): T lies
    in [n / (p + 5e-7), n / (p - 5e-7)], a single integer for prompts up to about a million
    tokens. The 2 decimals of later builds leave a range (an estimate, not used here)."""
    if pr is None or pr[2] < 6 or pr[1] <= 0:
        return None
    n, p, dec = pr
    half = 0.5 * 10.0 ** -dec
    lo = n / (p + half)
    hi = n / (p - half) if p > half else math.inf
    a, b = math.ceil(lo - 1e-9), math.floor(hi + 1e-9)
    return a if a == b and a >= n else None


def _length_range(lines: list[tuple[int, float, int]], base: int | None) -> tuple[int, int] | None:
    """The prompt lengths every progress line of a task allows, (lo, hi), or None.

    The line prints p = (the slot's cache length) / T rounded to its decimals (spec §6; b9161+:
    ``f_progress = prompt.n_tokens() / task->n_tokens()`` while n_tokens counts only this
    request's processed tokens, so the cache length is ``base`` = cache_n plus it). Each line
    bounds T; together they narrow it (corpus 032: 0.55 at 18432 ... 0.79 at 26624 leave
    33490-33820)."""
    if not lines or base is None:
        return None
    lo, hi = 0, math.inf
    for n, p, dec in lines:
        have = n + (base if dec < 6 else 0)
        half = 0.5 * 10.0 ** -dec
        lo = max(lo, math.ceil(have / (p + half) - 1e-9), have)
        if p > half:
            hi = min(hi, math.floor(have / (p - half) + 1e-9))
    return (int(lo), int(hi)) if lo <= hi < math.inf else None


def _finalize(a: _Acc, no_search_shows: bool = False) -> TaskObs:
    searched = a.probe is not None or a.against is not None or a.restored >= 0 or \
        (a.full_line >= 0 and not a.truncate_failed)
    # --- the common prefix before the restore decision ---
    n_lcp: int | None = None
    lcp_src = ""
    if a.probe is not None:
        n_lcp, lcp_src = a.probe[0], "probe"
        if a.parent_n_cache <= 0 or a.parent_task == -1 and a.probe[1] > 0:
            a.parent_n_cache = a.probe[1]
    elif a.against is not None:
        n_lcp, lcp_src = a.against, "checking"
    elif a.check_sim is not None:
        n_lcp, lcp_src = a.check_sim[0], "check_sim"
    elif a.need_one is not None:
        n_lcp, lcp_src = a.need_one[1], "need_one"
    # --- cache_n after the restore decision ---
    cache_n: int | None = None
    cn_src = ""
    if a.need_one is not None:
        cache_n, cn_src = (a.n_past_set if a.n_past_set is not None else a.need_one[0] - 1), "need_one"
    if a.full_line >= 0:
        cache_n, cn_src = 0, "full"
    elif a.restored >= 0:
        cache_n = a.restored_n_past if a.restored_n_past is not None else a.restored
        cn_src = "restored"
    elif a.seq_rm is not None and cache_n is None:
        # The first seq_rm line of a task is at cache_n, later ones at each batch start (spec §6).
        # An excerpt that begins inside the prefill shows a later one first: it counts only if
        # the prompt length less the tokens processed ('prompt eval time') lands on it.
        t0 = a.n_prompt_logged if a.n_prompt_logged is not None else (a.check_sim[1] if a.check_sim else None)
        t0 = t0 if t0 is not None else _length_from_progress(a.progress)
        if a.started or (t0 is not None and a.prompt_n is not None and t0 - a.prompt_n == a.seq_rm):
            cache_n, cn_src = a.seq_rm, "seq_rm"
    # --- the prompt length ---
    T: int | None = a.n_prompt_logged
    t_src = a.n_prompt_src if T is not None else ""
    if T is None and a.check_sim is not None:
        T, t_src = a.check_sim[1], "check_sim"
    if T is None and _length_from_progress(a.progress) is not None:
        T, t_src = _length_from_progress(a.progress), "progress"
    if T is not None and cache_n is None and a.prompt_n is not None:
        cache_n, cn_src = T - a.prompt_n, "prompt_n"
    if cache_n is None and not searched:
        if a.parent_task == -1 and a.parent_n_cache == 0 and a.state_known:
            cache_n, cn_src = 0, "empty"
            n_lcp, lcp_src = 0, "empty"
        elif a.parent_n_cache > 0:
            # No search was printed: either a pure extension (n_past = L) or nothing shared.
            # A choice by LCP similarity means something was shared (spec §2.1, §2.2).
            if a.selected == "lcp" or (a.sel_f_keep or 0) > 0:
                # n_past > 0, and no search means n_past = L where the log would show a search
                # (finish()); the selection's "f_keep = 1.000" (lcp / L) must say the same
                sure = no_search_shows and a.sel_f_keep is not None and a.sel_f_keep >= 0.9995
                cache_n, cn_src = a.parent_n_cache, "no_search" if sure else "inferred"
            elif a.selected == "lru":
                cache_n, cn_src = 0, "inferred"
    if cache_n is not None and n_lcp is None and not searched and a.need_one is None and a.started:
        # no search line: n_past was kept whole -- where the task's start is in the log to show it
        n_lcp, lcp_src = cache_n, cn_src
    if T is None and cache_n is not None and a.prompt_n is not None:
        T, t_src = cache_n + a.prompt_n, "timings"
    # "prompt processing ..., progress = p" (2 decimals): T about +-1%, an estimate. Where the
    # resume point is known the lines bound it (validate replays both ends: a decision that the
    # exact length could change stays unknown)
    t_range = _length_range(a.progress_all, cache_n) if T is None else None
    if t_range is not None:
        T, t_src = (t_range[0] + t_range[1]) // 2, "inferred"
    if T is None and a.created:
        # near-end checkpoints sit at T-4 (spec §2.3): an inference, so placement becomes unknown
        T, t_src = max(n for n, _, _ in a.created) + 4, "inferred"
    if T is None and a.progress is not None and a.progress[1] > 0:
        T, t_src = int(round(a.progress[0] / a.progress[1])), "inferred"
    if T is None and a.stop_n is not None and a.gen_n is not None:
        T, t_src = a.stop_n - a.gen_n + 1, "inferred"
    complete = (a.prompt_ms is not None or a.stop_n is not None or a.prefill_done) and \
        not (a.cancelled and a.prompt_ms is None)
    return TaskObs(
        task=a.task, slot=a.slot, line=a.line, t_s=a.t_s, n_prompt=T, n_prompt_source=t_src, n_prompt_range=t_range,
        n_lcp=n_lcp, n_lcp_source=lcp_src, cache_n=cache_n, cache_n_source=cn_src,
        restored=a.restored, restored_line=a.restored_line, full_reprocess=a.full_line >= 0,
        full_line=a.full_line, searched=searched, created=tuple(a.created), erased=tuple(a.erased),
        cache=tuple(a.cache), selected=a.selected, prompt_ms=a.prompt_ms, prompt_n=a.prompt_n,
        gen_n=a.gen_n, n_cache_after=a.stop_n, t_stop_s=a.t_stop_s, cancelled=a.cancelled, complete=complete,
        user_starts=tuple(sorted(a.user)), parent_task=a.parent_task, parent_n_cache=a.parent_n_cache,
        history_known=a.state_known, checked=tuple(a.checked), created_index=tuple(a.created_index),
        n_cache_probe=a.probe[1] if a.probe is not None else None, seed_root=a.seed_root,
        started_in_log=a.started, truncate_failed=a.truncate_failed, n_ckpt_held=a.held[0] if a.held else None,
        n_ckpt_held_line=a.held[2] if a.held else -1, n_cache_held=a.held[1] if a.held else None,
        first_batch=a.seq_rm, abbreviated=a.abbreviated, prefilling=a.seq_rm is not None or a.progress is not None,
        seen_to=_seen_to(a),
        batch_ran=a.progress is not None or a.n_seq_rm >= 2 or bool(a.created) or complete)


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LogTrace:
    """A trace built from a log: header, requests (with ``observed``), and what was left out."""

    header: TraceHeader
    requests: list[Request]
    log: LogTasks
    left_out: list[dict]              # tasks without a usable prompt length: {"task", "line", "why"}


def trace_from_log(path: str | Path, name: str | None = None,
                   on_bytes: Callable[[int], None] | None = None) -> LogTrace:
    """Read a log and turn its tasks into trace requests (ids in log order)."""
    lt = read_tasks(path, on_bytes)
    reqs: list[Request] = []
    left_out: list[dict] = []
    id_of_task: dict[int, int] = {}
    n_seq: list[int] = []
    sessions: list[str] = []
    users: list[tuple[int, ...]] = []
    t_prev = 0.0
    t0 = next((t.t_s for t in lt.tasks if t.t_s is not None), None)
    mutable_out: list[int] = []
    user_turns = ServerRules(lt.build).user_turn_checkpoints
    for t in lt.tasks:
        if t.n_prompt is None or t.n_prompt < 1:
            left_out.append({"task": t.task, "line": t.line, "slot": t.slot,
                             "why": "prompt length not in the log (excerpt cut or started mid-task)"})
            continue
        T = t.n_prompt
        rid = len(reqs)
        parent = id_of_task.get(t.parent_task, -1) if t.parent_task >= 0 else -1
        n_shared = 0
        if parent >= 0:
            n_shared = t.n_lcp if t.n_lcp is not None else (t.cache_n or 0)
            n_shared = max(0, min(n_shared, T))
            if n_shared > n_seq[parent]:
                # the parent's output length was not in the log (cut): lengthen it to fit
                mutable_out[parent] += n_shared - n_seq[parent]
                n_seq[parent] = n_shared
            if n_shared == 0:
                parent = -1
        if t.n_cache_after is not None:
            n_out = max(0, t.n_cache_after - T + 1)   # the cache keeps prompt + generated[:-1] (spec §0)
        elif t.gen_n is not None:
            n_out = t.gen_n
        else:
            n_out = 1
        session = sessions[parent] if parent >= 0 else f"s{t.task}"
        starts = set(t.user_starts)
        if user_turns and t.complete and t.cache_n is not None:
            # Since #22929 (b9310) a checkpoint that is neither near the end (T-(4+ub), T-4) nor at
            # the resume point marks a user-message start (spec §2.3): the log reveals them so.
            nb = min(int(lt.settings.get("n_batch", 2048)), T)
            ub = min(int(lt.settings.get("n_ubatch", 512)), nb)
            near = {T - min(nb, 4 + ub), T - min(nb, 4), t.cache_n}
            starts |= {n for n, _, _ in t.created if n not in near}
        # Positions inside the shared prefix come from the parent, except that a re-rendered chat
        # can diverge just after "<|im_start|>": the user start then sits one token inside the
        # common prefix, where the parent had an assistant start (the trace stores it as user_all).
        pu = users[parent] if parent >= 0 else ()
        inside = {x for x in starts if n_shared - 16 <= x < n_shared}
        user = tuple(sorted({x for x in pu if x < n_shared} | inside
                            | {x for x in starts if n_shared <= x < T}))
        if t.t_s is not None and t0 is not None:
            ts = max(t_prev, t.t_s - t0)
        else:
            ts = t_prev + 1.0 if reqs else 0.0
        t_prev = ts
        obs = t.observed(lt.visible)
        if not lt.visible and lt.build_hi < 9838:
            # up to b9837 every checkpoint line prints at the default level (spec §6)
            obs["visible_why"] = ("no checkpoint line in the log: this build prints them at the default "
                                  "level, so the model may take none (only hybrid, recurrent and SWA models "
                                  "do) or the paste left them out")
        if t.t_stop_s is not None and t0 is not None:
            obs["t_done_s"] = round(max(ts, t.t_stop_s - t0), 6)
        reqs.append(Request(id=rid, session=session, t_s=ts, n_prompt=T, n_output=n_out, parent=parent,
                            n_shared=n_shared, user_starts=user, observed=obs))
        mutable_out.append(n_out)
        id_of_task[t.task] = rid
        n_seq.append(T + n_out)
        sessions.append(session)
        users.append(user)
    reqs = [dataclasses.replace(r, n_output=mutable_out[i]) if mutable_out[i] != r.n_output else r
            for i, r in enumerate(reqs)]
    p = Path(str(path))
    meta = {"settings": lt.settings, "settings_evidence": lt.evidence, "build": lt.build,
            "build_range": [lt.build_lo, lt.build_hi],
            "build_printed": bool(lt.settings.get("build")), "checkpoint_lines_visible": lt.visible,
            "log_lines": lt.stats.lines, "unknown_lines": lt.stats.unknown,
            "malformed_lines": lt.stats.malformed, "tasks": len(lt.tasks), "left_out": left_out}
    header = TraceHeader(name=name or (p.name.split(".")[0] if str(path) != "-" else "stdin"),
                         source=f"llama-server log {p.name if str(path) != '-' else '(stdin)'}",
                         derived=True, notes="parsed by ckptsim.ingest.llama_log; obs = what the server "
                                             "logged per task (EventKind vocabulary, with log lines)",
                         meta=meta)
    return LogTrace(header, reqs, lt, left_out)


# ---------------------------------------------------------------------------------------------
# Excerpts (issue #12, item 1): the state a slot held before the log starts, from the lines of
# its first task. The restore scan prints one "checking checkpoint with [a, b] against n_past"
# line per checkpoint, newest first, down to the one it restores (spec §6); the invalidation
# erases every checkpoint past pos_next; and "created context checkpoint N of M" counts the list
# after the append (spec §2.4). Together they pin the newest checkpoints down, and often the
# count of the older ones. What stays open (how many older ones, where) is bracketed: the log is
# replayed under several histories that fit every line, and a decision is settled only where all
# of them agree.

@dataclass(frozen=True)
class SlotSeed:
    """What one slot held before the excerpt, as far as its first task's lines show."""

    task: int                         # the slot's first task in the log
    n_cache: int                      # L: tokens the slot held (probe line, else the least that fits)
    n_past: int                       # common prefix of the slot's tokens and the task's prompt
    listed: tuple[int, ...]           # checkpoints the lines name (checking, restored, invalidated, erased)
    n_older: tuple[int, int]          # (fewest, most) checkpoints older than those, unnamed
    bound: int                        # unnamed older checkpoints lie at or below this position
    evidence: str                     # how the older count was read, in words
    above: int = 0                    # ... and above this one (an older one FIFO named as erased)
    # The excerpt starts after the task's restore decision: its restore / reset line shows the
    # outcome, which the seed reproduces, so that decision is not evidence (only what follows is).
    decided_before_log: bool = False
    # ... and not even its restore line is there: the invalidated erasures may be cut off too
    erasures_before_log: bool = False

    def variants(self) -> list[tuple[int, ...]]:
        """Checkpoint lists (ascending) that fit the lines: the fewest and the most older ones,
        spread out, packed just below the oldest scanned one, or packed at the bottom -- the
        extremes of what a later restore, the min step and spacing eviction could see."""
        out: list[tuple[int, ...]] = []
        for n in sorted(set(self.n_older)):
            free = [p for p in range(self.above + 1, self.bound + 1) if p not in self.listed]
            if n > len(free):
                continue
            for how in ("spread", "high", "low"):
                if how == "high":
                    older = free[len(free) - n:]
                elif how == "low":
                    older = free[:n]
                else:
                    older = [free[(i + 1) * len(free) // (n + 1) - 1] for i in range(n)] if n else []
                v = tuple(sorted(list(older) + list(self.listed)))
                if v not in out:
                    out.append(v)
        return out or [tuple(sorted(self.listed))]


def excerpt_seeds(lt: LogTasks) -> tuple[dict[int, SlotSeed], dict[int, str]]:
    """Seeds for the first task of each slot whose history is not in the log, and, for the
    tasks that cannot be seeded, why (task id -> reason)."""
    seeds: dict[int, SlotSeed] = {}
    why_not: dict[int, str] = {}
    cap = int(lt.settings.get("ctx_checkpoints", 32))
    scan_printed = lt.build >= 8218         # "Checking checkpoint with ..." exists from b8218 (spec §6)
    # Checkpoints later tasks of the same lineage name (scan, restore, erase) that no task of it
    # created in the log existed before it: they are history the first task's lines did not show.
    # Every removal is logged, so an unnamed one survives the whole excerpt, and FIFO (oldest first)
    # erasing one of them puts every unnamed one above it.
    later: dict[int, set[int]] = {}
    fifo_later: dict[int, int] = {}
    made: dict[int, set[int]] = {}
    for t in lt.tasks:
        if t.seed_root < 0:
            continue
        mine = made.setdefault(t.seed_root, set())
        if t.task != t.seed_root:
            seen = set(t.checked) | {n for _, n, _ in t.erased} | ({t.restored} if t.restored >= 0 else set())
            later.setdefault(t.seed_root, set()).update(seen - mine)
            for k, n, _ in t.erased:
                if k == EventKind.ERASED_OLD.value and n not in mine:
                    fifo_later[t.seed_root] = max(fifo_later.get(t.seed_root, 0), n)
        mine.update(n for n, _, _ in t.created)
    for t in lt.tasks:
        if t.seed_root != t.task:
            continue
        reason = _seed_blocker(t, lt.visible)
        if reason:
            why_not[t.task] = reason
            continue
        T = int(t.n_prompt)
        before = not t.started_in_log
        reset = t.full_reprocess and not t.truncate_failed    # a search that found nothing
        blind = before and t.restored < 0 and not t.full_reprocess
        if blind and t.cache_n == 0 and ServerRules(lt.build).full_on_resend:
            # re-processed from 0 before the excerpt: a failed search erased the checkpoints, but a
            # failed truncate (b7011-b9230, a resent cache) kept them, past the cleared state
            why_not[t.task] = ("the excerpt starts inside a prefill from 0: a failed truncate "
                               "(b7011-b9230) would have kept checkpoints past it")
            continue
        if blind:
            # only the prefill is shown (seq_rm / prompt eval): stand the history in as a pure
            # extension up to the first batch the excerpt shows, which places and evicts from the
            # same start as whatever happened (an excerpt that begins inside the prefill does not
            # show the checkpoints created before that batch)
            n_past = int(t.first_batch if t.first_batch is not None else t.cache_n)
        elif before:
            n_past = t.restored if t.restored >= 0 else 0
        else:
            n_past = int(t.n_lcp if t.n_lcp is not None else t.cache_n)
        searched = (bool(t.checked) or t.restored >= 0 or reset or t.n_cache_probe is not None) \
            and not blind
        invalidated = [n for k, n, _ in t.erased if k == EventKind.ERASED_INVALIDATED.value]
        first_create = min((ln for _, _, ln in t.created), default=None)
        created_here = {n for n, _, _ in t.created}
        # checkpoints the FIFO / spacing pass erased before this task created anything existed before it
        evicted_pre = [n for k, n, ln in t.erased if k != EventKind.ERASED_INVALIDATED.value
                       and (first_create is None or ln < first_create or n not in created_here)]
        # Before #28302 (b11000) two checkpoints can share a position (a re-create at the restore
        # point): count each position as often as the most any one kind of line names it.
        named = Counter(t.checked)
        for src in (Counter(invalidated), Counter(evicted_pre), Counter([t.restored] if t.restored >= 0 else [])):
            named |= src
        listed = set(named)
        if t.n_cache_probe is not None:
            L = t.n_cache_probe
        elif t.n_cache_held is not None and not blind:
            L = t.n_cache_held               # the prompt-cache entry the slot was saved to or loaded
        elif searched:
            # a search runs only when the cache holds more than the common prefix, or the prompt is
            # fully cached (spec §2.2): the least length that fits
            L = n_past + 1 if n_past < T else n_past
        else:
            L = n_past                       # no search: a pure extension (n_past == L) or n_past == 0
        L = max(L, 1, max(listed, default=0))
        # The scan lists every checkpoint when none is chosen; the invalidation after a reset or
        # with n_past == 0 (b8393+, it runs for every request) erases all of them but k <= 1.
        whole = (reset and (scan_printed or lt.build >= 8393)) or \
            (n_past == 0 and lt.build >= 8393 and not before)
        kept = [n for n in listed if n not in invalidated]
        old_reset = reset and not whole
        if whole:
            n_older, how = (0, 0), "the scan or the invalidation named every checkpoint"
        elif old_reset:
            # before b8393 a reset erased only pos_min > n_past - 1 and kept none below (those would
            # have been restored): one checkpoint at exactly n_past may have stayed, unnamed
            n_older, how = (0, 1), "a reset before b8393 may keep one at n_past, unnamed"
        elif t.created_index and t.created_index[0] > 0:
            # count after the first append = older + kept + 1 - erased before it (spec §2.4)
            n_erased_before = sum(1 for k, _, ln in t.erased if k != EventKind.ERASED_INVALIDATED.value
                                  and first_create is not None and ln < first_create)
            n = t.created_index[0] - 1 - len(kept) + n_erased_before
            if n < 0:
                why_not[t.task] = (f"'created ... {t.created_index[0]} of' contradicts the "
                                   f"{len(kept)} checkpoints the lines name")
                continue
            n_older, how = (n, n), (f"'created context checkpoint {t.created_index[0]} of ...' "
                                    f"(line {first_create}) counts them")
        else:
            n_older, how = (0, max(0, cap - len(kept))), "not in the log"
        if t.n_ckpt_held is not None and not blind:
            # The prompt-cache listing counts the checkpoints the slot held at this restore
            # decision (spec §5: a saved entry copies them, a loaded one brings its own): every
            # named one is among them, the rest are older and unnamed.
            n = t.n_ckpt_held - sum(named.values())
            if not n_older[0] <= n <= n_older[1]:
                why_not[t.task] = (f"the prompt-cache listing (line {t.n_ckpt_held_line}) counts "
                                   f"{t.n_ckpt_held} checkpoints, which the task's own lines contradict "
                                   f"({sum(named.values())} named; {how}: {n_older[0]}-{n_older[1]} more)")
                continue
            n_older, how = (n, n), (f"the prompt-cache listing (line {t.n_ckpt_held_line}) counts "
                                    f"{t.n_ckpt_held} checkpoints in the slot")
        # FIFO erases the oldest first, so unnamed older checkpoints lie above the ones it named
        fifo = [n for k, n, _ in t.erased if k == EventKind.ERASED_OLD.value and n in evicted_pre]
        above = max(fifo, default=0)
        # the scan lists the newest down to the one restored: every unnamed one is older, so lower
        scanned = [n for n in set(t.checked) | ({t.restored} if t.restored >= 0 else set()) if n in kept]
        bound = (min(scanned) - 1) if scanned else (n_past + 1 if searched else L)
        if old_reset:
            above, bound = n_past - 1, n_past
        # later tasks' names for older checkpoints: fixed members, fewer unnamed ones
        extra = {n for n in later.get(t.task, set()) - listed if above < n <= bound}
        if extra and n_older[1] >= len(extra):
            listed |= extra
            n_older = (max(0, n_older[0] - len(extra)), n_older[1] - len(extra))
            above = max(above, min(fifo_later.get(t.task, 0), bound))
        for n in extra:
            named[n] = max(named[n], 1)
        seeds[t.task] = SlotSeed(t.task, L, n_past, tuple(sorted(named.elements())), n_older, max(bound, 0),
                                 how, above, before, blind)
    return seeds, why_not


def _seed_blocker(t: TaskObs, visible: bool) -> str:
    """Why the slot state before ``t`` cannot be read off its lines ('' when it can)."""
    if not t.started_in_log and t.restored < 0 and not t.full_reprocess \
            and t.cache_n_source not in ("seq_rm", "prompt_n") and t.first_batch is None:
        return "the excerpt starts inside the task, after its restore decision"
    if not visible:
        return "checkpoint lines not visible (use -lv 4)"
    if t.n_prompt is None:
        return "the prompt length is not in the log"
    if t.n_prompt_source == "inferred":
        # an estimated length still settles the restore step when the prompt surely goes past
        # n_past (spec §2.2 needs only n_past < T); placement stays unknown (compare_task)
        n_past = t.n_lcp if t.n_lcp is not None else t.cache_n
        past = max((n for n, _, _ in t.created), default=0)
        if n_past is None or not (past > n_past or n_past < 0.98 * t.n_prompt):
            return "the prompt length is not in the log"
    if t.started_in_log and (t.n_lcp is None and t.cache_n_source not in ("seq_rm", "prompt_n", "empty")):
        return "the common prefix with the slot's tokens (n_past) is not in the log"
    return ""


def seeded_requests(log_trace: LogTrace, seeds: dict[int, SlotSeed], variant: int, user_at_resume: bool = False
                    ) -> tuple[list[Request], dict[int, tuple[int, ...]], dict[int, int], int]:
    """The log's requests behind one synthetic request per seed (the slot's unseen history).

    Returns (requests, checkpoints each synthetic request leaves on its slot, the slot each seeded
    task takes (its synthetic request's), number of synthetic requests): real request i becomes
    i + that number. ``user_at_resume`` puts a user-message start at each seeded task's resume
    point: a checkpoint there is what #22929's eras place at a user start, and the excerpt cannot
    show whether one is (its lines reveal user starts only past the resume point). A synthetic request arrives just before
    its task and keeps its slot busy until then, so no other task's launch saves or clears it
    (spec §2.1) and its task finds it by the common prefix.
    """
    reqs = log_trace.requests
    by_task = {int((r.observed or {}).get("task", -1)): r for r in reqs}
    roots = [s for s in seeds.values() if s.task in by_task]
    m = len(roots)
    out: list[Request] = []
    ckpts: dict[int, tuple[int, ...]] = {}
    root_of: dict[int, int] = {}
    pins: dict[int, int] = {}
    for i, s in enumerate(roots):
        r = by_task[s.task]
        vs = s.variants()
        ckpts[i] = vs[min(variant, len(vs) - 1)]
        out.append(Request(id=i, session=r.session, t_s=r.t_s - 1e-3, n_prompt=s.n_cache, n_output=1,
                           observed={"synthetic": True, "t_done_s": r.t_s - 1e-6}))
        root_of[r.id] = i
    for r in reqs:
        if r.id in root_of:
            s = roots[root_of[r.id]]
            pins[r.id + m] = root_of[r.id]
            n_shared = min(s.n_past, r.n_prompt, s.n_cache)
            users = r.user_starts
            resume = (r.observed or {}).get("cache_n")
            if user_at_resume and resume is not None and 0 <= resume < r.n_prompt:
                users = tuple(sorted(set(users) | {int(resume)}))
            out.append(dataclasses.replace(r, id=r.id + m, parent=root_of[r.id] if n_shared else -1,
                                           n_shared=n_shared, user_starts=users))
        else:
            out.append(dataclasses.replace(r, id=r.id + m, parent=r.parent + m if r.parent >= 0 else -1))
    return out, ckpts, pins, m


def n_seed_variants(seeds: dict[int, SlotSeed]) -> int:
    """How many replays bracket the unseen histories (variant i applies to every seed at once)."""
    return max((len(s.variants()) for s in seeds.values()), default=1)
