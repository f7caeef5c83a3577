"""The simulator core: replay a trace through slots, the restore rule, a policy and a cost model.

Per request (spec §9.1): choose a slot (§2.1) and possibly save/load the host prompt cache (§5);
apply the restore rule (§2.2, ``server.restore_decision``); erase invalidated checkpoints; prefill
[cache_n, T) while the policy places checkpoints (§2.3), evicting while over budget (§2.4);
generation then appends the output, and the cache keeps prompt + generated[:-1] (§0). Each of
these steps is one method of ``_Replay``, named after its section; ``_TaskQueue`` decides when.

Time: a request starts once it has arrived, its session's previous request has finished (an
agent sends its next prompt only after the answer) and a slot is idle. Two service orders
(``ServerConfig.arrival_order``): by default requests are served in arrival order, so every
policy sees the same interleaving and differences are the policy's (but a request held back by
its own session keeps its place, and can keep a slot from a later request of another session);
with ``arrival_order=False`` they are served in the order they became ready, as the server's
task queue does, which is faithful but lets a faster policy change the interleaving.

Slots share one device (spec §9.3: every ``update_slots`` builds one batch of at most
``n_batch`` tokens for all slots), so the prompt work of concurrent requests (restore, prefill, checkpoint copies) is served one after
another, in the first idle stretch of the device; decoding slots batch together and are not
serialised. Approximations: the server gives lower slot indices the batch first (not arrival
order), decode steps that share a batch with a prompt are not slowed, and the batch starts of
one slot do not move with another's tokens (only non-forced checkpoints would, §9.3).
"""
from __future__ import annotations

import bisect
import heapq
import math
import operator
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

import numpy as np

from .cost import CostProfile, load_profile
from .policies import Policy, PrefillView, checkpoint_cap, effective_config, make_policy
from .records import Checkpoint, Events, EventKind, Results
from .server import PrefillPlan, RestoreDecision, ServerConfig, batch_counts
from .trace import Trace


_n_tokens = operator.itemgetter(0)     # Checkpoint fields, for map() over a slot's list
_size_mib = operator.itemgetter(1)
# Named tuples made from a plain tuple of all their fields, skipping their Python-level __new__
# (the hot path makes several per request).
_new_checkpoint = partial(tuple.__new__, Checkpoint)
_new_view = partial(tuple.__new__, PrefillView)
if PrefillView._fields != ("request_id", "slot", "start", "n_prompt", "user_starts", "tool_starts",
                           "ckpt_n_tokens", "n_batch", "n_ubatch", "lcp_n_tokens", "seen_prefix_n_tokens",
                           "branch_n_tokens", "cached_n_tokens", "cached_task", "n_cache_evicted") \
        or Checkpoint._fields != ("n_tokens", "size_mib", "task_id", "created_s"):
    raise ImportError("sim: PrefillView or Checkpoint changed; update _Replay.prefill and _create_checkpoint")


@dataclass(frozen=True)
class Seeding:
    """Slot state a log excerpt does not show, stood in for by synthetic requests
    (``ingest.log_trace.seeded_requests``): each leaves ``ckpts[r]`` on its slot, whatever the
    policy placed, and request ``pins[q]`` takes the slot synthetic request ``q`` left."""

    ckpts: dict[int, tuple[int, ...]]
    pins: dict[int, int]

    def slot_for(self, r: int, idle: list[_Slot]) -> _Slot | None:
        q = self.pins.get(r)
        return None if q is None else next((s for s in idle if s.seq == q), None)


@dataclass
class _Slot:
    id: int
    seq: int = -1                  # request whose sequence the cache holds (-1: empty)
    n_cache: int = 0
    ckpts: list[Checkpoint] = field(default_factory=list)
    t_last_used: float = -1.0
    busy_until: float = 0.0
    mib: float = 0.0               # checkpoint memory after the slot's last request (ckpt_mib then)

    @property
    def ckpt_mib(self) -> float:
        return sum(map(_size_mib, self.ckpts))


class _CacheEntry(NamedTuple):
    seq: int
    n_tokens: int
    ckpts: list[Checkpoint]
    size_mib: float


@dataclass
class Run:
    """Results of one simulation: per-request results, events, and what produced them.

    ``results`` holds one ``RequestResult`` per request as columns (``Results.column``), in
    service order; ``events`` is empty unless the run recorded them (``simulate(record_events=)``).
    """

    trace_name: str
    policy: str
    config: ServerConfig
    profile: str
    results: Results
    events: Events
    peak_ckpt_mib: float = 0.0
    peak_cache_ram_mib: float = 0.0
    n_cache_loads: int = 0          # slots loaded from the prompt cache (counted with or without events)

    def summary(self) -> dict:
        """Run-level metrics (definitions: README, "Metrics")."""
        return summarize(self)


def _seq_sum(xs: np.ndarray) -> float:
    """Sum left to right, as Python's ``sum`` over the rows did (numpy's sum pairs terms up)."""
    return sum(xs.tolist())


def summarize(run: Run) -> dict:
    """Aggregate a run's per-request results into the run-level metrics."""
    rs = run.results
    if not isinstance(rs, Results):
        rs = Results.from_rows(list(rs))
    col = rs.column
    n = len(rs)
    prompt = int(col("n_prompt").sum())
    cached = int(col("n_cached").sum())
    prefill, restore, create = col("prefill_ms"), col("restore_ms"), col("create_ms")
    ttft = col("ttft_ms") if n else np.zeros(1)
    return {
        "trace": run.trace_name,
        "policy": run.policy,
        "profile": run.profile,
        "n_requests": n,
        "prompt_tokens": prompt,
        "reused_tokens": cached,
        "reprocessed_tokens": int(col("n_reprocessed").sum()),
        "true_prefix_tokens": int(col("n_true_prefix").sum()),
        "lost_tokens": int((col("n_true_prefix") - col("n_cached")).sum()),
        "reuse_ratio": cached / prompt if prompt else 0.0,
        "prefill_s": _seq_sum(prefill) / 1000.0,
        "restore_s": _seq_sum(restore) / 1000.0,
        "create_s": _seq_sum(create) / 1000.0,
        "prompt_s": _seq_sum(prefill + restore + create) / 1000.0,
        "ttft_p50_ms": float(np.percentile(ttft, 50)),
        "ttft_p95_ms": float(np.percentile(ttft, 95)),
        "ttft_p99_ms": float(np.percentile(ttft, 99)),
        "full_reprocess": int(col("full_reprocess").sum()),
        "restores": int((col("restored_n_tokens") >= 0).sum()),
        "created": int(col("n_created").sum()),
        "evicted": int(col("n_evicted").sum()),
        "invalidated": int(col("n_invalidated").sum()),
        "peak_ckpt_mib": run.peak_ckpt_mib,
        "peak_cache_ram_mib": run.peak_cache_ram_mib,
        "cache_loads": run.n_cache_loads,
        "makespan_s": float(col("finish_s").max()) if n else 0.0,
    }


class _PromptCache:
    """Host-RAM prompt cache (``--cache-ram``, spec §5): full states plus copies of checkpoints.

    The server scans every entry with one common-prefix query each (save and load). Here the
    entries are also kept sorted by their sequence's trie position (``Trace.trie``): the common
    prefix of a sequence x with the entries only falls as one walks away from x's position, so
    the entries that can matter (sharing more than a threshold with x) are a contiguous run
    around it, found by walking out until the prefix drops to the threshold. The rules then run
    over that run in the server's own (insertion) order, so every choice -- ties included -- is
    the scan's.
    """

    def __init__(self, limit_mib: float, limit_tokens: int, trace: Trace, profile: CostProfile,
                 makes_room: bool = True):
        self.limit_mib = math.inf if limit_mib < 0 else limit_mib
        self.limit_tokens = limit_tokens
        self.makes_room = makes_room           # b9908+ (#25070): alloc pops the oldest itself
        self.keep = 0 if makes_room else 1     # before, update() always kept one entry
        self.entries: dict[int, _CacheEntry] = {}   # by serial number: oldest first (the server's list)
        self._sizes: dict[int, float] = {}          # the same order: size_mib and n_tokens of each
        self._ns: dict[int, int] = {}
        self._serial = 0
        self._keys: list[tuple[int, int]] = []      # (trie position of the entry's sequence, serial), sorted
        self.n_evicted = 0                # entries evicted so far (the server logs each one)
        self.n_loads = 0                  # slots loaded from an entry
        self.trace = trace
        self.profile = profile
        self._trie = trace.trie
        self._pos = self._trie.pos
        self._changed()

    def _changed(self) -> None:
        # The totals are read for every request but change only here: re-summed (not kept as
        # running totals) so they stay bit-identical to a fresh sum over the entries.
        ns = self._ns.values()
        self._size_mib = sum(self._sizes.values())
        self._n_tokens = sum(ns)
        self._min_n = min(ns) if ns else 0
        self._dirty = True                     # update() has something to check

    @property
    def size_mib(self) -> float:
        return self._size_mib

    def _add(self, e: _CacheEntry) -> None:
        s = self._serial
        self._serial += 1
        self.entries[s] = e
        self._sizes[s] = e.size_mib
        self._ns[s] = e.n_tokens
        if e.seq >= 0:                         # an empty sequence matches nothing: not indexed
            bisect.insort(self._keys, (self._pos[e.seq], s))

    def _remove(self, s: int) -> _CacheEntry:
        e = self.entries.pop(s)
        del self._sizes[s], self._ns[s]
        if e.seq >= 0:
            keys = self._keys
            del keys[bisect.bisect_left(keys, (self._pos[e.seq], s))]
        return e

    def _near(self, seq: int, floor: int) -> list[tuple[int, int]]:
        """(serial, common prefix with ``seq``'s sequence) of every indexed entry sharing at least
        ``floor`` tokens with it (floor >= 1), in no particular order."""
        keys = self._keys
        if not keys:
            return []
        levels = self._trie.levels             # Trace.trie's range minima, inlined (TrieOrder.between)
        p = self._pos[seq]
        big = 1 << 62                          # the same sequence: its whole length (seq_lcp)
        full = self.trace._prompt[seq] + int(self.trace.n_output[seq])
        out = []
        i = bisect.bisect_left(keys, (p, -1))
        # walk left, then right, from the sequence's own trie position; the common prefix only
        # shrinks with distance, so each walk stops at the first entry below the floor
        for js in (range(i - 1, -1, -1), range(i, len(keys))):
            q, lcp = p, big
            for j in js:
                pj, s = keys[j]
                if pj != q:
                    lo, hi = (pj, q) if pj < q else (q, pj)
                    k = (hi - lo).bit_length() - 1
                    t = levels[k]
                    m, y = t[lo], t[hi - (1 << k)]
                    if y < m:
                        m = y
                    if m < lcp:
                        lcp = m
                    if lcp < floor:
                        break
                    q = pj
                out.append((s, full if lcp == big else lcp))
        return out

    def _evict_oldest(self, emit: Callable[..., None]) -> None:
        old = self._remove(next(iter(self.entries)))
        self.n_evicted += 1
        self._changed()
        emit(EventKind.CACHE_EVICT, old.n_tokens, old.size_mib)

    def save(self, slot: _Slot, emit: Callable[..., None]) -> None:
        """``prompt_save`` + ``alloc`` (st:1711)."""
        n = slot.n_cache
        if n <= 0:
            return
        entries = self.entries
        obsolete = []
        if slot.seq >= 0 and entries:
            # An entry matters if its common prefix with the slot is the slot's whole cache
            # (already saved) or its own whole length (a prefix of the slot: obsolete); every
            # other entry shares less than min(n, shortest entry) tokens.
            floor = min(n, self._min_n)
            for s, l in self._near(slot.seq, floor):
                e = entries[s]
                lcp = min(l, e.n_tokens, n)
                if lcp == n:
                    return                    # " - prompt is already in the cache, skipping"
                if lcp == e.n_tokens:
                    obsolete.append(s)
        size = self.profile.state_mib(n) + slot.ckpt_mib
        if self.makes_room and size > self.limit_mib:
            return                        # #25070: bigger than the whole cache
        # entries that are prefixes of the new one are obsolete
        if obsolete:
            for s in obsolete:
                self._remove(s)
            self._changed()
        while self.makes_room and self.entries and self.size_mib + size > self.limit_mib:
            self._evict_oldest(emit)
        self._add(_CacheEntry(slot.seq, n, list(slot.ckpts), size))
        self._changed()
        emit(EventKind.CACHE_SAVE, n, size)

    def load(self, slot: _Slot, req: int, n_prompt: int, emit: Callable[..., None]) -> bool:
        """``load`` (st:1793): take the entry better than the slot in both f_keep and f_sim;
        whether one was taken."""
        lcp = self.trace.prefix_with_state(slot.seq, slot.n_cache, req)
        best_keep = lcp / slot.n_cache if slot.n_cache > 0 else -1.0
        best_sim = lcp / n_prompt
        best = -1
        # f_sim > best_sim needs more than lcp tokens in common: only entries near req can win,
        # visited in the server's order
        entries = self.entries
        for s, l_e in sorted(self._near(req, lcp + 1)):
            e = entries[s]
            n_e = e.n_tokens
            if n_e <= 0:
                continue
            if l_e > n_e:
                l_e = n_e
            if l_e > n_prompt:
                l_e = n_prompt
            f_keep, f_sim = l_e / n_e, l_e / n_prompt
            if f_keep >= 0.25 and f_keep > best_keep and f_sim > best_sim:
                best, best_keep, best_sim = s, f_keep, f_sim
        if best >= 0:
            e = self._remove(best)
            self._changed()
            slot.seq, slot.n_cache, slot.ckpts = e.seq, e.n_tokens, list(e.ckpts)
            self.n_loads += 1
            emit(EventKind.CACHE_LOAD, e.n_tokens, e.size_mib)
            return True
        return False

    def update(self, emit: Callable[..., None]) -> None:
        """``update`` (st:1870): pop the oldest while over the byte or token limit."""
        if not self._dirty:                    # nothing changed since the last update: a no-op
            return
        self._dirty = False
        while len(self.entries) > self.keep and self.size_mib > self.limit_mib:
            self._evict_oldest(emit)
        n_tok = self._n_tokens
        if n_tok and math.isfinite(self.limit_mib):
            lim_tok = max(self.limit_tokens, int(self.limit_mib / (self.size_mib / n_tok)))
        else:
            lim_tok = 1 << 62
        while len(self.entries) > self.keep and self._n_tokens > lim_tok:
            self._evict_oldest(emit)


class _Device:
    """Busy intervals of the one device all slots share (module docstring)."""

    def __init__(self) -> None:
        self.busy: list[tuple[float, float]] = []     # (start_s, end_s), sorted, disjoint

    def run(self, ready_s: float, work_s: float, now_s: float) -> float:
        """Book ``work_s`` seconds at the first idle stretch at or after ``ready_s``; its start.

        ``now_s`` bounds every later ``ready_s`` from below (the current start when serving in
        ready order, where starts never decrease; else the current arrival), so stretches that
        ended before it can be forgotten.
        """
        busy = self.busy
        if not busy or busy[-1][1] <= now_s:
            # every booked stretch ended before anything later can start (one slot: always)
            busy.clear()
            if work_s > 0:
                busy.append((ready_s, ready_s + work_s))
            return ready_s
        drop = 0
        while drop < len(busy) and busy[drop][1] <= now_s:
            drop += 1
        if drop:
            del busy[:drop]
        t = ready_s
        i = bisect.bisect_left(busy, (t, t))
        if i > 0 and busy[i - 1][1] > t:
            t = busy[i - 1][1]
        while i < len(busy) and busy[i][0] < t + work_s:
            t = max(t, busy[i][1])
            i += 1
        if work_s > 0:
            busy.insert(i, (t, t + work_s))
        return t


def simulate(trace: Trace, policy: Policy | str, config: ServerConfig | None = None,
             profile: CostProfile | str | None = None, *, record_events: bool = True,
             on_progress: Callable[[int], None] | None = None, seeding: Seeding | None = None) -> Run:
    """Replay ``trace`` under ``policy`` and ``config``, costing it with ``profile``.

    ``seeding`` stands in for slot state a log excerpt does not show (validation only).

    Each request goes through the steps of spec §9.1, one method of ``_Replay`` each: slot
    selection and the prompt cache (§2.1, §5), the restore decision (§2.2), prefill with
    checkpoint placement (§2.3) and eviction (§2.4), then the accounting of time and memory.
    """
    config = config or ServerConfig()
    pol = make_policy(policy)
    prof = profile if isinstance(profile, CostProfile) else load_profile(profile)
    # Values the run cannot read are made canonical, so the result cannot depend on them
    # (policies.effective_config); the Run keeps the flags it was asked for.
    run_config = effective_config(pol, config)
    pol.prepare(trace, run_config, prof, simulate)   # offline policies see (and may replay) the trace first
    done = pol.take_replay()                          # a replay of this very policy prepare made
    if done is not None and seeding is None:
        if on_progress is not None:
            on_progress(len(trace))
        return Run(trace.name, pol.spec, config, prof.name, done.results,
                   done.events if record_events else Events([]), done.peak_ckpt_mib, done.peak_cache_ram_mib,
                   done.n_cache_loads)
    replay = _Replay(trace, pol, run_config, prof, record_events, seeding)
    queue = _TaskQueue(trace, run_config.arrival_order)
    done = 0
    while (task := queue.pop()) is not None:
        r, start_s, now_s = task
        queue.finished(r, replay.serve(r, start_s, now_s))
        done += 1
        if on_progress is not None and (done & 255) == 0:
            on_progress(256)
    if on_progress is not None:
        on_progress(len(trace) & 255)
    return Run(trace.name, pol.spec, config, prof.name, replay.results(), Events(replay.events),
               replay.peak_ckpt_mib, replay.peak_ram_mib,
               replay.pcache.n_loads if replay.pcache is not None else 0)


class _TaskQueue:
    """The server's task queue: which request starts next, and from when (module docstring, "Time").

    In arrival order requests are served in the order of arrival (ties: trace order), each once
    its session's previous one has finished. In ready order a heap holds (ready time, arrival
    rank, id) and a session's next request joins when the previous one finishes; start times then
    never decrease, so slot state stays causal.
    """

    def __init__(self, trace: Trace, arrival_order: bool):
        self.arrival_order = arrival_order
        self.t_s = trace._t
        sessions = trace.session
        order_np = np.argsort(trace.t_s, kind="stable")
        self.order = array("q", order_np.tobytes())
        self.i = 0
        n = len(order_np)
        # the session's previous request in arrival order (-1: none) and its finish time
        self.prev_in_session = array("q", bytes(8 * n))
        self.finish_s = array("d", bytes(8 * n))
        self.next_in_session: dict[int, int] = {}
        self.rank = array("q", bytes(8 * n)) if not arrival_order else array("q")
        last_of: dict[str, int] = {}
        self.heap: list[tuple[float, int, int]] = []
        prev_in_session = self.prev_in_session
        for i, r in enumerate(order_np.tolist()):
            s = sessions[r]
            prev = last_of.get(s)
            prev_in_session[r] = -1 if prev is None else prev
            if not arrival_order:
                self.rank[r] = i
                if prev is None:
                    self.heap.append((self.t_s[r], i, r))
                else:
                    self.next_in_session[prev] = r
            last_of[s] = r
        heapq.heapify(self.heap)

    def pop(self) -> tuple[int, float, float] | None:
        """(request, earliest start, lower bound of every later ready time), or None when done."""
        if self.arrival_order:
            i = self.i
            if i >= len(self.order):
                return None
            self.i = i + 1
            r = self.order[i]
            arrival = self.t_s[r]
            p = self.prev_in_session[r]
            # starts may go back in time; arrivals do not
            return r, (arrival if p < 0 else max(arrival, self.finish_s[p])), arrival
        if not self.heap:
            return None
        key, _, r = heapq.heappop(self.heap)
        return r, key, key

    def finished(self, r: int, finish_s: float) -> None:
        """The answer to ``r`` is out: its session may send the next prompt."""
        self.finish_s[r] = finish_s
        if not self.arrival_order:
            q = self.next_in_session.get(r)
            if q is not None:
                heapq.heappush(self.heap, (max(self.t_s[q], finish_s), self.rank[q], q))


@dataclass(slots=True)
class _Restored:
    """Outcome of the restore step for one request (spec §2.2)."""

    dec: RestoreDecision
    n_lcp: int                 # common prefix of the slot's cache and the prompt
    n_invalidated: int
    restore_ms: float


class _Rows:
    """Per-request results as the replay appends them: one tuple per request, packed every few
    thousand requests into a structured numpy array of one row per request of the trace (a tuple
    is cheap to make, a packed row cheap to keep); its fields are the result columns."""

    # the fields a replay records; the rest (session, arrival_s, n_prompt, n_output,
    # n_reprocessed) follow from the trace and request_id (``finish``)
    DTYPE = np.dtype([("request_id", "i8"), ("slot", "i4"), ("start_s", "f8"), ("n_true_prefix", "i8"),
                      ("n_cached", "i8"), ("restored_n_tokens", "i8"), ("full_reprocess", "?"),
                      ("n_created", "i4"), ("n_evicted", "i4"), ("n_invalidated", "i4"), ("prefill_ms", "f8"),
                      ("restore_ms", "f8"), ("create_ms", "f8"), ("ttft_ms", "f8"), ("finish_s", "f8"),
                      ("ckpt_mib_after", "f8"), ("cache_ram_mib_after", "f8"), ("device_wait_ms", "f8")])
    CHUNK = 4096

    def __init__(self, n: int) -> None:
        self.rows: list[tuple] = []
        self.created: list[int] = []       # created_at of the rows not packed yet, concatenated
        self._packed = np.zeros(n, dtype=self.DTYPE)
        self._n = 0
        self._created: list[np.ndarray] = []

    def flush(self) -> None:
        rows = self.rows
        if rows:
            n = self._n
            self._packed[n:n + len(rows)] = rows
            self._n = n + len(rows)
            self._created.append(np.array(self.created, dtype=np.int64))
            rows.clear()
            self.created.clear()

    def finish(self, trace: Trace) -> Results:
        self.flush()
        packed = self._packed[:self._n]
        cols = {k: packed[k] for k in self.DTYPE.names}
        ids = cols["request_id"]
        cols["arrival_s"] = trace.t_s[ids]
        cols["n_prompt"] = trace.n_prompt[ids]
        cols["n_output"] = trace.n_output[ids]
        cols["n_reprocessed"] = cols["n_prompt"] - cols["n_cached"]
        sessions = trace.session
        session = [sessions[i] for i in ids.tolist()]
        created = np.concatenate(self._created) if self._created else np.zeros(0, np.int64)
        self._created = []
        return Results(cols, session, created, np.cumsum(cols["n_created"]))


class _Replay:
    """The server's state during one replay (slots, prompt cache, device) and the steps that change it.

    Per request the steps keep their scratch values on the replay (``_n_evicted``, ``_create_ms``,
    ``_created``) rather than in objects made and thrown away for each request.
    """

    def __init__(self, trace: Trace, pol: Policy, config: ServerConfig, prof: CostProfile,
                 record_events: bool, seeding: Seeding | None = None):
        self.trace, self.pol, self.config, self.prof = trace, pol, config, prof
        self.seeding = seeding
        self.record_events = record_events
        self.rules = pol.rules
        self.cap = checkpoint_cap(pol, config)
        self.budget_mib = config.ckpt_budget_mib
        self.budget_finite = math.isfinite(self.budget_mib)
        self.nb, self.ub = config.eff_n_batch, config.eff_n_ubatch
        self.sps = config.slot_prompt_similarity
        self.slots = [_Slot(i) for i in range(config.n_slots)]
        self.pcache = _PromptCache(config.cache_ram_mib, config.n_ctx, trace, prof,
                                   makes_room=self.rules.cache_alloc_makes_room) \
            if config.cache_ram_mib != 0 else None
        self.device = _Device()
        self.rows = _Rows(len(trace))
        self.events: list[tuple] = []
        self.peak_ckpt_mib = self.peak_ram_mib = 0.0
        self.n_prompt = trace._prompt
        self.n_output = trace._output
        self.t_s = trace._t
        # What the server has seen, for PrefillView.seen_prefix_n_tokens: when each request
        # started (its prompt is known) and finished (its answer too); inf: not yet.
        self.started_s = array("d", [math.inf]) * len(self.n_prompt)
        self.finished_s = array("d", [math.inf]) * len(self.n_prompt)
        # Whether the policy overrides a hook: the base class's answer is known without a call.
        cls = type(pol)
        self.has_pre_evict = cls.pre_evict is not Policy.pre_evict
        self.has_supersede = cls.supersede is not Policy.supersede
        self.has_prune = cls.prune is not Policy.prune
        self.has_after = cls.after_generation is not Policy.after_generation
        self.has_restored = cls.restored is not Policy.restored
        self.default_victim = cls.victim is Policy.victim
        # per-request scratch of the prefill step (read by account)
        self._n_evicted = 0
        self._create_ms = 0.0
        self._created: list[int] = []

    def results(self) -> Results:
        """The per-request results recorded so far, as columns."""
        return self.rows.finish(self.trace)

    def serve(self, r: int, start_s: float, now_s: float) -> float:
        """Serve request ``r`` from ``start_s`` on (spec §9.1); its finish time."""
        T = self.n_prompt[r]
        slot, idle, update_cache, start_s, lcp = self.select_slot(r, T, start_s)
        if self.record_events:
            emit = self._emitter(r, slot)
            emit(EventKind.SLOT_SELECTED, detail="lru" if update_cache else "lcp")
        else:
            emit = _no_event
        if self.pcache is not None and self.prompt_cache(slot, idle, update_cache, r, T, emit):
            lcp = -1                      # the slot was loaded from the cache
        restored = self.restore(slot, r, T, lcp, emit)
        view, n_batches, n_ubatches = self.prefill(slot, r, T, restored, start_s, emit)
        return self.account(slot, r, T, restored, view, n_batches, n_ubatches, start_s, now_s, emit)

    def _emitter(self, r: int, slot: _Slot) -> Callable[..., None]:
        append, slot_id = self.events.append, slot.id

        def emit(kind: EventKind, n_tokens: int = -1, size_mib: float = 0.0, detail: str = "") -> None:
            append((kind, r, slot_id, n_tokens, size_mib, detail))
        return emit

    # --- spec §2.1: task arrival -----------------------------------------------------------------
    def select_slot(self, r: int, T: int, start_s: float) -> tuple[_Slot, list[_Slot], bool, float, int]:
        """Wait for an idle slot and pick one (``get_available_slot``, spec §2.1).

        Returns the slot, the slots idle at the start, whether the choice asks for a prompt-cache
        save and load (``update_cache``), the start time, and the common prefix of the chosen
        slot with the prompt when the choice computed it (else -1).
        """
        slots = self.slots
        if len(slots) == 1:
            idle = slots
            if slots[0].busy_until > start_s:     # deferred until the slot is idle
                start_s = slots[0].busy_until
        else:
            idle = [s for s in slots if s.busy_until <= start_s]
            if not idle:                      # no slot idle: the task is deferred until one is
                start_s = min(s.busy_until for s in slots)
                idle = [s for s in slots if s.busy_until <= start_s]
        pinned = self.seeding.slot_for(r, idle) if self.seeding is not None else None
        if pinned is not None:
            # the log shows the slot this task ran on, and the seed is that slot's state after any
            # prompt-cache load: take it as it is
            return pinned, idle, False, start_s, -1
        slot, update_cache, lcp = _select_slot(self.trace, r, T, idle, self.sps)
        return slot, idle, update_cache, start_s, lcp

    def prompt_cache(self, slot: _Slot, idle: list[_Slot], update_cache: bool, r: int, T: int,
                     emit: Callable[..., None]) -> bool:
        """Host prompt cache around the slot choice (spec §2.1, §5): save the slot and load a better
        entry when the choice asks for it, then save (and under unified KV clear) the other idle
        slots. Whether the slot was loaded."""
        pcache = self.pcache
        loaded = False
        if update_cache:
            pcache.save(slot, emit)
            loaded = pcache.load(slot, r, T, emit)
            pcache.update(emit)
        if self.config.cache_idle_slots:
            if len(idle) > 1:
                for s in idle:
                    if s is not slot and s.n_cache > 0:
                        pcache.save(s, emit)
                        if self.config.kv_unified:
                            s.seq, s.n_cache, s.ckpts, s.mib = -1, 0, [], 0
            pcache.update(emit)
        return loaded

    # --- spec §2.2: restore decision -------------------------------------------------------------
    def restore(self, slot: _Slot, r: int, T: int, lcp: int, emit: Callable[..., None]) -> _Restored:
        """Keep the common prefix or roll back to a checkpoint (``server.restore_decision``), then
        erase the checkpoints past the restore point ("erased invalidated", spec §2.2).
        ``lcp``: the slot's common prefix with the prompt if slot selection computed it, else -1."""
        n_lcp = lcp if lcp >= 0 else self.trace.prefix_with_state(slot.seq, slot.n_cache, r)
        ckpts = slot.ckpts
        dec = self.pol.restore(n_lcp, slot.n_cache, T, ckpts)
        n_invalid = 0
        if ckpts:
            keep_upto = dec.keep_upto
            if max(map(_n_tokens, ckpts)) > keep_upto:
                kept = []
                for c in ckpts:
                    if c.n_tokens > keep_upto:
                        n_invalid += 1
                        emit(EventKind.ERASED_INVALIDATED, c.n_tokens, c.size_mib)
                    else:
                        kept.append(c)
                slot.ckpts = ckpts = kept
        restore_ms = 0.0
        if dec.restored >= 0:
            ckpt = next(c for c in reversed(ckpts) if c.n_tokens == dec.restored)
            restore_ms = self.prof.restore_ms(ckpt.size_mib)
            if self.has_restored:
                self.pol.restored(ckpt, r)
            emit(EventKind.RESTORED, dec.restored, ckpt.size_mib)
        if dec.full_reprocess:
            emit(EventKind.FULL_REPROCESS, 0)
        return _Restored(dec, n_lcp, n_invalid, restore_ms)

    # --- spec §2.3, §2.4: prefill, checkpoint placement and eviction -----------------------------
    def prefill(self, slot: _Slot, r: int, T: int, restored: _Restored, start_s: float,
                emit: Callable[..., None]) -> tuple[PrefillView | None, int, int]:
        """Prefill [cache_n, T): the policy places checkpoints (§2.3), each created as
        ``create_checkpoint`` does (§2.4); afterwards the policy may prune (offline policies only).
        Returns what the policy saw (None without checkpoints) and the batch counts."""
        self._n_evicted = 0
        self._create_ms = 0.0
        self._created = []
        n_past = restored.dec.n_past
        self.started_s[r] = start_s
        cap = self.cap
        if cap <= 0:
            n_b, n_ub = batch_counts(n_past, T, self.nb, self.ub)
            return None, n_b, n_ub
        pol, prof = self.pol, self.prof
        seen, branch = self.seen_prefix(r, T, start_s)
        trace = self.trace
        ckpts = slot.ckpts
        view = _new_view((r, slot.id, n_past, T, trace.user_starts[r], trace.tool_starts[r],
                          tuple(map(_n_tokens, ckpts)), self.nb, self.ub, restored.n_lcp, seen,
                          branch, slot.n_cache, slot.seq,
                          self.pcache.n_evicted if self.pcache is not None else 0))
        plan = pol.place(view)
        budget = self.budget_mib
        for k in plan.positions:
            size = prof.ckpt_mib(k)
            if size > budget:
                continue
            self._create_checkpoint(slot, ckpts, k, size, r, start_s, emit)
        if self.has_prune:
            for i in sorted(pol.prune(ckpts), reverse=True):
                c = ckpts.pop(i)
                self._n_evicted += 1
                emit(EventKind.DROPPED, c.n_tokens, c.size_mib)
        return view, plan.n_batches, plan.n_ubatches

    def seen_prefix(self, r: int, T: int, now_s: float) -> tuple[int, int]:
        """(longest common prefix of request ``r``'s prompt with a sequence the server has seen,
        that length again if the prompt leaves the sequence there, else 0): PrefillView's
        ``seen_prefix_n_tokens`` and ``branch_n_tokens``.

        The trace's parent is the earlier sequence sharing the most with ``r``. If it has not
        started yet (another service order), its nearest started ancestor stands in: the common
        prefix with it is the minimum of ``n_shared`` along the way (the trie property). Online:
        a request running at ``now_s`` contributes its prompt only, a finished one its answer too.
        """
        parent, shared = self.trace._parent, self.trace._shared
        p, m = parent[r], shared[r]
        for _ in range(8):             # chains longer than this are rare; no match is a safe answer
            if p < 0 or m <= 0:
                return 0, 0
            if self.started_s[p] <= now_s:
                seen_len = self.n_prompt[p] + (self.n_output[p] if self.finished_s[p] <= now_s else 0)
                if m > seen_len:
                    m = seen_len
                return m, (m if m < T and m < seen_len else 0)
            m = min(m, shared[p])
            p = parent[p]
        return 0, 0

    def after_generation(self, slot: _Slot, r: int, view: PrefillView | None, start_s: float,
                         emit: Callable[..., None]) -> float:
        """States the policy keeps once the answer is generated (``Policy.after_generation``),
        created as during the prefill; the copy time they take (after the answer, not in TTFT)."""
        if view is None or not self.has_after:
            return 0.0
        ks = self.pol.after_generation(view, slot.n_cache)
        if not ks:
            return 0.0
        ckpts = slot.ckpts
        before = self._create_ms
        for k in ks:
            if not 0 < k <= slot.n_cache or any(c.n_tokens == k for c in ckpts):
                continue
            size = self.prof.ckpt_mib(k)
            if size <= self.budget_mib:
                self._create_checkpoint(slot, ckpts, k, size, r, start_s, emit)
        return self._create_ms - before

    def _create_checkpoint(self, slot: _Slot, ckpts: list[Checkpoint], k: int, size: float, r: int,
                           start_s: float, emit: Callable[..., None]) -> None:
        """``create_checkpoint`` (spec §2.4): (a) the policy's voluntary drops (the server's spacing
        rule), (b) evict while over the count cap or byte budget, (c) supersede, then append."""
        pol, cap = self.pol, self.cap
        if self.has_pre_evict:
            for i in sorted(pol.pre_evict(ckpts, k, r, cap), reverse=True):
                c = ckpts.pop(i)
                self._n_evicted += 1
                emit(EventKind.ERASED_SPACING, c.n_tokens, c.size_mib)
        if len(ckpts) >= cap or self.budget_finite:
            budget, budget_finite = self.budget_mib, self.budget_finite
            while ckpts and (len(ckpts) >= cap or (budget_finite and slot.ckpt_mib + size > budget)):
                c = ckpts.pop(0 if self.default_victim else pol.victim(ckpts, k))
                self._n_evicted += 1
                emit(EventKind.ERASED_OLD, c.n_tokens, c.size_mib)
        if self.has_supersede:
            for i in sorted(pol.supersede(ckpts, k), reverse=True):
                c = ckpts.pop(i)
                self._n_evicted += 1
                emit(EventKind.SUPERSEDED, c.n_tokens, c.size_mib)
        ckpts.append(_new_checkpoint((k, size, r, start_s)))
        self._created.append(k)
        self._create_ms += self.prof.create_ms(size)
        if self.record_events:           # the message alone costs more than a no-op emit
            emit(EventKind.CREATED, k, size, f"{len(ckpts)} of {cap}")

    # --- accounting: time (spec §9.3), the slot after generation (§0), memory -----------------------
    def account(self, slot: _Slot, r: int, T: int, restored: _Restored, view: PrefillView | None,
                n_batches: int, n_ubatches: int, start_s: float, now_s: float,
                emit: Callable[..., None]) -> float:
        """Book the prompt work on the shared device, generate, record the request; its finish time."""
        prof, dec = self.prof, restored.dec
        n_out = self.n_output[r]
        n_past = dec.n_past
        prefill_ms = prof.prefill_ms(n_past, T, n_batches, n_ubatches)
        decode_ms = prof.decode_ms(T, n_out)
        if self.seeding is not None and r in self.seeding.ckpts:
            slot.ckpts = [Checkpoint(k, prof.ckpt_mib(k), r, start_s) for k in self.seeding.ckpts[r]]
        slot.seq = r
        slot.n_cache = T + max(n_out - 1, 0)       # prompt + generated[:-1] (spec §0)
        restore_ms = restored.restore_ms
        create_ms = self._create_ms
        work_ms = restore_ms + prefill_ms + create_ms
        work_start = self.device.run(start_s, work_ms / 1000.0, now_s)
        end_ms = self.after_generation(slot, r, view, start_s, emit)
        finish = work_start + (work_ms + decode_ms + end_ms) / 1000.0
        if self.config.log_timing:
            t_done = (self.trace[r].observed or {}).get("t_done_s")
            if t_done is not None:
                finish = max(start_s, float(t_done))
        slot.busy_until = finish
        slot.t_last_used = finish
        self.finished_s[r] = finish
        # checkpoint memory of every slot: only this slot's changed (idle slots cleared by the
        # prompt cache reset their own total)
        slot.mib = sum(map(_size_mib, slot.ckpts))
        slots = self.slots
        ckpt_total = slot.mib if len(slots) == 1 else sum([s.mib for s in slots])
        if ckpt_total > self.peak_ckpt_mib:
            self.peak_ckpt_mib = ckpt_total
        ram = self.pcache.size_mib if self.pcache is not None else 0.0
        if ram > self.peak_ram_mib:
            self.peak_ram_mib = ram
        out = self.rows
        rows = out.rows
        # (after generation: its creates count, in the request's create_ms but not in its TTFT)
        rows.append((r, slot.id, start_s, restored.n_lcp, n_past, dec.restored, dec.full_reprocess,
                     len(self._created), self._n_evicted, restored.n_invalidated, prefill_ms, restore_ms,
                     self._create_ms, (work_start - self.t_s[r]) * 1000.0 + work_ms, finish, ckpt_total, ram,
                     (work_start - start_s) * 1000.0))
        if self._created:
            out.created.extend(self._created)
        if len(rows) >= _Rows.CHUNK:
            out.flush()
        return finish


def _no_event(kind: EventKind, n_tokens: int = -1, size_mib: float = 0.0, detail: str = "") -> None:
    return None


def _select_slot(trace: Trace, r: int, T: int, idle: list[_Slot], sps: float) -> tuple[_Slot, bool, int]:
    """``get_available_slot`` (spec §2.1): best LCP similarity above -sps, else LRU. Returns the
    slot, whether to update the prompt cache, and the slot's common prefix with the prompt when
    the similarity chose it (else -1)."""
    ret = None
    update_cache = False
    best_lcp = -1
    if sps != 0:
        best, best_lcp = 0.0, 0
        for s in idle:
            if s.n_cache == 0:
                continue
            lcp = trace.prefix_with_state(s.seq, s.n_cache, r)
            f = lcp / T
            if f > best and f > sps:           # ties: the first slot wins
                best, best_lcp, ret = f, lcp, s
        if ret is not None and best_lcp / ret.n_cache < 0.5:
            update_cache = True
    if ret is None:
        best_lcp = -1
        t_last = 0.0
        for s in idle:
            # '<=': among equal t_last_used the LAST index wins (a fresh -np 4 server starts on slot 3)
            if ret is None or s.t_last_used <= t_last:
                ret, t_last = s, s.t_last_used
        update_cache = True
    return ret, update_cache, best_lcp
