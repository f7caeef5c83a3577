"""Streaming parser for ``llama-server`` logs: text lines in, typed facts out.

Every version and prefix style in ``../shared/corpus/logs`` is read (spec §6 lists the format
strings per build). A line is first stripped of its outer prefixes, outermost first::

    2026-05-23 18:08:00.739 | [54531] 1.51.611.215 I slot get_availabl: id  3 | task -1 | <message>
    └ docker / journald / ISO ┘ └router┘ └ uptime + level ┘ └ slot/srv header (optional) ┘

then the message is matched against the known kinds. A line of a known kind whose numbers do not
parse is reported as malformed with its line number; other lines are counted as unknown. The file
is read line by line (``.gz`` and ``-`` for stdin too), so a 1 GB log is never held in memory.
"""
from __future__ import annotations

import calendar
import gzip
import io
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, BinaryIO

MAX_LINE_BYTES = 64 * 1024          # longer lines (a prompt dumped with -v) are cut, not kept whole
MAX_STORED_ISSUES = 200


class LogError(ValueError):
    """A file that cannot be read as a llama-server log; the message names the file."""


class FactKind(str, Enum):
    """What a log line told us. Checkpoint kinds reuse the names of ``records.EventKind``."""

    SETTING = "setting"                    # start-up configuration: v = {key: value}
    SLOT_SELECTED = "slot_selected"        # v: how (lcp|lru|id), sim, thold, f_keep
    CHECK_SIM = "check_sim"                # " - checking sim = f (lcp/n)" per candidate slot (b10184+)
    TASK_START = "task_start"              # "processing task"
    NEW_PROMPT = "new_prompt"              # v: n_prompt (task.n_tokens), n_ctx_slot, n_keep
    PROBE = "probe"                        # "n_past = %d, slot.prompt.tokens.size() = %d, ..." v: n_past, n_cache
    CHECKING = "checking"                  # "checking checkpoint with [a, b] against n" v: pos_min, pos_max, against
    CREATED = "created"
    RESTORED = "restored"
    ERASED_INVALIDATED = "erased_invalidated"
    ERASED_OLD = "erased_old"
    ERASED_SPACING = "erased_spacing"
    SUPERSEDED = "superseded"
    FULL_REPROCESS = "full_reprocess"
    TRUNCATE_FAILED = "truncate_failed"    # "failed to truncate tokens ..." (before b9231): memory cleared
    EVERY_N = "every_n"                    # "N tokens since last checkpoint at a, creating ... at position b"
    USER_SPAN = "user_span"                # message_spans / user-boundary lines: v: n_tokens
    SEQ_RM = "seq_rm"                      # "cached n_tokens = %d, memory_seq_rm [%d, end)" v: n_cached
    PROGRESS = "progress"                  # v: n_cache (cache length after the batch) or n_done
    PROMPT_DONE = "prompt_done"            # v: n_cache
    NEED_ONE = "need_one"                  # "need to evaluate at least 1 token" v: n_past, n_prompt
    N_PAST_SET = "n_past_set"              # "n_past was set to %d"
    INIT_SAMPLER = "init_sampler"          # v: n_prompt (tokens: text = ..., total = ...)
    STOP = "stop"                          # "stop processing: n_tokens = X" v: n_cache
    CANCEL = "cancel"                      # "cancel task, id_task = N"
    TIMING_PROMPT = "timing_prompt"        # v: ms, n_tokens
    TIMING_EVAL = "timing_eval"            # v: ms, n_tokens
    TIMING_TOTAL = "timing_total"          # v: ms, n_tokens
    CACHE_UPDATE = "cache_update"          # "updating prompt cache"
    CACHE_SAVE = "cache_save"              # " - saving prompt with length %d, total state size = %.3f MiB"
    CACHE_SKIP = "cache_skip"              # already cached / too big
    CACHE_LOOK = "cache_look"              # " - looking for better prompt, base f_keep = ..., sim = ..."
    CACHE_CANDIDATE = "cache_candidate"    # "   - prompt with length N, lcp = X, f_keep, f_sim"
    CACHE_LOAD = "cache_load"              # " - found better prompt with f_keep = ..., sim = ..."
    CACHE_LOAD_FAILED = "cache_load_failed"
    CACHE_EVICT = "cache_evict"            # removing oldest / obsolete entries
    CACHE_STATE = "cache_state"            # " - cache state: N prompts, X MiB (limits: ...)"
    CACHE_ENTRY = "cache_entry"            # "   - prompt 0x..: N tokens, checkpoints: k, X MiB"
    IDLE_SAVE = "idle_save"                # "saving idle slot to prompt cache"
    PROMPT_CLEAR = "prompt_clear"          # "clearing prompt with %zu tokens"


@dataclass(frozen=True, slots=True, eq=False)
class Fact:
    """One thing a log line said: its kind, where (line, slot, task, time) and its numbers."""

    kind: FactKind
    line: int
    slot: int = -1
    task: int = -1
    t_s: float | None = None      # seconds since server start (uptime column) or since the first stamp
    v: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Issue:
    """A line of a known kind that could not be read; ``line`` is 1-based."""

    line: int
    kind: str
    message: str


@dataclass
class LogStats:
    """Counts gathered while parsing (mutable: filled as the stream is read)."""

    path: str = ""
    lines: int = 0
    blank: int = 0
    known: int = 0
    unknown: int = 0
    binary: int = 0               # lines with NUL bytes or invalid UTF-8
    overlong: int = 0             # lines cut at MAX_LINE_BYTES
    malformed: int = 0
    issues: list[Issue] = field(default_factory=list)
    truncated_last_line: bool = False   # the file ends without a newline inside a known line
    cut_line_used: bool = False         # ... and the fields before the cut were read
    cut_line_kind: str = ""             # the kind of that last line (FactKind value), read or not
    settings: dict[str, Any] = field(default_factory=dict)
    prefixes: set[str] = field(default_factory=set)   # which prefix styles were seen
    formats: set[str] = field(default_factory=set)    # wordings that date the build (log_trace)
    format_lines: dict[str, int] = field(default_factory=dict)    # wording -> the first line printing it
    setting_lines: dict[str, int] = field(default_factory=dict)   # setting -> line that printed it
    fork: str = ""                    # "ik_llama.cpp" / "ollama" / "llama-cpp-python" when their wording is seen
    fork_line: int = 0

    def add_issue(self, line: int, kind: str, message: str) -> None:
        """Record a malformed line (only the first MAX_STORED_ISSUES are kept)."""
        self.malformed += 1
        if len(self.issues) < MAX_STORED_ISSUES:
            self.issues.append(Issue(line, kind, message))

    def to_json(self) -> dict:
        """Counts as a JSON-ready dict."""
        return {"path": self.path, "lines": self.lines, "blank": self.blank, "known": self.known,
                "unknown": self.unknown, "binary": self.binary, "overlong": self.overlong,
                "malformed": self.malformed, "truncated_last_line": self.truncated_last_line,
                "issues": [{"line": i.line, "kind": i.kind, "message": i.message} for i in self.issues],
                "prefixes": sorted(self.prefixes), "formats": sorted(self.formats),
                "settings": dict(self.settings)}


# ---------------------------------------------------------------------------------------------
# Prefixes (spec §6 "Prefixes"), outermost first. Each is tried once, in this order.
_P_SPACE = re.compile(r"^[\s`>]+")                       # indentation, a stray markdown backtick
_P_DOCKER = re.compile(r"^(\d{4})-(\d\d)-(\d\d)[ T](\d\d):(\d\d):(\d\d)(?:[.,](\d+))? *\| ?")
# the month as journalctl prints it, in either case ("Apr 03 ..." and "apr 03 ..." are both posted)
_P_JOURNAL = re.compile(r"^([A-Za-z][a-z]{2}) +(\d{1,2}) (\d\d):(\d\d):(\d\d) \S+ [^\s:\[]+(?:\[\d+\])?: ")
_P_ISO = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:Z|[+-]\d\d:?\d\d)? "
                    r"(?:\S+ [^\s:\[]+(?:\[\d+\])?: )?")
_P_ROUTER = re.compile(r"^\[ *(\d+)\] ")
_P_UPTIME = re.compile(r"^(\d+)\.(\d\d)\.(\d{3})\.(\d{3}) ([IWEDT]) ")
_P_LEVEL = re.compile(r"^([IWEDT]) (?=\S)")
_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep",
                                       "Oct", "Nov", "Dec"), 1)}

_H_SLOT = re.compile(r"^slot +([^:|]{1,14}?): +id +(\d+) \| task (-?\d+) \| ?(.*)$")
_H_SLOT_BARE = re.compile(r"^slot +([^:|]{1,14}?): (.*)$")     # poster-abbreviated: no id/task
_H_SRV = re.compile(r"^(?:srv|que|cmn|res) +([^:]{1,14}?): (.*)$")

_KV = re.compile(r"(\w+) = (-?[\d.]+(?:e[-+]?\d+)?)")


def _kv(text: str) -> dict[str, float]:
    return {k: float(x) for k, x in _KV.findall(text)}


@dataclass(frozen=True)
class _Rule:
    kind: FactKind
    trigger: str | tuple[str, ...]   # substring(s) that mark a line of this kind
    rx: re.Pattern
    build: Any                     # (match, msg) -> dict of values, or None if the numbers are wrong


def _ckpt_values(m: re.Match, msg: str) -> dict | None:
    kv = _kv(m.group("body"))
    if "pos_min" not in kv:
        return None
    v: dict[str, Any] = {"pos_min": int(kv["pos_min"]), "pos_max": int(kv.get("pos_max", kv["pos_min"]))}
    # Builds before b8152 log no n_tokens; for hybrid/recurrent memory pos_max = n_tokens - 1 (spec §0).
    v["n_tokens"] = int(kv["n_tokens"]) if "n_tokens" in kv else v["pos_max"] + 1
    v["n_tokens_logged"] = "n_tokens" in kv
    if "size" in kv:
        v["size_mib"] = kv["size"]
    for k in ("n_past", "pos_next", "n_swa"):
        if k in kv:
            v[k] = int(kv[k])
    if "index" in m.groupdict() and m.group("index"):
        v["index"], v["max"] = int(m.group("index")), int(m.group("max"))
    return v


def _ints(*names: str):
    def build(m: re.Match, msg: str) -> dict:
        return {n: int(m.group(i + 1)) for i, n in enumerate(names)}
    return build


def _floats(*names: str):
    def build(m: re.Match, msg: str) -> dict:
        return {n: float(m.group(i + 1)) for i, n in enumerate(names)}
    return build


def _sel_lcp(m: re.Match, msg: str) -> dict:
    v: dict[str, Any] = {"how": "lcp", "sim": float(m.group(1))}
    if m.group(2):
        v["thold"] = float(m.group(2))
    if m.group(3):
        v["f_keep"] = float(m.group(3))
    return v


_F = r"(-?\d+(?:\.\d+)?)"
_RULES: list[_Rule] = [
    # -- checkpoints (spec §6) --
    _Rule(FactKind.CREATED, ("created context checkpoint", "saved context checkpoint",
                             "created prompt processing context checkpoint"), re.compile(
        r"(?:created|saved) (?:prompt processing )?context checkpoint (?P<index>\d+) of (?P<max>\d+) "
        r"\((?P<body>[^)]*)\)"), _ckpt_values),
    _Rule(FactKind.CREATED, "SWA checkpoint create", re.compile(
        r"SWA checkpoint create, (?P<body>.*size = [\d.]+ MiB)"), _ckpt_values),
    _Rule(FactKind.RESTORED, "restored context checkpoint", re.compile(
        r"restored context checkpoint \((?P<body>[^)]*)\)"), _ckpt_values),
    _Rule(FactKind.RESTORED, "SWA checkpoint restore", re.compile(
        r"SWA checkpoint restore, (?P<body>.*size = [\d.]+ MiB)"), _ckpt_values),
    _Rule(FactKind.ERASED_INVALIDATED, "erased invalidated context checkpoint", re.compile(
        r"erased invalidated context checkpoint \((?P<body>[^)]*)\)"), _ckpt_values),
    _Rule(FactKind.ERASED_OLD, "erasing old context checkpoint", re.compile(
        r"erasing old context checkpoint \((?P<body>[^)]*)\)"), _ckpt_values),
    _Rule(FactKind.ERASED_OLD, "SWA checkpoint erase", re.compile(
        r"SWA checkpoint erase, (?P<body>.*size = [\d.]+ MiB)"), _ckpt_values),
    _Rule(FactKind.ERASED_SPACING, "checkpoint too close", re.compile(
        r"erasing context checkpoint too close to an earlier one \((?P<body>[^)]*)\)"), _ckpt_values),
    _Rule(FactKind.SUPERSEDED, "superseding context checkpoint", re.compile(
        r"superseding context checkpoint at n_tokens = (\d+)"), _ints("n_tokens")),
    _Rule(FactKind.FULL_REPROCESS, "forcing full prompt re-processing", re.compile(
        r"forcing full prompt re-processing"), lambda m, s: {}),
    # Before #23280 (b9231) a prompt the slot holds whole (n_past == T == L) is cut to T - 1, and
    # seq_rm cannot remove one token from recurrent memory: the server clears the slot and
    # re-processes everything (spec §3, after the table; seen on xllamacpp 2026.5.9093).
    _Rule(FactKind.TRUNCATE_FAILED, "failed to truncate tokens", re.compile(
        r"failed to truncate tokens (?:with position >= |beyond n_past = )(\d+)"), _ints("n_past")),
    _Rule(FactKind.CHECKING, "hecking checkpoint with", re.compile(
        r"[Cc]hecking checkpoint with \[(-?\d+), (-?\d+)\] against (-?\d+)"),
        _ints("pos_min", "pos_max", "against")),
    _Rule(FactKind.PROBE, "slot.prompt.tokens.size()", re.compile(
        r"n_past = (\d+), slot\.prompt\.tokens\.size\(\) = (\d+), seq_id = (\d+), pos_min = (-?\d+), "
        r"n_swa = (\d+)"), _ints("n_past", "n_cache", "seq_id", "pos_min", "n_swa")),
    _Rule(FactKind.PROBE, "cache_tokens.size()", re.compile(
        r"n_past = (\d+), cache_tokens\.size\(\) = (\d+), seq_id = (\d+), pos_min = (-?\d+), "
        r"n_swa = (\d+)"), _ints("n_past", "n_cache", "seq_id", "pos_min", "n_swa")),
    _Rule(FactKind.EVERY_N, "tokens since last checkpoint", re.compile(
        r"(\d+) tokens since last checkpoint at (\d+), creating new checkpoint during processing at "
        r"position (\d+)"), _ints("n_since", "last", "position")),
    _Rule(FactKind.USER_SPAN, "message_spans: last user message", re.compile(
        r"checkpoint_n_tokens=(\d+)"), _ints("n_tokens")),
    _Rule(FactKind.USER_SPAN, "expected boundary before user input", re.compile(
        r"expected boundary before user input = (\d+)"), _ints("n_tokens")),
    _Rule(FactKind.USER_SPAN, "checkpoint before user input reached", re.compile(
        r"ending prompt batch at prompt_n_tokens = (\d+)"), _ints("n_tokens")),
    # ik_llama.cpp fork and llama-cpp-python's own cache (INDEX 043): same meaning, other words.
    _Rule(FactKind.CREATED, "HybridCheckpointCache: Saved checkpoint", re.compile(
        r"Saved checkpoint at pos (\d+) \(([\d.]+) MiB\)"),
        lambda m, s: {"n_tokens": int(m.group(1)), "pos_min": int(m.group(1)) - 1,
                      "pos_max": int(m.group(1)) - 1, "size_mib": float(m.group(2)),
                      "n_tokens_logged": True}),
    _Rule(FactKind.ERASED_OLD, "HybridCheckpointCache: evicted", re.compile(r"evicted pos=(\d+)"),
          lambda m, s: {"n_tokens": int(m.group(1)), "pos_min": int(m.group(1)) - 1,
                        "pos_max": int(m.group(1)) - 1, "n_tokens_logged": True}),
    # -- tasks and prompt processing --
    _Rule(FactKind.TASK_START, "processing task", re.compile(r"processing task(?:, is_child = (\d+))?"),
          lambda m, s: {"is_child": int(m.group(1) or 0)}),
    _Rule(FactKind.NEW_PROMPT, "new prompt, n_ctx_slot", re.compile(
        r"new prompt, n_ctx_slot = (\d+), n_keep = (\d+), (?:n_prompt_tokens|task\.n_tokens) = (\d+)"),
        _ints("n_ctx_slot", "n_keep", "n_prompt")),
    _Rule(FactKind.SEQ_RM, "memory_seq_rm [", re.compile(
        r"(?:cached n_tokens|n_tokens|n_past) = (\d+), memory_seq_rm \[(\d+), end\)"),
        _ints("n_cached", "p0")),
    _Rule(FactKind.SEQ_RM, "kv cache rm [p0, end)", re.compile(r"id_slot=(\d+) id_task=(\d+) p0=(\d+)"),
          lambda m, s: {"_slot": int(m.group(1)), "_task": int(m.group(2)), "n_cached": int(m.group(3))}),
    _Rule(FactKind.SEQ_RM, "kv cache rm [", re.compile(r"kv cache rm \[(\d+), end\)"), _ints("n_cached")),
    _Rule(FactKind.PROGRESS, "prompt processing progress", re.compile(
        r"prompt processing progress, (?:n_past|n_tokens) = (\d+), (?:batch\.)?n_tokens = (\d+)"
        r"(?:, progress = ([\d.]+))?"),
        lambda m, s: {"n_cache": int(m.group(1)), "n_batch_tokens": int(m.group(2)),
                      **({"progress": float(m.group(3))} if m.group(3) else {})}),
    _Rule(FactKind.PROGRESS, "prompt processing, n_tokens", re.compile(
        r"prompt processing, n_tokens = +(\d+), progress = ([\d.]+)"),
        lambda m, s: {"n_done": int(m.group(1)), "progress": float(m.group(2))}),
    _Rule(FactKind.PROMPT_DONE, "prompt processing done", re.compile(
        r"prompt processing done, n_tokens = (\d+), batch\.n_tokens = (\d+)"),
        # b8152-b9150: the checkpoint lines of the prompt come before this one (spec §6)
        lambda m, s: {"n_cache": int(m.group(1)), "n_batch_tokens": int(m.group(2)), "after_creates": True}),
    _Rule(FactKind.PROMPT_DONE, "prompt done, n_", re.compile(
        r"prompt done, (?:n_past|n_tokens) = (\d+), (?:batch\.)?n_tokens = (\d+)"),
        _ints("n_cache", "n_batch_tokens")),
    _Rule(FactKind.NEED_ONE, "need to evaluate at least 1 token", re.compile(
        r"\(n_past = (\d+), (?:n_prompt_tokens|task\.n_tokens\(\)) = (\d+)\)"), _ints("n_past", "n_prompt")),
    _Rule(FactKind.N_PAST_SET, "n_past was set to", re.compile(r"n_past was set to (\d+)"), _ints("n_past")),
    _Rule(FactKind.INIT_SAMPLER, "init sampler", re.compile(r"tokens: text = (\d+), total = (\d+)"),
          _ints("n_text", "n_prompt")),
    _Rule(FactKind.STOP, "stop processing:", re.compile(
        r"stop processing: (?:n_past|n_tokens) = (\d+), truncated = (\d+)"), _ints("n_cache", "truncated")),
    _Rule(FactKind.CANCEL, "cancel task", re.compile(r"cancel task, id_task = (\d+)"), _ints("task")),
    _Rule(FactKind.TIMING_PROMPT, "prompt eval time", re.compile(
        r"prompt eval time = +" + _F + r" ms / +(\d+) tokens"), _floats("ms", "n_tokens")),
    _Rule(FactKind.TIMING_EVAL, "eval time", re.compile(r"^\s*eval time = +" + _F + r" ms / +(\d+) tokens"),
          _floats("ms", "n_tokens")),
    _Rule(FactKind.TIMING_TOTAL, "total time", re.compile(r"total time = +" + _F + r" ms(?: / +(\d+) tokens)?"),
          lambda m, s: {"ms": float(m.group(1)), "n_tokens": int(m.group(2) or -1)}),
    # -- slot choice (spec §2.1) --
    _Rule(FactKind.SLOT_SELECTED, "selected slot by LCP similarity", re.compile(
        r"selected slot by LCP similarity, f?_?sim_best = ([\d.]+)(?: \(> ([\d.]+) thold\))?"
        r"(?:, f_keep = (-?[\d.]+))?"), _sel_lcp),
    _Rule(FactKind.SLOT_SELECTED, "selected slot by lcs similarity", re.compile(
        r"selected slot by lcs similarity, lcs_len = \d+, similarity = ([\d.]+)(?: \(> ([\d.]+) thold\))?()"),
        _sel_lcp),
    _Rule(FactKind.SLOT_SELECTED, "selected slot by LRU", re.compile(r"selected slot by LRU, t_last = (-?\d+)"),
          lambda m, s: {"how": "lru", "t_last": int(m.group(1))}),
    _Rule(FactKind.SLOT_SELECTED, "selected slot by id", re.compile(r"selected slot by id \((\d+)\)"),
          lambda m, s: {"how": "id"}),
    _Rule(FactKind.CHECK_SIM, "- checking sim =", re.compile(r"- checking sim = ([\d.]+) \((\d+)/(\d+)\)"),
          lambda m, s: {"sim": float(m.group(1)), "lcp": int(m.group(2)), "n_prompt": int(m.group(3))}),
    # -- host prompt cache (spec §5) --
    _Rule(FactKind.CACHE_UPDATE, "updating prompt cache", re.compile(r"updating prompt cache"), lambda m, s: {}),
    _Rule(FactKind.CACHE_SAVE, "- saving prompt with length", re.compile(
        r"- saving prompt with length (\d+), total state size = ([\d.]+) MiB"),
        lambda m, s: {"n_tokens": int(m.group(1)), "size_mib": float(m.group(2))}),
    _Rule(FactKind.CACHE_SKIP, "- prompt is already in the cache", re.compile(r"already in the cache"),
          lambda m, s: {"why": "already"}),
    _Rule(FactKind.CACHE_SKIP, "exceeds cache size limit", re.compile(r"prompt state size ([\d.]+) MiB exceeds"),
          lambda m, s: {"why": "too_big", "size_mib": float(m.group(1))}),
    _Rule(FactKind.CACHE_LOOK, "- looking for better prompt", re.compile(
        r"looking for better prompt, base f_keep = (-?[\d.]+), (?:f_)?sim = (-?[\d.]+)"), _floats("f_keep", "sim")),
    _Rule(FactKind.CACHE_LOAD, "- found better prompt", re.compile(
        r"found better prompt with f_keep = (-?[\d.]+), (?:f_)?sim = (-?[\d.]+)"), _floats("f_keep", "sim")),
    _Rule(FactKind.CACHE_CANDIDATE, "- prompt with length", re.compile(
        r"- prompt with length +(\d+), lcp = +(\d+), f_keep = (-?[\d.]+), f_sim = (-?[\d.]+)"),
        lambda m, s: {"n_tokens": int(m.group(1)), "lcp": int(m.group(2)), "f_keep": float(m.group(3)),
                      "sim": float(m.group(4))}),
    _Rule(FactKind.CACHE_LOAD_FAILED, "failed to load prompt from cache", re.compile(r"failed to load"),
          lambda m, s: {}),
    _Rule(FactKind.CACHE_EVICT, "removing obsolete cached prompt", re.compile(
        r"removing obsolete cached prompt with length (\d+)"), lambda m, s: {"why": "obsolete",
                                                                             "n_tokens": int(m.group(1))}),
    _Rule(FactKind.CACHE_EVICT, "removing oldest entry", re.compile(r"removing oldest entry \(size = ([\d.]+) MiB\)"),
          lambda m, s: {"why": "limit", "size_mib": float(m.group(1))}),
    _Rule(FactKind.CACHE_STATE, "- cache state:", re.compile(
        r"- cache state: (\d+) prompts, ([\d.]+) MiB \(limits: (-?[\d.]+) MiB, (\d+) tokens"),
        lambda m, s: {"n_prompts": int(m.group(1)), "size_mib": float(m.group(2)),
                      "limit_mib": float(m.group(3)), "limit_tokens": int(m.group(4))}),
    # %p of the entry's list node: stable while the entry lives, so it names an entry across listings
    _Rule(FactKind.CACHE_ENTRY, "tokens, checkpoints:", re.compile(
        r"- prompt (?:0x)?([0-9A-Fa-f]+): +(\d+) tokens, checkpoints: +(\d+), +([\d.]+) MiB"),
        lambda m, s: {"ptr": m.group(1).lower().lstrip("0"), "n_tokens": int(m.group(2)),
                      "n_ckpt": int(m.group(3)), "size_mib": float(m.group(4))}),
    _Rule(FactKind.IDLE_SAVE, "saving idle slot to prompt cache", re.compile(r"saving idle slot"), lambda m, s: {}),
    _Rule(FactKind.PROMPT_CLEAR, "clearing prompt with", re.compile(r"clearing prompt with (\d+) tokens"),
          _ints("n_tokens")),
]

# Start-up settings (spec §6 "startup", §8): key -> (regex, converter).
_SETTINGS: list[tuple[str, re.Pattern, Any]] = [
    ("ctx_checkpoints+min_step", re.compile(r"context checkpoints enabled, max = (\d+), min spacing = (\d+)"), None),
    ("ctx_checkpoints", re.compile(r"context checkpoints disabled"), lambda m: 0),
    ("cache_ram_mib", re.compile(r"prompt cache is enabled, size limit: (-?\d+|no limit) MiB"),
     lambda m: -1 if m.group(1) == "no limit" else int(m.group(1))),
    ("cache_ram_mib", re.compile(r"prompt cache is disabled"), lambda m: 0),
    ("n_slots+n_ctx_slot+kv_unified", re.compile(
        r"initializing, n_slots = (\d+), n_ctx_slot = (\d+), kv_unified = '(\w+)'"), None),
    ("n_slots", re.compile(r"initializing slots, n_slots = (\d+)"), lambda m: int(m.group(1))),
    ("n_ctx_slot", re.compile(r"new slot, n_ctx(?:_slot)? = (\d+)"), lambda m: int(m.group(1))),
    ("n_parallel+kv_unified", re.compile(r"n_parallel is set to auto, using n_parallel = (\d+) and "
                                         r"kv_unified = (\w+)"), None),
    ("cache_idle_slots", re.compile(r"idle slots will be saved to prompt cache"), lambda m: True),
    ("cache_idle_slots", re.compile(r"--cache-idle-slots requires --kv-unified, disabling"), lambda m: False),
    ("spec_checkpoints", re.compile(r"speculative decoding will use checkpoints"), lambda m: True),
    ("hybrid", re.compile(r"the context does not support partial sequence removal"), lambda m: True),
    ("build+commit", re.compile(r"build(?::| =)? (\d+) \(([0-9a-f]{6,})\)"), None),
    ("build_info", re.compile(r"build_info: (\S+)"), lambda m: m.group(1)),   # b9151+ start-up line
    ("verbosity", re.compile(r"log_info: verbosity = (\d+)"), lambda m: int(m.group(1))),
    ("n_ctx", re.compile(r"llama_context: n_ctx +=? *(\d+)"), lambda m: int(m.group(1))),
    # every build prints the context's own setting; b9713 prints no "initializing, n_slots" line,
    # and an -np 2 server there is not unified (it keeps idle slots' checkpoints: conformance)
    ("kv_unified", re.compile(r"llama_context: kv_unified +=? *(true|false)\b"), lambda m: m.group(1) == "true"),
    ("n_batch", re.compile(r"llama_context: n_batch +=? *(\d+)"), lambda m: int(m.group(1))),
    ("n_ubatch", re.compile(r"llama_context: n_ubatch +=? *(\d+)"), lambda m: int(m.group(1))),
    ("arch", re.compile(r"print_info: arch += (\S+)"), lambda m: m.group(1)),
]
_SETTING_TRIGGERS = ("context checkpoints", "prompt cache is", "initializing", "new slot", "n_parallel",
                     "idle slots", "cache-idle-slots", "speculative decoding will use", "partial sequence",
                     "build", "verbosity", "llama_context: n_", "llama_context: kv_unified", "print_info: arch")


def _to_bool(s: str) -> bool:
    return s.lower() in ("true", "1", "yes")


def _setting(body: str, settings: dict) -> bool:
    """Read a start-up setting into ``settings``; True if the line was one."""
    if not any(t in body for t in _SETTING_TRIGGERS):
        return False
    for key, rx, conv in _SETTINGS:
        m = rx.search(body)
        if not m:
            continue
        if key == "ctx_checkpoints+min_step":
            settings["ctx_checkpoints"], settings["min_step"] = int(m.group(1)), int(m.group(2))
        elif key == "n_slots+n_ctx_slot+kv_unified":
            settings["n_slots"], settings["n_ctx_slot"] = int(m.group(1)), int(m.group(2))
            settings["kv_unified"] = _to_bool(m.group(3))
        elif key == "n_parallel+kv_unified":
            settings["n_slots"], settings["kv_unified"] = int(m.group(1)), _to_bool(m.group(2))
        elif key == "build+commit":
            settings["build"], settings["commit"] = int(m.group(1)), m.group(2)
        elif key == "n_ctx_slot":
            # one line per slot; they agree, and n_slots follows from how many there are
            settings["n_ctx_slot"] = conv(m)
            settings["_n_slot_lines"] = settings.get("_n_slot_lines", 0) + 1
        else:
            settings[key] = conv(m)
        return True
    return False


# ---------------------------------------------------------------------------------------------
@dataclass
class _Clock:
    """Turns the time columns into seconds; wall clocks count from the first stamp seen."""

    first_wall: float | None = None

    def wall(self, epoch: float) -> float:
        if self.first_wall is None:
            self.first_wall = epoch
        return epoch - self.first_wall


def _epoch(y: int, mo: int, d: int, h: int, mi: int, s: int, frac: str | None) -> float:
    e = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
    return e + (float("0." + frac) if frac else 0.0)


def strip_prefixes(text: str, clock: _Clock | None = None, seen: set[str] | None = None
                   ) -> tuple[str, float | None, str]:
    """(body, seconds, level letter) of one line with its outer prefixes removed."""
    t_wall = t_up = None
    level = ""
    s = text
    m = _P_SPACE.match(s)
    if m:
        s = s[m.end():]
    m = _P_DOCKER.match(s)
    if m:
        g = m.groups()
        t_wall = _epoch(*(int(x) for x in g[:6]), g[6])
        s = s[m.end():]
        if seen is not None:
            seen.add("docker")
    else:
        m = _P_JOURNAL.match(s)
        if m and m.group(1).capitalize() in _MONTHS:
            # journald's classic stamp has no year; only differences matter, so any year does.
            t_wall = _epoch(2000, _MONTHS.get(m.group(1).capitalize(), 1), int(m.group(2)), int(m.group(3)),
                            int(m.group(4)), int(m.group(5)), None)
            s = s[m.end():]
            if seen is not None:
                seen.add("journald")
        else:
            m = _P_ISO.match(s)
            if m:
                g = m.groups()
                t_wall = _epoch(*(int(x) for x in g[:6]), g[6])
                s = s[m.end():]
                if seen is not None:
                    seen.add("iso")
    m = _P_ROUTER.match(s)
    if m:
        s = s[m.end():]
        if seen is not None:
            seen.add("router")
    m = _P_UPTIME.match(s)
    if m:
        mi, se, ms, us, level = m.groups()
        t_up = int(mi) * 60 + int(se) + int(ms) / 1e3 + int(us) / 1e6
        s = s[m.end():]
        if seen is not None:
            seen.add("uptime")
    else:
        m = _P_LEVEL.match(s)
        if m:
            level = m.group(1)
            s = s[m.end():]
            if seen is not None:
                seen.add("level")
    t = t_up
    if t is None and t_wall is not None and clock is not None:
        t = clock.wall(t_wall)
    return s, t, level


def open_log(path: str | Path) -> tuple[BinaryIO, Callable[[], None]]:
    """(binary stream, close function) for a path or ``-`` (stdin); gzip is detected by its magic."""
    p = str(path)
    if p == "-":
        raw: Any = sys.stdin.buffer
        owned = False
    else:
        pp = Path(p)
        if pp.is_dir():
            raise LogError(f"{p}: is a directory, expected a llama-server log file")
        if not pp.exists():
            raise LogError(f"{p}: no such file")
        raw = open(pp, "rb")
        owned = True
    buffered = raw if hasattr(raw, "peek") else io.BufferedReader(raw)
    stream: Any = buffered
    if buffered.peek(2)[:2] == b"\x1f\x8b":
        stream = gzip.GzipFile(fileobj=buffered)

    def close() -> None:
        if stream is not buffered:
            stream.close()
        if owned:
            buffered.close()
    return stream, close


def _read_lines(f: BinaryIO, stats: LogStats) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, bytes without the newline, ended by a newline) for each line, cutting long ones."""
    n = 0
    while True:
        try:
            chunk = f.readline(MAX_LINE_BYTES)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise LogError(f"{stats.path}: line {n + 1}: cannot read ({e})") from None
        if not chunk:
            return
        n += 1
        ended = chunk.endswith(b"\n")
        if not ended and len(chunk) >= MAX_LINE_BYTES:
            stats.overlong += 1
            while True:          # skip the rest of an overlong line without holding it
                rest = f.readline(MAX_LINE_BYTES)
                if not rest or rest.endswith(b"\n"):
                    break
            ended = True
        yield n, chunk.rstrip(b"\r\n"), ended


def iter_facts(path: str | Path, stats: LogStats | None = None,
               on_bytes: Callable[[int], None] | None = None) -> Iterator[Fact]:
    """Stream the facts of one log; counts go into ``stats`` (settings too) as lines are read.

    ``on_bytes`` is called now and then with the number of bytes read since its last call.
    """
    stats = stats if stats is not None else LogStats()
    stats.path = str(path)
    clock = _Clock()
    f, close = open_log(path)
    # bare continuation lines (old timings: "prompt eval time = ...") belong to the last print_timing
    last_timing_slot, last_timing_task = -1, -1
    pending: Issue | None = None
    pending_at: tuple = ()
    try:
        n_bytes = 0
        for n, raw, _ended in _read_lines(f, stats):
            stats.lines += 1
            if on_bytes is not None:
                n_bytes += len(raw) + 1
                if n_bytes >= 1 << 20:
                    on_bytes(n_bytes)
                    n_bytes = 0
            if b"\x00" in raw:
                stats.binary += 1
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                stats.binary += 1
                continue
            if not text.strip():
                stats.blank += 1
                continue
            body, t_s, _level = strip_prefixes(text, clock, stats.prefixes)
            if not stats.fork:
                fk = _fork_of(body)
                if fk:
                    stats.fork, stats.fork_line = fk, n
            if not body.strip():
                stats.blank += 1
                continue
            slot = task = -1
            msg = body
            func = ""
            m = _H_SLOT.match(body)
            if m:
                func, slot, task, msg = m.group(1).strip(), int(m.group(2)), int(m.group(3)), m.group(4)
                if func.strip() == "print_timing":
                    last_timing_slot, last_timing_task = slot, task
            else:
                m = _H_SLOT_BARE.match(body)
                if m:
                    msg = m.group(2)
                else:
                    m = _H_SRV.match(body)
                    if m:
                        msg = m.group(2)
            seen = set(stats.settings)
            if _setting(msg if m else body, stats.settings):
                for key in set(stats.settings) - seen:
                    stats.setting_lines.setdefault(key, n)
                stats.known += 1
                if "min spacing" in body:
                    stats.formats.add("min_spacing_startup")
                    stats.format_lines.setdefault("min_spacing_startup", n)
                continue
            if "n_gen =" in msg:
                stats.formats.add("n_gen")
                stats.format_lines.setdefault("n_gen", n)
            if pending is not None:       # a bad line followed by more log: a real malformed line
                stats.add_issue(pending.line, pending.kind, pending.message)
                pending = None
            fact = _match(msg, n, slot, task, t_s)
            if isinstance(fact, Issue):
                # Held back one line: if it is the last line, the excerpt was cut there (a warning).
                pending, pending_at = fact, (msg, n, slot, task, t_s)
                continue
            if fact is None:
                if not msg.strip():
                    stats.known += 1      # the empty first line of an old print_timing block
                else:
                    stats.unknown += 1
                continue
            stats.known += 1
            ft = _format_feature(fact, msg, func)
            if ft:
                stats.formats.add(ft)
                stats.format_lines.setdefault(ft, n)
            if fact.kind in (FactKind.TIMING_PROMPT, FactKind.TIMING_EVAL, FactKind.TIMING_TOTAL) \
                    and fact.slot < 0:
                fact = Fact(fact.kind, fact.line, last_timing_slot, last_timing_task, fact.t_s, fact.v)
            if fact.kind is FactKind.SLOT_SELECTED and "thold" in fact.v:
                stats.settings["slot_prompt_similarity"] = fact.v["thold"]
                stats.setting_lines.setdefault("slot_prompt_similarity", n)
            if fact.kind is FactKind.CACHE_STATE and "cache_ram_mib" not in stats.settings:
                stats.settings["cache_ram_mib"] = fact.v["limit_mib"]
                stats.setting_lines.setdefault("cache_ram_mib", n)
            yield fact
    finally:
        close()
    if pending is not None:
        stats.truncated_last_line = True
        stats.cut_line_kind = pending.kind
        # a pasted excerpt cut mid-line still holds every field before the cut
        fact = _match_cut(*pending_at)
        if fact is not None:
            stats.cut_line_used = True
            stats.known += 1
            yield fact
    if "_n_slot_lines" in stats.settings:
        stats.settings.setdefault("n_slots", stats.settings["_n_slot_lines"])
        del stats.settings["_n_slot_lines"]


# Wording only the relatives of llama-server print (corpus logs 005 and 042 for ik_llama.cpp:
# its `apply_checkp` function, "took N ms" on created checkpoints, the JSON-ish `INFO [ ... ]
# tid=...` lines; ollama's Go runner logs `source=...go` / "llama runner"). Their checkpoint rules
# differ from mainline's and are not in the spec, so they must not be replayed as mainline.
_FORK_MARKS = (("ik_llama.cpp", re.compile(r"slot apply_checkp:|created context checkpoint .*, took [\d.]+ ms|"
                                          r"INFO \[ *\w+\] .*\btid=\"")),
               ("ollama", re.compile(r"\bsource=\w+\.go:\d+|llama runner started|\bollama\b", re.I)),
               # llama-cpp-python's own checkpoint cache (corpus 043): no server, no slots or tasks,
               # its own rules (a checkpoint every 4096 tokens, its own eviction)
               ("llama-cpp-python", re.compile(r"HybridCheckpointCache:|Llama\.eval: \[Periodic Checkpoint\]")),
               # the unmerged PR #17428 branch (corpus 020): a checkpoint at every batch of the
               # prompt, printed as "created prompt processing context checkpoint N of 256";
               # mainline never had that wording or rule (spec §3)
               ("unmerged llama.cpp PR #17428 branch", re.compile(r"created prompt processing context checkpoint")),
               # a development state of PR #22929 (corpus 023, its first test): it skipped the
               # every-N checkpoints below the last user message ("skip checkpoint at 25055,
               # expected boundary before user input = 30104"); neither the wording nor that rule
               # is in any merged build (spec §2.5, §6)
               ("development branch of llama.cpp PR #22929",
                re.compile(r"expected boundary before user input|checkpoint before user input reached")))


def _fork_of(body: str) -> str:
    for name, rx in _FORK_MARKS:
        if rx.search(body):
            return name
    return ""


def _format_feature(f: Fact, msg: str, func: str) -> str | None:
    """The wording of this line that only some builds print (spec §6), if any."""
    k, v = f.kind, f.v
    if k is FactKind.CREATED and "index" in v:
        if func == "create_check":
            return "create_check_func"
        return "created_n_tokens" if v.get("n_tokens_logged") else "created_no_n_tokens"
    # a line that reaches its size field is whole: a field missing before it was not printed
    old_fields = not v.get("n_tokens_logged") and "size_mib" in v
    if k is FactKind.RESTORED and v.get("n_tokens_logged"):
        return "restored_n_past" if "n_past" in v else "restored_no_n_past"
    if k is FactKind.ERASED_INVALIDATED and v.get("n_tokens_logged"):
        return "erased_pos_next" if "pos_next" in v else "erased_no_pos_next"
    if k in (FactKind.RESTORED, FactKind.ERASED_INVALIDATED, FactKind.ERASED_OLD) and old_fields:
        return "ckpt_no_n_tokens"
    if k is FactKind.ERASED_OLD and v.get("n_tokens_logged"):
        return "erased_old_n_tokens"
    if k is FactKind.PROBE:
        return "probe_cache_tokens" if "cache_tokens" in msg else "probe_prompt_tokens"
    if k is FactKind.CHECKING:
        return "Checking_upper" if "Checking" in msg else "checking_lower"
    if k is FactKind.EVERY_N:
        return "every_n"
    if k is FactKind.PROGRESS:
        return "pp_new_progress" if "n_done" in v else "pp_old_progress"
    if k is FactKind.PROMPT_DONE and "processing done" in msg:
        return "prompt_processing_done"
    if k is FactKind.SEQ_RM and "memory_seq_rm" in msg:
        return "seq_rm_cached" if "cached n_tokens" in msg else \
            "seq_rm_n_tokens" if msg.lstrip().startswith("n_tokens") else None
    if k is FactKind.NEW_PROMPT and "task.n_tokens" in msg:
        return "new_prompt_task_n_tokens"
    if k is FactKind.SLOT_SELECTED and v.get("how") == "lcp":
        return "f_sim_best" if "f_sim_best" in msg else "sim_best" if "sim_best" in msg else None
    if k is FactKind.CHECK_SIM:
        return "check_sim"
    if k is FactKind.ERASED_SPACING:
        return "spacing_erase"
    if k is FactKind.SUPERSEDED:
        return "superseded"
    return None


def _match_cut(msg: str, n: int, slot: int, task: int, t_s: float | None) -> Fact | None:
    """The fact on a line cut short, from its fields before the cut: the last, possibly partial
    field is dropped (``n_tokens = 6012`` may be 60121 cut) and an open parenthesis closed."""
    cut = msg.rstrip()
    i = max(cut.rfind(", "), cut.rfind(" ("))
    if i < 0:
        return None
    cut = cut[:i] if cut[i] == "," else cut[:i + 2]
    if cut.count("(") > cut.count(")"):
        cut += ")"
    fact = _match(cut, n, slot, task, t_s)
    if isinstance(fact, Issue) and fact.kind == FactKind.CREATED.value:
        # cut before its numbers ("created context checkpoint 1 of 32 ("): still a create, and
        # its count and the cap; log_trace places it at the start of the batch it precedes
        m = _CUT_CREATE.search(cut)
        if m:
            return Fact(FactKind.CREATED, n, slot, task, t_s,
                        {"index": int(m.group(1)), "max": int(m.group(2)), "cut_before_position": True})
    return fact if isinstance(fact, Fact) else None


_CUT_CREATE = re.compile(r"(?:created|saved) (?:prompt processing )?context checkpoint (\d+) of (\d+)")


def _match(msg: str, n: int, slot: int, task: int, t_s: float | None) -> Fact | Issue | None:
    """The fact on this line, an Issue if it is a known kind with unreadable numbers, else None."""
    for rule in _RULES:
        trig = rule.trigger
        if not (trig in msg if isinstance(trig, str) else any(x in msg for x in trig)):
            continue
        m = rule.rx.search(msg)
        v = rule.build(m, msg) if m else None
        if v is None:
            name = trig if isinstance(trig, str) else trig[0]
            return Issue(n, rule.kind.value, f"cannot read the numbers of a '{name}' line: {msg[:160]!r}")
        if rule.kind is FactKind.CANCEL:
            task = v["task"]
        slot, task = v.pop("_slot", slot), v.pop("_task", task)
        return Fact(rule.kind, n, slot, task, t_s, v)
    return None


@dataclass
class ParsedLog:
    """A whole log parsed in memory (for tests and small logs; big logs use ``iter_facts``)."""

    facts: list[Fact]
    stats: LogStats

    def of(self, kind: FactKind) -> list[Fact]:
        """The facts of one kind, in log order."""
        return [f for f in self.facts if f.kind is kind]


def parse_log(path: str | Path) -> ParsedLog:
    """Parse a log into a list of facts plus its counts (raises LogError for a non-log)."""
    stats = LogStats()
    facts = list(iter_facts(path, stats))
    check_is_log(stats)
    return ParsedLog(facts, stats)


def check_is_log(stats: LogStats) -> None:
    """Raise LogError when what was read is empty, binary, or has no llama-server line at all."""
    p = stats.path
    if stats.lines == 0 or stats.lines == stats.blank:
        raise LogError(f"{p}: empty file, expected a llama-server log")
    if stats.known == 0:
        if stats.binary > 0 and stats.binary >= (stats.lines - stats.blank) // 2:
            raise LogError(f"{p}: binary data ({stats.binary} of {stats.lines} lines are not UTF-8 text), "
                           "expected a llama-server log")
        raise LogError(f"{p}: no llama-server log lines found in {stats.lines} lines "
                       "(is this a llama-server log?)")

