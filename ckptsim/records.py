"""The vocabulary: small frozen records shared by every module. No logic beyond derived properties.

Token positions follow llama-server: a checkpoint with ``n_tokens = k`` holds the recurrent state
after the first k tokens of the slot's sequence (``pos_min = pos_max = k - 1`` for hybrid models).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


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


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A saved recurrent state of one slot: covers the first ``n_tokens`` cached tokens."""

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
