"""The vocabulary: small frozen records shared by every module. No logic beyond derived properties.

A run's per-request results and events are stored as columns and tuples (``Results``,
``Events``): a replay makes millions of them and most readers only sum them. Iterating either
gives the records below.

Token positions follow llama-server: a checkpoint with ``n_tokens = k`` holds the recurrent state
after the first k tokens of the slot's sequence (``pos_min = pos_max = k - 1`` for hybrid models).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import NamedTuple

import numpy as np


class EventKind(str, Enum):
    """Event kinds, named after the server's own log lines (spec §6)."""

    SLOT_SELECTED = "slot_selected"          # "selected slot by LCP similarity|LRU|id"
    CREATED = "created"                      # "created context checkpoint %d of %d (...)"
    RESTORED = "restored"                    # "restored context checkpoint (...)"
    ERASED_INVALIDATED = "erased_invalidated"  # "erased invalidated context checkpoint (...)"
    ERASED_OLD = "erased_old"                # "erasing old context checkpoint (...)" (count/byte cap)
    ERASED_SPACING = "erased_spacing"        # "erasing context checkpoint too close to an earlier one"
    SUPERSEDED = "superseded"                # "superseding context checkpoint at n_tokens = %ld"
    DROPPED = "dropped"                      # a policy let go of a checkpoint it will not need (no server line)
    FULL_REPROCESS = "full_reprocess"        # "forcing full prompt re-processing due to lack of cache data"
    CACHE_SAVE = "cache_save"                # prompt cache: " - saving prompt with length %d"
    CACHE_LOAD = "cache_load"                # prompt cache: " - found better prompt with f_keep ..."
    CACHE_EVICT = "cache_evict"              # prompt cache: " - cache size limit reached, removing oldest entry"


@dataclass(frozen=True, slots=True)
class Request:
    """One prompt sent to the server, as stored in a trace.

    ``parent``/``n_shared`` encode the prefix structure: the prompt shares its first
    ``n_shared`` tokens with the sequence of request ``parent`` (that request's prompt followed
    by its output), and ``parent`` is the earlier request it shares the most with (-1: none).
    """

    id: int
    session: str
    t_s: float
    n_prompt: int
    n_output: int
    parent: int = -1
    n_shared: int = 0
    user_starts: tuple[int, ...] = ()   # positions where user messages start, whole prompt
    tool_starts: tuple[int, ...] = ()   # positions where tool outputs start, whole prompt
    observed: dict | None = None        # facts a log reported for this request (validation only)

    @property
    def n_seq(self) -> int:
        """Length of this request's full sequence: prompt followed by its output."""
        return self.n_prompt + self.n_output


class Checkpoint(NamedTuple):
    """A saved recurrent state of one slot: covers the first ``n_tokens`` cached tokens.

    A named tuple rather than a frozen dataclass: a replay creates one per checkpoint, and a
    tuple is made in a third of the time (the records a replay makes per request or per
    checkpoint are named tuples; the rest stay frozen dataclasses)."""

    n_tokens: int
    size_mib: float
    task_id: int       # request that created it (the server's id_task, #25472)
    created_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Event:
    """Something the simulated server did, in the server's vocabulary."""

    kind: EventKind
    request_id: int
    slot: int
    n_tokens: int = -1       # checkpoint position, prompt length saved/loaded, ...
    size_mib: float = 0.0
    detail: str = ""


@dataclass(frozen=True, slots=True)
class RequestResult:
    """What replaying one request cost (metric definitions: README, "Metrics")."""

    request_id: int
    session: str
    slot: int
    arrival_s: float
    start_s: float
    n_prompt: int
    n_output: int
    n_true_prefix: int        # LCP of the prompt with the slot's cache before the request
    n_cached: int             # tokens reused (the server's cache_n)
    n_reprocessed: int        # prompt tokens prefilled (the server's prompt_n)
    restored_n_tokens: int    # position of the restored checkpoint, -1 if none
    full_reprocess: bool      # a search found no usable checkpoint and the prompt was redone from 0
    n_created: int
    n_evicted: int
    n_invalidated: int
    prefill_ms: float
    restore_ms: float
    create_ms: float
    ttft_ms: float            # queue wait (slot, then device) + restore + prefill + checkpoint creation
    finish_s: float
    ckpt_mib_after: float     # checkpoint memory held by all slots after this request
    cache_ram_mib_after: float = 0.0
    created_at: tuple[int, ...] = field(default=())
    device_wait_ms: float = 0.0   # part of the queue wait spent behind other slots' prompts (spec §9.3)

    @property
    def n_lost(self) -> int:
        """Tokens that were in the common prefix but had to be re-processed anyway."""
        return self.n_true_prefix - self.n_cached


RESULT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(RequestResult))
_RESULT_DTYPES = {f.name: (bool if f.type == "bool" else np.int64 if f.type == "int" else np.float64)
                  for f in fields(RequestResult) if f.name not in ("session", "created_at")}


class Results(Sequence):
    """One run's per-request results, in service order, kept as columns (one numpy array per
    ``RequestResult`` field); indexing or iterating builds ``RequestResult`` rows on demand.

    ``column(name)`` is the array of one field; ``created_at`` is stored flat with offsets.
    """

    __slots__ = ("_cols", "_session", "_created", "_created_end")

    def __init__(self, columns: dict[str, np.ndarray], session: list[str], created: np.ndarray,
                 created_end: np.ndarray):
        self._cols = columns
        self._session = session
        self._created = created          # every request's created_at, concatenated
        self._created_end = created_end  # where each request's run of ``_created`` ends

    @classmethod
    def from_rows(cls, rows: Sequence[RequestResult]) -> Results:
        """Columns from RequestResult rows."""
        cols = {k: np.array([getattr(r, k) for r in rows], dtype=dt) for k, dt in _RESULT_DTYPES.items()}
        created = [k for r in rows for k in r.created_at]
        ends = np.cumsum([len(r.created_at) for r in rows], dtype=np.int64)
        return cls(cols, [r.session for r in rows], np.array(created, dtype=np.int64), ends)

    def __len__(self) -> int:
        return len(self._session)

    def column(self, name: str) -> np.ndarray:
        """The values of field ``name`` for every request, in service order (a numpy array)."""
        if name == "session":
            return np.array(self._session, dtype=object)
        if name == "created_at":
            return np.array(self.created_at_lists(), dtype=object)
        return self._cols[name]

    def created_at_lists(self) -> list[tuple[int, ...]]:
        """Each request's ``created_at``."""
        flat = self._created.tolist()
        out, s = [], 0
        for e in self._created_end.tolist():
            out.append(tuple(flat[s:e]))
            s = e
        return out

    def _rows(self, lo: int, hi: int) -> list[RequestResult]:
        cols = [self._session[lo:hi] if k == "session" else None if k == "created_at"
                else self._cols[k][lo:hi].tolist() for k in RESULT_FIELDS]
        ends = self._created_end
        start = int(ends[lo - 1]) if lo > 0 else 0
        flat = self._created[start:int(ends[hi - 1]) if hi > lo else start].tolist()
        created, s = [], 0
        for e in (ends[lo:hi] - start).tolist():
            created.append(tuple(flat[s:e]))
            s = e
        cols[RESULT_FIELDS.index("created_at")] = created
        return [RequestResult(*vals) for vals in zip(*cols)]

    def __getitem__(self, i):
        if isinstance(i, slice):
            lo, hi, step = i.indices(len(self))
            if step != 1:
                return [self[j] for j in range(lo, hi, step)]
            return self._rows(lo, hi) if hi > lo else []
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("result index out of range")
        return self._rows(i, i + 1)[0]

    def __iter__(self) -> Iterator[RequestResult]:
        n, step = len(self), 4096
        for lo in range(0, n, step):
            yield from self._rows(lo, min(n, lo + step))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Results):
            return (self._session == other._session
                    and all(np.array_equal(self._cols[k], other._cols[k]) for k in self._cols)
                    and np.array_equal(self._created, other._created)
                    and np.array_equal(self._created_end, other._created_end))
        if isinstance(other, (list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Results({len(self)} requests)"


class Events(Sequence):
    """One run's events in the order they happened, stored as plain tuples; ``Event`` records are
    built on demand (a replay emits millions, and most runs only count them)."""

    __slots__ = ("_rows",)

    def __init__(self, rows: list[tuple]):
        self._rows = rows      # (kind, request_id, slot, n_tokens, size_mib, detail)

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [Event(*t) for t in self._rows[i]]
        return Event(*self._rows[i])

    def __iter__(self) -> Iterator[Event]:
        for t in self._rows:
            yield Event(*t)

    def count_kind(self, kind: EventKind) -> int:
        """How many events of ``kind``."""
        return sum(1 for t in self._rows if t[0] is kind)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Events):
            return self._rows == other._rows
        if isinstance(other, (list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Events({len(self)})"
