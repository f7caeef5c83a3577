"""``adaptive``: an online checkpoint policy that learns where restores land (docs/policies.md,
"## adaptive").

What the oracle does on the real traces (``python bench/oracle_analysis.py``): a restore lands
where a *message* starts, a few tokens in, at a depth counted in messages from the end of the
sequence the slot holds that barely changes within a workload (SWE history elision: 4 messages
below the previous prompt's end for 77-95% of edits; Claude Code: the previous prompt's end for
91%); and each checkpoint the oracle makes is restored about once, one or a few requests later.
Everything else a server keeps is dead weight, and on one slot with ``--cache-ram`` it is worse
than dead: every prompt-cache entry carries a copy of the slot's checkpoints (spec §5), so 32
checkpoints of 63 MiB push whole conversations out of an 8 GiB cache.

So the policy keeps statistics of *needs* (the largest position a checkpoint could have served
each request at), classed by where they sit in the slot's previous sequence:

- ``end``: at or past the end of its prompt (the new prompt diverges in the generated output);
- ``tail d``: a few tokens above the start of the message with d message starts above it;
- ``head i``: a few tokens above the i-th message start (a system prompt shared across sessions);
- ``tok j``: anywhere else, T_prev - need in [2^j, 2^(j+1)) tokens.

A need at a message start both near the head and near the tail of a short sequence is shared
between the two in proportion to the unambiguous needs each has had (half each before any). Requests that need nothing (pure extensions, unrelated prompts) count too, so a class's
share is the chance that the next request needs it. While a prompt is prefilled the policy places a
checkpoint at each class's position in *this* prompt whose share and token value are worth a
checkpoint's bytes, and after the request lets go of every checkpoint that is not at such a
position (``prune``), keeping at most ``keep`` per slot. A checkpoint's bytes count against
``--cache-ram`` only while the prompt cache evicts entries: a cache with room (four interleaved
sessions) loses nothing to them, a full one (hundreds of SWE sessions) loses conversations.
For the first ``warmup`` requests, with too few needs seen, it places and evicts as the current
server does, adding only the positions the needs seen so far are already worth, as many as the
cap leaves room for beside the server's own.

A sequence's *first* edit fits none of those classes well: it lands deep in a prompt that so far
was only extended, on a message start prefilled requests earlier as the prompt's last (SWE
history elision: the first observation, 4 starts deep, 5 requests after it was prefilled), when
no class said to keep it. So the policy also remembers, per sequence, whether it has only been
extended since its opening prompt, and learns at which message start (counted from the head, a
position that does not move while a sequence is only extended) first edits land, per request on
such a sequence. While a sequence is unedited it keeps those starts too, at that chance, after
the positions above and only in the room the cap leaves (``first``).

A need in the previous prompt's last ubatch, more than 16 tokens below its end and not at a message
start, also counts at the server's own break point there, ``T - 4 - n_ubatch`` (``near``): on the
Claude Code traces such needs follow a request that re-rendered the conversation, at a depth that
differs each time, and that one position serves them all.

Everything it reads is something the server knows when a task starts (``PrefillView``): the
common prefix of the slot's cache with the prompt (``lcp_n_tokens``, the server's ``n_past`` before
the restore search), the slot's cache length (``cached_n_tokens``), which earlier task left that cache
(``cached_task``; the prompt cache's entries would carry it), the prompt cache's eviction count
(``n_cache_evicted``) and the message starts of each prompt it prefills; with them, whether the
sequence it leaves was only extended (kept beside its message starts, as they are).
"""
from __future__ import annotations

import bisect
import math
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from .records import Checkpoint
from .server import (DEFAULT_BUILD, PrefillPlan, ServerRules, batch_counts, server_placement, spacing_pass_runs,
                     spacing_victims)

# A need this many tokens above a message start counts as landing at that message (the role
# header of a rewritten message is shared: 3 tokens for ChatML's '<|im_start|>user\n').
_SLACK_TOKENS = 16
_MEMORY_PROMPTS = 4096     # prompts whose message starts are remembered (the server: per cache entry)


_SERVER = ServerRules(DEFAULT_BUILD)   # the rules the warm-up places by
_GRID = 2 ** (1 / 16)          # token depths and positions are learned on a geometric grid of this ratio


def _grid_up(x: int) -> int:
    """The smallest grid value >= x (a deeper depth: the checkpoint lands lower and still serves)."""
    return x if x <= 16 else int(math.ceil(_GRID ** math.ceil(math.log(x, _GRID) - 1e-9)))


def _grid_down(x: int) -> int:
    """The largest grid value <= x (a lower position: still at or below every need it stands for)."""
    return x if x <= 16 else int(_GRID ** math.floor(math.log(x, _GRID) + 1e-9))


@dataclass
class AdaptiveRules:
    """The ``adaptive`` policy's state and rules (registered as ``policies.Adaptive``; kept apart
    so this module needs nothing of the registry): checkpoints where the needs seen so far say the
    next restores will land; the rest let go."""

    keep: int = 8             # checkpoints kept per slot after a request
    min_tokens: int = 8       # keep a checkpoint when it saves at least this many tokens per request
    cache_pct: int = 100      # ... plus this share of the tokens its bytes would hold in --cache-ram,
                              # scaled by how often a swap through the prompt cache evicts an entry
    half_life: int = 400      # requests: older needs weigh half as much
    tail_max: int = 16        # deepest message depth (from the end) learned as a class of its own
    head_max: int = 2         # message starts counted from the beginning (shared system prompts)
    warmup: int = 32          # requests placed as the current server does while the needs are few
    warm_learn: int = 1       # 1: the warm-up adds the positions the needs seen so far are worth
    first: int = 1            # 1: while a sequence has only been extended, also keep the message
                              # starts where other sequences' first edits landed (in the cap's room)
    near: int = 1             # 1: a need in the previous prompt's last ubatch (deeper than 16 tokens)
                              # also counts at the server's break point there (T - 4 - n_ubatch)
    opening: int = 2          # a prompt sharing at most the head of the slot's first message opens
                              # an unedited sequence if it has at most this many message starts
    _meta: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False)
    _weights: dict = field(default_factory=dict, init=False, repr=False)   # class -> weight x scale
    _sure: dict = field(default_factory=dict, init=False, repr=False)      # ... of unambiguous needs only
    _total: float = field(default=0.0, init=False, repr=False)              # every request x scale
    _fweights: dict = field(default_factory=dict, init=False, repr=False)  # first edits: start index -> weight
    _ftotal: float = field(default=0.0, init=False, repr=False)             # requests on an unedited sequence
    _scale: float = field(default=1.0, init=False, repr=False)
    _n_seen: int = field(default=0, init=False, repr=False)
    _want: dict | None = field(default=None, init=False, repr=False)  # position -> greedy rank; None: warm-up
    _last_on_slot: dict = field(default_factory=dict, init=False, repr=False)
    _swaps: float = field(default=0.0, init=False, repr=False)              # swapping requests x scale
    _ckpt_tokens: float = field(default=0.0, init=False, repr=False)
    _evictions: float = field(default=0.0, init=False, repr=False)          # cache evictions x scale
    _n_evicted_seen: int = field(default=0, init=False, repr=False)
    _cap: int = field(default=32, init=False, repr=False)                  # --ctx-checkpoints
    _near_depth: int = field(default=516, init=False, repr=False)           # 4 + n_ubatch

    def __post_init__(self) -> None:
        for k in ("keep", "half_life"):
            if getattr(self, k) <= 0:
                raise ValueError(f"adaptive: {k} must be > 0")
        if min(self.min_tokens, self.cache_pct, self.tail_max, self.head_max, self.warmup, self.opening) < 0:
            raise ValueError("adaptive: min_tokens, cache_pct, tail_max, head_max, warmup and opening must be >= 0")
        self._growth = 2.0 ** (1.0 / self.half_life)

    def prepare(self, trace, config, profile, replay=None) -> None:
        """Read what the server knows of itself: the checkpoint size against the KV per token, and
        the cap (``--ctx-checkpoints``) the warm-up keeps its additions under.

        A checkpoint copied into a prompt-cache entry takes the room of ``ckpt_tokens`` tokens of
        another conversation (spec §5); with the cache off or unlimited it takes nobody's.
        """
        self._cap = config.ctx_checkpoints
        if config.cache_ram_mib > 0 and profile.kv_mib_per_ktok > 0:
            self._ckpt_tokens = profile.ckpt_mib(0) / profile.kv_mib_per_ktok * 1000.0

    # --- learning ---------------------------------------------------------------------------
    def _classify(self, need: int, src_prompt: int, starts: tuple[int, ...]) -> tuple[tuple, ...]:
        """Where a need sits in the sequence the slot held (module docstring): one class, or two
        sharing the need when a message start near the head is also near the tail (a short
        sequence: whether the next need is the shared system prompt or an edit a few messages
        back, only later needs tell)."""
        if need >= src_prompt:
            return (("end", 0),)
        i = bisect.bisect_right(starts, need) - 1
        if i >= 0 and need - starts[i] <= _SLACK_TOKENS:
            d = len(starts) - 1 - i
            if d <= self.tail_max and i <= self.head_max:
                return ("tail", d), ("head", i)
            if d <= self.tail_max:
                return (("tail", d),)
            if i <= self.head_max:
                return (("head", i),)
        if need * 2 < src_prompt:
            return (("abs", _grid_down(need)),)         # deep: a fixed prefix (system prompt, summary)
        return (("tok", _grid_up(src_prompt - need)),)

    def _observe(self, classes: tuple[tuple, ...] = ()) -> None:
        # Decay without touching every weight: new observations weigh more instead (rescaled
        # before the floats grow large).
        self._scale *= self._growth
        if self._scale > 1e100:
            self._weights = {c: w / self._scale for c, w in self._weights.items()}
            self._sure = {c: w / self._scale for c, w in self._sure.items()}
            self._total /= self._scale
            self._fweights = {c: w / self._scale for c, w in self._fweights.items()}
            self._ftotal /= self._scale
            self._swaps /= self._scale
            self._evictions /= self._scale
            self._scale = 1.0
        self._total += self._scale
        self._n_seen += 1
        if len(classes) == 1:
            c = classes[0]
            self._weights[c] = self._weights.get(c, 0.0) + self._scale
            self._sure[c] = self._sure.get(c, 0.0) + self._scale
            return
        # An ambiguous need (a start near both head and tail) is shared in proportion to the
        # unambiguous needs of its classes seen so far, each with half a request's worth of prior
        # (none seen: half each). Split evenly, un-elided SWE's system-prompt needs after a cache
        # miss, met on short sequences, spread over `tail d` for every d as if they were edits,
        # and those phantom edits together paid for mid-prompt checkpoints that were never
        # restored and only took prompt-cache room (docs/policies.md, "adaptive").
        prior = self._scale / 2
        ev = [self._sure.get(c, 0.0) + prior for c in classes]
        tot = sum(ev)
        for c, e in zip(classes, ev):
            self._weights[c] = self._weights.get(c, 0.0) + self._scale * e / tot

    def _learn(self, v: PrefillView) -> bool:
        """Learn from this task's need; whether its prompt leaves the sequence unedited (only
        extended since it started, as far as the slot's cache tells)."""
        n_new_evicted = max(v.n_cache_evicted - self._n_evicted_seen, 0)
        self._n_evicted_seen = v.n_cache_evicted
        last = self._last_on_slot.get(v.slot)
        self._last_on_slot[v.slot] = v.request_id
        swapped = last is not None and v.cached_task != last
        src = self._meta.get(v.cached_task) if v.cached_task >= 0 else None
        l, L, T = v.lcp_n_tokens, v.cached_n_tokens, v.n_prompt
        opening = len(v.user_starts) + len(v.tool_starts) <= self.opening
        if src is None or l <= 0 or (l == L and l < T):
            self._observe()       # nothing to restore: a fresh prompt or a pure extension
            if swapped:
                self._swaps += self._scale
            self._evictions += n_new_evicted * self._scale
            if src is None or l <= 0:
                return opening    # a new sequence, or one whose history is lost
            if src[2]:
                self._ftotal += self._scale
            return src[2]
        need = l if l < T else T - 1  # a fully cached prompt re-evaluates its last token
        classes = self._classify(need, src[0], src[1])
        self._observe(classes)
        if self.near and classes[0][0] == "tok" and 16 < src[0] - need <= self._near_depth:
            # a need in the previous prompt's last ubatch also counts at the server's break point
            # there, which serves every such need whatever depth it recurs at
            self._weights[("near", 0)] = self._weights.get(("near", 0), 0.0) + self._scale
        if swapped:
            self._swaps += self._scale
        self._evictions += n_new_evicted * self._scale
        if need >= src[0]:
            # diverges in the generated answer: the prompt itself was not edited
            if src[2]:
                self._ftotal += self._scale
            return src[2]
        starts = src[1]
        i = bisect.bisect_right(starts, need) - 1
        if i < 0 or (i == 0 and need - starts[0] <= _SLACK_TOKENS):
            # shares no more than the head of the first message (a shared system prompt): a new
            # sequence, or, past its opening, one whose prompt-cache entry was lost
            return opening
        if src[2]:
            self._ftotal += self._scale
            if need - starts[i] <= _SLACK_TOKENS:
                # the sequence's first edit, at its i-th message start: a start that stays where it
                # is while a sequence is only extended (docs/policies.md, "adaptive")
                self._fweights[i] = self._fweights.get(i, 0.0) + self._scale
        return False

    # --- which positions are worth their bytes -------------------------------------------------
    def _position(self, cls: tuple, T: int, starts: tuple[int, ...]) -> int:
        """Where a need of class ``cls`` would be served in a prompt of length T."""
        kind, x = cls
        if kind == "end":
            return T
        if kind == "tail":
            return starts[len(starts) - 1 - x] if x < len(starts) else -1
        if kind == "head":
            return starts[x] if x < len(starts) else -1
        if kind == "near":
            return T - self._near_depth
        if kind == "abs":
            return x if x < T else -1
        return T - x

    def _select(self, T: int, starts: tuple[int, ...], start: int, have: tuple[int, ...]) -> dict[int, int]:
        """Greedy: up to ``keep`` positions maximising the expected tokens saved per request."""
        mass: dict[int, float] = {}
        for c, w in self._weights.items():
            p = self._position(c, T, starts)
            if p > 0:
                mass[p] = mass.get(p, 0.0) + w
        return self._greedy(mass, self._total, T, starts, start, have, {}, self.keep)

    def _select_first(self, T: int, starts: tuple[int, ...], start: int, have: tuple[int, ...],
                      chosen: dict[int, int], room: int) -> dict[int, int]:
        """For a sequence only extended so far: the message starts where first edits landed, at
        their chance per request on such a sequence, after ``chosen`` and in ``room`` more."""
        if room <= 0 or self._ftotal <= 0:
            return chosen
        mass: dict[int, float] = {}
        for i, w in self._fweights.items():
            if i < len(starts):
                mass[starts[i]] = mass.get(starts[i], 0.0) + w
        return self._greedy(mass, self._ftotal, T, starts, start, have, chosen, room)

    def _pressure(self) -> float:
        """Tokens per request a kept checkpoint's bytes cost the prompt cache (step 2's bar)."""
        if self._total <= 0:
            return 0.0
        return self.cache_pct / 100.0 * self._ckpt_tokens * min(self._swaps, self._evictions) / self._total

    def _greedy(self, mass: dict[int, float], total: float, T: int, starts: tuple[int, ...], start: int,
                have: tuple[int, ...], chosen: dict[int, int], n: int) -> dict[int, int]:
        if not mass:
            return chosen
        need_pos = np.fromiter(mass.keys(), np.int64, len(mass))
        need_w = np.fromiter(mass.values(), float, len(mass)) / total
        # Any message start may serve the needs above it (a rewritten message starts there).
        cands = np.array(sorted({p for p in mass if start < p <= T} | {k for k in have if k <= T}
                                | {b for b in starts if start < b < T}), np.int64)
        if len(cands) == 0:
            return chosen
        chosen = dict(chosen)
        served = np.zeros(len(need_pos), np.int64)     # position each need resumes at so far
        for k in chosen:
            served = np.where(k <= need_pos, np.maximum(served, k), served)
        usable = cands[:, None] <= need_pos[None, :]
        # A swap costs the checkpoint's bytes only when it makes the cache evict: the evictions
        # per request (at most one per swap) price them (docs/policies.md, "adaptive").
        floor = self.min_tokens + self._pressure()
        rank0 = len(chosen)
        for rank in range(rank0, rank0 + n):
            gain = (np.maximum(cands[:, None] - served[None, :], 0) * usable) @ need_w
            i = int(np.argmax(gain))
            if gain[i] < max(floor, 1e-9):
                break
            k = int(cands[i])
            chosen[k] = rank
            served = np.where(usable[i], np.maximum(served, k), served)
        return chosen

    def place(self, v: PrefillView) -> PrefillPlan:
        self._near_depth = 4 + max(1, min(v.n_batch, v.n_ubatch))
        unedited = self._learn(v)
        starts = tuple(sorted(set(v.user_starts) | set(v.tool_starts)))
        self._meta[v.request_id] = (v.n_prompt, starts, unedited)
        if len(self._meta) > _MEMORY_PROMPTS:
            self._meta.popitem(last=False)
        if self._n_seen <= self.warmup:
            # Too few needs seen to tell a workload's edits from chance: the server's own
            # placement, FIFO, nothing let go (what the first requests of a trace cost under it).
            self._want = None
            last = v.ckpt_n_tokens[-1] if v.ckpt_n_tokens else None
            plan = server_placement(_SERVER, v.start, v.n_prompt, v.user_starts, last, v.n_batch,
                                    v.n_ubatch, _SERVER.default_min_step, 8192)
            if not self.warm_learn:
                return plan
            # ... plus the positions the needs seen so far are already worth (the same greedy
            # as after the warm-up), best first, while the slot has room for them beside the
            # server's own: one never pushes out a checkpoint the server would have kept.
            have = set(v.ckpt_n_tokens) | set(plan.positions)
            room = self._cap - len(v.ckpt_n_tokens) - len(plan.positions)
            chosen = self._select(v.n_prompt, starts, v.start, v.ckpt_n_tokens)
            extra = [p for p in sorted(chosen, key=chosen.get)
                     if v.start < p <= v.n_prompt and p not in have][:max(room, 0)]
            if not extra:
                return plan
            ps = sorted(set(plan.positions) | set(extra))
            return PrefillPlan(tuple(ps), *batch_counts(v.start, v.n_prompt, v.n_batch, v.n_ubatch, ps))
        self._want = self._select(v.n_prompt, starts, v.start, v.ckpt_n_tokens)
        if self.first and unedited:
            # a sequence only extended so far: where first edits land, after the rest, in the room
            # the cap leaves (a victim before any of them: ``victim`` takes the last-ranked first)
            self._want = self._select_first(v.n_prompt, starts, v.start, v.ckpt_n_tokens, self._want,
                                            min(self.keep, self._cap - len(self._want)))
        have = set(v.ckpt_n_tokens)
        ps = sorted(p for p in self._want if v.start < p <= v.n_prompt and p not in have)
        return PrefillPlan(tuple(ps), *batch_counts(v.start, v.n_prompt, v.n_batch, v.n_ubatch, ps))

    # --- eviction -----------------------------------------------------------------------------
    def pre_evict(self, ckpts: list[Checkpoint], new_k: int, task_id: int, cap: int) -> list[int]:
        """The warm-up evicts as the server does (its spacing pass, spec §2.4); then nothing early."""
        if self._want is not None or not spacing_pass_runs(_SERVER, len(ckpts), cap):
            return []
        return sorted(spacing_victims(_SERVER, [(c.n_tokens, c.task_id) for c in ckpts], task_id,
                                      _SERVER.default_min_step, cap))

    def supersede(self, ckpts: list[Checkpoint], new_k: int) -> list[int]:
        if self._want is not None or not _SERVER.spacing_eviction_only_when_full:
            return []
        return [i for i, c in enumerate(ckpts) if c.n_tokens == new_k]

    def victim(self, ckpts: list[Checkpoint], new_k: int) -> int:
        """Not wanted in this prompt first (oldest first), then the one the greedy picked last."""
        if self._want is None:
            return 0
        return max(range(len(ckpts)), key=lambda i: (self._want.get(ckpts[i].n_tokens, 1 << 30), -i))

    def prune(self, ckpts: list[Checkpoint]) -> list[int]:
        if self._want is None:
            return []
        return [i for i, c in enumerate(ckpts) if c.n_tokens not in self._want]
