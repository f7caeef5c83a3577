"""Seeded synthetic agent workloads: traces with the prefix patterns real clients produce.

Every kind is a small conversation model. A conversation is a list of *segments*, each the first
``n`` tokens of a content stream with an id (system prompt, a user message, a tool result, an
assistant output, ...). Two sequences agree token by token exactly as long as their segment lists
agree, and at the first differing segment they share ``min(n_a, n_b)`` more tokens when both are
pieces of the same stream (an edited file cut at an offset, an output whose reasoning was
dropped after its first tokens), else nothing::

    earlier sequence  |sys 4000|user 200|hdr 3|out 300 ............|
    next prompt       |sys 4000|user 200|hdr 3|out 1|answer 120|tool 900|hdr 3|
                                                   ^ n_shared = 4204 (ends inside the output)

The parent of each request (the earlier sequence sharing the longest prefix, latest on ties) is
found in a trie over segments, so traces keep the invariant :mod:`ckptsim.trace` relies on even
when compaction or edits make an older request the best match.

Lengths count tokens of a Qwen3-style ChatML rendering and include each message's template
wrapper. Arrival times assume a client that sends the next request when the previous answer is
complete plus a tool or user delay; the simulator queues requests that arrive while the server
is busy. The module is pure Python + numpy: same seed and parameters, same trace.
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from .records import Request
from .trace import TraceHeader, TraceWriter

GENERATOR_VERSION = 1

# Template sizes in tokens: "<|im_start|>assistant\n" opens the turn the server generates, and
# "<|im_start|>user\n" opens a user message (an edited message keeps at least this much).
HEADER_TOKENS = 3
USER_HEADER_TOKENS = 3

# Segment roles; only the first piece of a message carries its role, later pieces are CONT.
SYS, USER, TOOL, ASSIST, CONT, HDR = range(6)

# A segment: (content id, n_tokens, role, editable). Tuples keep the 10k-request benchmark fast.
Seg = tuple[int, int, int, bool]

KEEP_THINK = ("never", "loop", "always")


@dataclass(frozen=True)
class AgentParams:
    """Parameters of a tool-calling agent loop (kind ``agent-append``); ranges are (lo, hi), log-uniform."""

    system_tokens: tuple[int, int] = (2000, 8000)   # drawn once per agent: sessions share it
    user_tokens: tuple[int, int] = (30, 600)        # a task given by the user
    tool_tokens: tuple[int, int] = (100, 4000)      # a tool result (file read, grep, test run)
    output_tokens: tuple[int, int] = (50, 800)      # one assistant turn (reasoning + tool call)
    max_prompt_tokens: int = 65536                  # the session ends before a prompt exceeds this
    steps_per_task: float = 8.0                     # mean tool steps per user task (geometric)
    tasks_per_session: float = 6.0                  # mean user tasks per session (geometric)
    think_frac: float = 0.0                         # share of each output that is <think> reasoning
    keep_think: str = "loop"                        # when earlier turns keep their reasoning
    think_open_tokens: int = 1                      # output tokens a reasoning-less re-render keeps
    shared_system: bool = True                      # all sessions of one agent send one system prompt
    prefill_tps: float = 1400.0                     # estimate for arrival times only (PR #19970: ~60k in 43 s)
    decode_tps: float = 40.0
    tool_latency_s: tuple[float, float] = (0.2, 8.0)
    user_delay_s: tuple[float, float] = (5.0, 120.0)

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, tuple):
                if len(v) != 2 or not (0 < v[0] <= v[1]):
                    raise ValueError(f"parameter {f.name} must be a range (lo, hi) with 0 < lo <= hi, got {v}")
        if self.max_prompt_tokens < 1:
            raise ValueError("parameter max_prompt_tokens must be >= 1")
        for name in ("steps_per_task", "tasks_per_session", "prefill_tps", "decode_tps"):
            if not getattr(self, name) >= 1e-9:
                raise ValueError(f"parameter {name} must be > 0")
        if not 0.0 <= self.think_frac < 1.0:
            raise ValueError(f"parameter think_frac must be in [0, 1), got {self.think_frac}")
        if self.keep_think not in KEEP_THINK:
            raise ValueError(f"parameter keep_think must be one of {', '.join(KEEP_THINK)}, "
                             f"got {self.keep_think!r}")
        if self.think_open_tokens < 0:
            raise ValueError("parameter think_open_tokens must be >= 0")
        for f in fields(self):
            if f.name.startswith("p_") and not 0.0 <= getattr(self, f.name) <= 1.0:
                raise ValueError(f"parameter {f.name} must be a probability in [0, 1]")


@dataclass(frozen=True)
class EditParams(AgentParams):
    """Parameters of a coding agent that edits files already in its context (kind ``agent-edit``)."""

    think_frac: float = 0.3
    p_file: float = 0.6           # share of tool results that are file contents (editable later)
    p_edit: float = 0.3           # chance that a step edits a file in context (when one is there)
    edit_delta_tokens: int = 64   # an edit changes the file's length by at most this much
    edit_result_tokens: tuple[int, int] = (20, 80)


@dataclass(frozen=True)
class ChatParams(AgentParams):
    """Parameters of a chat whose user sometimes rewrites the last message (kind ``chat-edit``)."""

    user_tokens: tuple[int, int] = (20, 1500)
    think_frac: float = 0.5
    keep_think: str = "never"
    turns_per_session: float = 12.0    # mean user turns per chat (geometric)
    p_edit: float = 0.25               # chance that the next turn rewrites the last user message


@dataclass(frozen=True)
class CompactionParams(AgentParams):
    """Parameters of an agent that compacts its history into a summary (kind ``compaction``)."""

    tasks_per_session: float = 30.0
    compact_at_tokens: int = 32768          # compaction starts when the history reaches this
    instruction_tokens: tuple[int, int] = (100, 300)  # "summarise the conversation so far ..."
    summary_tokens: tuple[int, int] = (500, 2000)     # the summary the model writes


@dataclass(frozen=True)
class MultiParams(EditParams):
    """Parameters of several concurrent agent sessions on one server (kind ``multi-session``)."""

    n_sessions: int = 4            # sessions running at the same time
    edit_share: float = 0.5        # share of sessions that are agent-edit (the rest agent-append)
    start_spread_s: float = 30.0   # concurrent sessions start uniformly within this window

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_sessions < 1:
            raise ValueError("parameter n_sessions must be >= 1")
        if not 0.0 <= self.edit_share <= 1.0:
            raise ValueError("parameter edit_share must be in [0, 1]")


# ---------------------------------------------------------------------------------------------
# shared state of one generation run


class _Ctx:
    """Random generator, content-id counter and per-agent system prompts of one run."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.n_ids = 0
        self.systems: dict[str, Seg] = {}
        self.n_sessions = 0

    def new_id(self) -> int:
        self.n_ids += 1
        return self.n_ids

    def loguniform(self, lo_hi: tuple[float, float]) -> float:
        lo, hi = lo_hi
        if lo == hi:
            return float(lo)
        return float(math.exp(self.rng.uniform(math.log(lo), math.log(hi))))

    def n_tokens(self, lo_hi: tuple[int, int]) -> int:
        return max(1, int(round(self.loguniform(lo_hi))))

    def geometric(self, mean: float) -> int:
        """A count >= 1 with the given mean (geometric), by inversion so only uniform draws are used."""
        q = 1.0 - min(1.0, 1.0 / mean)
        if q <= 0.0:
            return 1
        u = 1.0 - float(self.rng.random())   # in (0, 1]
        return 1 + int(math.log(u) / math.log(q))

    def system(self, agent: str, p: AgentParams) -> Seg:
        """The system prompt of an agent, shared by its sessions unless ``shared_system`` is off."""
        if not p.shared_system:
            return (self.new_id(), self.n_tokens(p.system_tokens), SYS, False)
        if agent not in self.systems:
            self.systems[agent] = (self.new_id(), self.n_tokens(p.system_tokens), SYS, False)
        return self.systems[agent]

    def session_name(self) -> str:
        self.n_sessions += 1
        return f"s{self.n_sessions - 1}"


@dataclass(frozen=True, slots=True)
class _Turn:
    """One request as a session produces it: prompt segments and the output stream."""

    session: str
    t_s: float
    prompt: tuple[Seg, ...]
    out_id: int
    n_output: int


# ---------------------------------------------------------------------------------------------
# sessions


class _AgentSession:
    """A tool-calling agent: tasks from the user, each a loop of (assistant turn, tool result).

    Kinds ``agent-append`` (edit off), ``agent-edit`` and ``compaction`` are this loop with one
    extra behaviour each; the pieces are methods so the variations stay a few lines.
    """

    agent = "agent-append"

    def __init__(self, ctx: _Ctx, p: AgentParams, t0_s: float):
        self.ctx, self.p, self.t_s = ctx, p, t0_s
        self.name = ctx.session_name()
        self.segs: list[Seg] = []
        self.last: _Turn | None = None
        self.outputs: dict[int, int] = {}     # output id -> reasoning tokens in it
        self.since_user: list[int] = []       # indices of outputs rendered with reasoning since the last user message
        self.steps_left = 0
        self.tasks_left = ctx.geometric(p.tasks_per_session)

    # -- rendering -----------------------------------------------------------------------------
    def _render_output(self, out_id: int, n_out: int, keep: bool) -> list[Seg]:
        """An earlier assistant turn as the client re-renders it in a later prompt."""
        think = self.outputs.get(out_id, 0)
        if keep or think == 0:
            return [(out_id, n_out, ASSIST, False)]
        # Qwen3-style templates drop <think>...</think> from earlier turns: the prompt keeps the
        # first think_open_tokens tokens of the output, then differs (spec §9.2).
        k = min(self.p.think_open_tokens, think)
        answer = max(1, n_out - think)
        if k == 0:
            return [(self.ctx.new_id(), answer, ASSIST, False)]
        return [(out_id, k, ASSIST, False), (self.ctx.new_id(), answer, CONT, False)]

    def _append_last_output(self) -> None:
        last = self.last
        assert last is not None
        keep = self.p.keep_think != "never"
        if self.p.keep_think == "loop" and self.outputs.get(last.out_id, 0):
            self.since_user.append(len(self.segs))
        self.segs.extend(self._render_output(last.out_id, last.n_output, keep))

    def _add_user(self, n_tokens: int) -> None:
        if self.p.keep_think == "loop" and self.since_user:
            # Qwen3's template keeps reasoning only for turns after the last user message: a new
            # user message strips it from all of them, so the prefix breaks at the first one.
            for i in reversed(self.since_user):
                out_id, n_out = self.segs[i][0], self.segs[i][1]
                self.segs[i:i + 1] = self._render_output(out_id, n_out, keep=False)
            self.since_user = []
        self.segs.append((self.ctx.new_id(), n_tokens, USER, False))

    def _n_prompt(self) -> int:
        return sum(s[1] for s in self.segs)

    def _emit(self, n_output: int | None = None) -> _Turn:
        """Close the prompt with the generation header and make the request."""
        c = self.ctx
        self.segs.append((c.new_id(), HEADER_TOKENS, HDR, False))
        n_out = c.n_tokens(self.p.output_tokens) if n_output is None else n_output
        out_id = c.new_id()
        think = int(round(self.p.think_frac * n_out))
        if think:
            self.outputs[out_id] = think
        self.last = _Turn(self.name, self.t_s, tuple(self.segs), out_id, n_out)
        return self.last

    def _advance_clock(self, n_new_prompt: int, user_turn: bool) -> None:
        """Arrival time of the next request: this answer's estimated duration plus a delay."""
        p, last = self.p, self.last
        busy = n_new_prompt / p.prefill_tps + (last.n_output if last else 0) / p.decode_tps
        delay = self.ctx.loguniform(p.user_delay_s if user_turn else p.tool_latency_s)
        self.t_s += busy + delay

    # -- the loop -----------------------------------------------------------------------------
    def next_turn(self, n_new_prompt: int) -> _Turn | None:
        """The session's next request, or None when the session is over."""
        c = self.ctx
        if self.last is None:
            self.segs = [c.system(self.agent, self.p)]
            self._add_user(c.n_tokens(self.p.user_tokens))
            self.steps_left = c.geometric(self.p.steps_per_task)
            return self._emit()
        self._append_last_output()
        special = self._special_step(n_new_prompt)
        if special is not None:
            return special
        if self.steps_left > 0:
            self.steps_left -= 1
            self._advance_clock(n_new_prompt, user_turn=False)
            self._tool_step()
        else:
            self.tasks_left -= 1
            if self.tasks_left <= 0:
                return None
            self._advance_clock(n_new_prompt, user_turn=True)
            self._add_user(c.n_tokens(self.p.user_tokens))
            self.steps_left = c.geometric(self.p.steps_per_task)
        if self._n_prompt() + HEADER_TOKENS > self.p.max_prompt_tokens:
            return None   # the context is full: the user starts a new session
        return self._emit()

    def _special_step(self, n_new_prompt: int) -> _Turn | None:
        """Hook for kinds that sometimes send something else than the next step of the loop."""
        return None

    def _tool_step(self) -> None:
        self.segs.append((self.ctx.new_id(), self.ctx.n_tokens(self.p.tool_tokens), TOOL, False))


class _EditSession(_AgentSession):
    """A coding agent whose tools rewrite files that are already in its context (kind ``agent-edit``)."""

    agent = "agent-edit"
    p: EditParams

    def _tool_step(self) -> None:
        c, p = self.ctx, self.p
        editable = [i for i, s in enumerate(self.segs) if s[3] and s[1] >= 2]
        if editable and c.rng.random() < p.p_edit:
            # The file is rewritten where it sits: the prompt equals the old one up to the edit,
            # then the rest of the history is sent again unchanged (a re-append).
            i = editable[int(c.rng.integers(len(editable)))]
            sid, n, role, _ = self.segs[i]
            off = int(c.rng.integers(1, n))
            tail = n - off
            delta = int(c.rng.integers(-min(tail - 1, p.edit_delta_tokens), p.edit_delta_tokens + 1))
            self.segs[i:i + 1] = [(sid, off, role, True), (c.new_id(), tail + delta, CONT, True)]
            self.since_user = [j + 1 if j > i else j for j in self.since_user]
            self.segs.append((c.new_id(), c.n_tokens(p.edit_result_tokens), TOOL, False))
            return
        is_file = bool(c.rng.random() < p.p_file)
        self.segs.append((c.new_id(), c.n_tokens(p.tool_tokens), TOOL, is_file))


class _CompactionSession(_AgentSession):
    """An agent that replaces its history by a summary when it grows long (kind ``compaction``)."""

    agent = "compaction"
    p: CompactionParams

    def __init__(self, ctx: _Ctx, p: AgentParams, t0_s: float):
        super().__init__(ctx, p, t0_s)
        self.summarising = False

    def _special_step(self, n_new_prompt: int) -> _Turn | None:
        c, p = self.ctx, self.p
        if self.summarising:
            # The summary (the previous output) becomes a user message after the system prompt;
            # only the system prompt is left in common with any earlier sequence.
            self.summarising = False
            self._advance_clock(n_new_prompt, user_turn=False)
            summary = self.last.n_output if self.last else 1
            self.segs = [self.segs[0]]
            self.since_user = []
            self._add_user(summary + USER_HEADER_TOKENS)
            return self._emit()
        if self._n_prompt() >= p.compact_at_tokens:
            self.summarising = True
            self._advance_clock(n_new_prompt, user_turn=False)
            self._add_user(c.n_tokens(p.instruction_tokens))
            return self._emit(n_output=c.n_tokens(p.summary_tokens))
        return None


class _ChatSession(_AgentSession):
    """A chat: user message, assistant answer, repeat; sometimes the user rewrites the last message."""

    agent = "chat-edit"
    p: ChatParams

    def __init__(self, ctx: _Ctx, p: AgentParams, t0_s: float):
        super().__init__(ctx, p, t0_s)
        self.turns_left = ctx.geometric(p.turns_per_session)  # type: ignore[attr-defined]
        self.last_user = -1          # index of the last user message's first piece
        self.before_last: list[Seg] = []

    def next_turn(self, n_new_prompt: int) -> _Turn | None:
        c, p = self.ctx, self.p
        if self.last is None:
            self.segs = [c.system(self.agent, p)]
        else:
            self._advance_clock(n_new_prompt, user_turn=True)
            if c.rng.random() < p.p_edit:
                self._edit_last_user()
                return self._finish()
            self.turns_left -= 1
            if self.turns_left <= 0:
                return None
            self._append_last_output()
        self.last_user = len(self.segs)
        self._add_user(max(USER_HEADER_TOKENS + 1, c.n_tokens(p.user_tokens)))
        return self._finish()

    def _edit_last_user(self) -> None:
        """The user edits the last message and resends; the answer to the old one is dropped.

        The new message agrees with the last version of the old one up to a uniform point between
        the end of its user header and the end of the shorter of the two; a second edit can so
        keep part of the first edit's new text.
        """
        c, p = self.ctx, self.p
        pieces = self.segs[self.last_user:]
        m = sum(s[1] for s in pieces)
        new_n = max(USER_HEADER_TOKENS + 1, c.n_tokens(p.user_tokens))
        keep_max = min(m, new_n - 1)
        keep_min = min(USER_HEADER_TOKENS, keep_max)
        keep = keep_min + int(c.rng.integers(0, keep_max - keep_min + 1))
        kept: list[Seg] = []
        acc = 0
        for sid, n, role, ed in pieces:
            if acc + n >= keep:
                if keep > acc:
                    kept.append((sid, keep - acc, role, ed))
                break
            kept.append((sid, n, role, ed))
            acc += n
        self.segs = self.segs[:self.last_user] + kept + [(c.new_id(), new_n - keep, CONT, False)]
        self.since_user = [i for i in self.since_user if i < self.last_user]

    def _finish(self) -> _Turn | None:
        if self.last is not None and self._n_prompt() + HEADER_TOKENS > self.p.max_prompt_tokens:
            return None
        return self._emit()


# ---------------------------------------------------------------------------------------------
# kinds


@dataclass(frozen=True)
class Kind:
    """A synthetic workload: its parameters and the sessions it runs."""

    name: str
    params: type[AgentParams]
    summary: str
    doc: str
    make_session: Callable[[_Ctx, Any, float], _AgentSession]
    lanes: Callable[[Any], int] = lambda p: 1


def _multi_session(ctx: _Ctx, p: MultiParams, t0_s: float) -> _AgentSession:
    cls = _EditSession if ctx.rng.random() < p.edit_share else _AgentSession
    s = cls(ctx, p, t0_s)
    if cls is _AgentSession:
        # Append sessions re-render their answers exactly, as kind agent-append does by default.
        s.p = replace(p, think_frac=0.0)
    return s


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("agent-append", AgentParams,
         "tool loop that only appends (tool result + assistant turn per step)",
         """Append-only tool loop. Each step appends the assistant turn (re-rendered exactly: no
         reasoning by default) and a tool result, so every prompt extends the previous sequence
         (n_shared = the parent's prompt + output) and the server resumes in place (spec §2.2).
         A new user task appends a user message. When the context would pass max_prompt_tokens
         the session ends and a new one starts with the same system prompt. Models OpenAI-style
         tool-calling agents (OpenCode, Claude Code, Codex CLI) against llama-server.""",
         lambda ctx, p, t: _AgentSession(ctx, p, t)),
    Kind("agent-edit", EditParams,
         "coding agent whose edits rewrite files in the middle of its context",
         """Coding agent that edits files already in its context. Tool results are file contents
         (share p_file) or command output. With chance p_edit a step edits one of the files in
         context in place: the prompt equals the previous one up to a random offset inside that
         file, then the rest of the history is sent again (truncation to an earlier point, then
         re-append). Tools such as ripgrep-edit with gptel's context LRU behave so; llama.cpp
         PR #19970 measured a 39x gain from checkpoints spread over the prompt on this pattern.
         Assistant turns carry think_frac reasoning that the template drops when a new user task
         starts (keep_think='loop').""",
         lambda ctx, p, t: _EditSession(ctx, p, t)),
    Kind("chat-edit", ChatParams,
         "chat where the user sometimes rewrites the last message",
         """Chat with edits of the last user turn. Each request is system + alternating user and
         assistant messages + a new user message. With chance p_edit the user rewrites the last
         message instead (the "edit" button of chat UIs): the answer to it is dropped and the
         prompt agrees with the old one up to the last user start + its header + part of the old
         text. The reasoning of earlier answers is not sent back (keep_think='never'), so a
         normal next turn shares the previous prompt plus think_open_tokens of its output
         (spec §9.2). User-turn checkpoints (PR #22929, spec §2.5) target this pattern.""",
         lambda ctx, p, t: _ChatSession(ctx, p, t)),
    Kind("compaction", CompactionParams,
         "agent that replaces its history by a summary when it grows long",
         """Context compaction. An agent loop as agent-append; when the history reaches
         compact_at_tokens, the client asks for a summary (a user instruction; the output is the
         summary) and starts over with system prompt + summary as a user message. The common
         prefix then drops to the system prompt and grows again, so the best parent of the next
         request is whatever shares the system prompt, not the previous request. Models the
         auto-compaction of coding agents (Claude Code /compact, OpenCode, Codex CLI).""",
         lambda ctx, p, t: _CompactionSession(ctx, p, t)),
    Kind("multi-session", MultiParams,
         "n_sessions concurrent agent sessions (append or edit), interleaved by arrival time",
         """Several concurrent sessions on one server: n_sessions lanes, each running sessions
         back to back, each session an agent-append (exact re-render: think_frac 0) or (share
         edit_share) agent-edit agent with the given parameters. Their
         requests interleave by arrival time; sessions of the same agent share its system prompt,
         so a session's first request has a parent in another session. This exercises slot
         selection by LCP similarity with -np > 1 (spec §2.1) and checkpoint budgets per slot.""",
         _multi_session, lambda p: p.n_sessions),
)}


def kind_names() -> list[str]:
    """Names of the synthetic kinds, in documentation order."""
    return list(KINDS)


def get_kind(kind: str) -> Kind:
    """The kind called ``kind``; a ValueError listing the known ones otherwise."""
    if kind not in KINDS:
        raise ValueError(f"unknown synthetic kind {kind!r}; known kinds: {', '.join(KINDS)}")
    return KINDS[kind]


def make_params(kind: str, **params: Any) -> AgentParams:
    """The parameters of ``kind`` with ``params`` overriding the defaults (checked)."""
    k = get_kind(kind)
    names = {f.name for f in fields(k.params)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)} for kind {kind}; "
                         f"known: {', '.join(sorted(names))}")
    fixed = {}
    for f in fields(k.params):
        if f.name in params:
            default = getattr(k.params(), f.name)
            fixed[f.name] = _coerce(f.name, params[f.name], default)
    return k.params(**fixed)


def _coerce(name: str, v: Any, default: Any) -> Any:
    """Convert a value (possibly a CLI string such as "200,3000") to the type of the default."""
    if isinstance(default, tuple):
        if isinstance(v, str):
            v = [x for x in v.strip("()[] ").split(",") if x.strip()]
        if not isinstance(v, (list, tuple)) or len(v) not in (1, 2):
            raise ValueError(f"parameter {name}: expected a range lo,hi, got {v!r}")
        lo_hi = tuple(_coerce(name, x, default[0]) for x in v)
        return lo_hi if len(lo_hi) == 2 else (lo_hi[0], lo_hi[0])
    try:
        if isinstance(default, bool):
            if isinstance(v, str):
                if v.lower() in ("1", "true", "yes", "on"):
                    return True
                if v.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(v)
            return bool(v)
        if isinstance(default, int):
            f = float(v)
            if f != int(f):
                raise ValueError(v)
            return int(f)
        if isinstance(default, float):
            return float(v)
        return str(v)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"parameter {name}: cannot read {v!r} as {type(default).__name__}") from None


# ---------------------------------------------------------------------------------------------
# the driver: merge sessions, find parents


class _SegTrie:
    """Trie over segment sequences; finds the earlier sequence sharing the longest prefix.

    A node is ``[latest request through it, {content id: {n_tokens: child}}]``. Children of one
    node with the same content id are pieces of one stream, so a query piece (id, q) shares
    ``min(q, n)`` tokens with a child (id, n) even when the lengths differ.
    """

    def __init__(self) -> None:
        self.root: list = [-1, {}]

    def add(self, rid: int, prompt: tuple[Seg, ...], out: Seg) -> tuple[int, int]:
        """Insert request ``rid`` (prompt + output); returns (parent, n_shared) of its prompt."""
        node = self.root
        depth = 0
        latest_here = -1      # latest request through ``node`` before this one
        parent, n_shared = -1, 0
        stop = len(prompt)
        for i, s in enumerate(prompt):
            by_len = node[1].get(s[0])
            if by_len is None:
                stop = i
                break
            child = by_len.get(s[1])
            if child is None:
                best_m, best_r = 0, -1
                for n, c in by_len.items():
                    m = n if n < s[1] else s[1]
                    if m > best_m or (m == best_m and c[0] > best_r):
                        best_m, best_r = m, c[0]
                parent, n_shared = best_r, depth + best_m
                stop = i
                break
            # This request's sequence passes through ``child``: it becomes the latest there.
            latest_here, child[0] = child[0], rid
            node = child
            depth += s[1]
        if parent < 0 and depth > 0:
            parent, n_shared = latest_here, depth
        for s in prompt[stop:] + (out,):
            nxt = [rid, {}]
            node[1].setdefault(s[0], {})[s[1]] = nxt
            node = nxt
        return parent, n_shared

    def forget(self, system: Seg, keys: set[int], whole_system: bool) -> None:
        """Drop the sequences of a finished session: nothing later can share more than its system prompt.

        ``keys`` are the content ids that follow the system prompt in the session's prompts (its
        first user message, a compaction summary); they are fresh per session, so no later prompt
        walks into them. The system node itself keeps its latest request.
        """
        by_len = self.root[1].get(system[0])
        if by_len is None:
            return
        if whole_system:
            del self.root[1][system[0]]
            return
        node = by_len.get(system[1])
        if node is not None:
            for k in keys:
                node[1].pop(k, None)


def _lengths_and_positions(prompt: tuple[Seg, ...]) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """Prompt length, user-message starts and tool-result starts of a segment list."""
    users: list[int] = []
    tools: list[int] = []
    pos = 0
    for _, n, role, _ in prompt:
        if role == USER:
            users.append(pos)
        elif role == TOOL:
            tools.append(pos)
        pos += n
    return pos, tuple(users), tuple(tools)


def generate(kind: str, n_requests: int, seed: int, **params: Any) -> Iterator[Request]:
    """Yield ``n_requests`` requests of the synthetic ``kind`` (see KINDS), deterministic for ``seed``.

    A shorter run is a prefix of a longer one with the same seed and parameters.
    """
    p = make_params(kind, **params)
    if n_requests < 0:
        raise ValueError(f"n_requests must be >= 0, got {n_requests}")
    return _drive(get_kind(kind), p, n_requests, seed)


def _drive(k: Kind, p: AgentParams, n_requests: int, seed: int) -> Iterator[Request]:
    for r, _ in _requests_and_turns(k, p, n_requests, seed):
        yield r


def _requests_and_turns(k: Kind, p: AgentParams, n_requests: int,
                        seed: int) -> Iterator[tuple[Request, _Turn]]:
    """The engine: run the sessions, merge them by arrival time, find each prompt's parent."""
    if n_requests <= 0:
        return
    ctx = _Ctx(np.random.default_rng(seed))
    n_lanes = k.lanes(p)
    spread = getattr(p, "start_spread_s", 0.0) if n_lanes > 1 else 0.0
    heap: list[tuple[float, int, _Turn]] = []
    lanes: list[_AgentSession] = []
    for lane in range(n_lanes):
        t0 = float(ctx.rng.uniform(0.0, spread)) if spread > 0 else 0.0
        sess = k.make_session(ctx, p, t0)
        lanes.append(sess)
        turn = sess.next_turn(0)
        assert turn is not None, "a session's first request is always sent"
        heapq.heappush(heap, (turn.t_s, lane, turn))
    trie = _SegTrie()
    # Per lane, the ids that follow the system prompt in the current session's prompts, so its
    # part of the trie can be dropped when it ends (memory stays bounded on long traces).
    owned: list[set[int]] = [set() for _ in range(n_lanes)]
    for rid in range(n_requests):
        t_s, lane, turn = heapq.heappop(heap)
        parent, n_shared = trie.add(rid, turn.prompt, (turn.out_id, turn.n_output, ASSIST, False))
        owned[lane].add(turn.prompt[1][0])
        n_prompt, users, tools = _lengths_and_positions(turn.prompt)
        yield Request(id=rid, session=turn.session, t_s=round(t_s, 3), n_prompt=n_prompt,
                      n_output=turn.n_output, parent=parent, n_shared=n_shared,
                      user_starts=users, tool_starts=tools), turn
        if rid + 1 == n_requests:
            return
        sess = lanes[lane]
        nxt = sess.next_turn(n_prompt - n_shared)
        while nxt is None:
            # The session is over: the same lane starts a new one after a user delay.
            trie.forget(sess.segs[0], owned[lane], whole_system=not sess.p.shared_system)
            owned[lane] = set()
            t0 = sess.t_s + (sess.last.n_output / p.decode_tps if sess.last else 0.0) \
                + ctx.loguniform(p.user_delay_s)
            sess = lanes[lane] = k.make_session(ctx, p, max(t0, t_s))
            nxt = sess.next_turn(0)
        heapq.heappush(heap, (nxt.t_s, lane, nxt))


def header_for(kind: str, n_requests: int, seed: int, p: AgentParams) -> TraceHeader:
    """The trace header that records how a synthetic trace was made."""
    k = get_kind(kind)
    meta = {"kind": kind, "seed": seed, "n_requests": n_requests,
            "generator_version": GENERATOR_VERSION, "params": asdict(p)}
    return TraceHeader(name=kind, source=f"ckptsim synth {kind} --seed {seed} --requests {n_requests}",
                       tokenizer="synthetic (Qwen3-style ChatML token counts)", derived=False,
                       notes=k.summary, meta=meta)


def write_synth(path: str, kind: str, n_requests: int, seed: int, overwrite: bool = False,
                on_request: Callable[[int], None] | None = None, **params: Any) -> dict:
    """Generate a synthetic trace into ``path``; returns a summary (requests, sessions, tokens)."""
    p = make_params(kind, **params)
    header = header_for(kind, n_requests, seed, p)
    sessions: set[str] = set()
    n_prompt_total = n_shared_total = max_prompt = 0
    with TraceWriter(path, header, overwrite=overwrite) as w:
        for r in _drive(get_kind(kind), p, n_requests, seed):
            w.write(r)
            sessions.add(r.session)
            n_prompt_total += r.n_prompt
            n_shared_total += r.n_shared
            max_prompt = max(max_prompt, r.n_prompt)
            if on_request is not None:
                on_request(r.id)
    return {"path": str(path), "kind": kind, "seed": seed, "n_requests": w.n_written,
            "n_sessions": len(sessions), "prompt_tokens": n_prompt_total,
            "shared_tokens": n_shared_total, "max_prompt_tokens": max_prompt,
            "params": asdict(p)}
