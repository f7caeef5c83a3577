"""The simulator core: replay a trace through slots, the restore rule, a policy and a cost model.

Per request (spec §9.1): choose a slot (§2.1) and possibly save/load the host prompt cache (§5);
apply the restore rule (§2.2, ``server.restore_decision``); erase invalidated checkpoints; prefill
[cache_n, T) while the policy places checkpoints (§2.3), evicting while over budget (§2.4);
generation then appends the output, and the cache keeps prompt + generated[:-1] (§0).

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
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .cost import CostProfile, load_profile
from .policies import Policy, PrefillView, make_policy
from .records import Checkpoint, Event, EventKind, RequestResult
from .server import PrefillPlan, batch_counts, restore_decision
from .trace import Trace


@dataclass(frozen=True)
class ServerConfig:
    """The server flags the simulation runs under (names as llama-server's, spec §8)."""

    n_slots: int = 1                       # -np
    n_ctx: int = 262144                    # -c (per slot when not unified)
    n_batch: int = 2048                    # -b
    n_ubatch: int = 512                    # -ub
    ctx_checkpoints: int = 32              # --ctx-checkpoints (per slot)
    ckpt_budget_mib: float = math.inf      # host RAM for checkpoints per slot (not a server flag)
    cache_ram_mib: float = 8192.0          # --cache-ram: 0 off, -1 unlimited
    slot_prompt_similarity: float = 0.10   # -sps
    cache_idle_slots: bool = True          # --cache-idle-slots
    kv_unified: bool = True                # -kvu (auto with -np auto)
    # True: serve requests in the trace's order, each after its arrival and its session's previous
    # answer, so every policy sees the same interleaving (and a log of this very server replays in
    # its own order). False: in the order they become ready, as the server's task queue does
    # (module docstring) -- faithful queueing, but the order then depends on the policy.
    arrival_order: bool = True
    # Replaying a server's own log (validate): a slot is busy until the log says its task stopped
    # (observed["t_done_s"]), not until the cost model's finish, so which slots are idle -- and so
    # slot selection and the idle-slot saves of spec §2.1 -- follow the server, whatever the profile.
    log_timing: bool = False

    def __post_init__(self) -> None:
        if self.n_slots < 1:
            raise ValueError("n_slots must be >= 1")
        if self.n_batch < 1 or self.n_ubatch < 1:
            raise ValueError("batch sizes must be >= 1")
        if self.ctx_checkpoints < 0:
            raise ValueError("ctx_checkpoints must be >= 0")

    @property
    def eff_n_batch(self) -> int:
        """Effective -b: min(n_ctx, b) (spec §8)."""
        return max(1, min(self.n_ctx, self.n_batch))

    @property
    def eff_n_ubatch(self) -> int:
        """Effective -ub: min(b, ub)."""
        return max(1, min(self.eff_n_batch, self.n_ubatch))


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

    @property
    def ckpt_mib(self) -> float:
        return sum([c.size_mib for c in self.ckpts])


@dataclass
class _CacheEntry:
    seq: int
    n_tokens: int
    ckpts: list[Checkpoint]
    size_mib: float


@dataclass
class Run:
    """Results of one simulation: per-request results, events, and what produced them."""

    trace_name: str
    policy: str
    config: ServerConfig
    profile: str
    results: list[RequestResult]
    events: list[Event]
    peak_ckpt_mib: float = 0.0
    peak_cache_ram_mib: float = 0.0

    def summary(self) -> dict:
        """Run-level metrics (definitions: README, "Metrics")."""
        return summarize(self)


def summarize(run: Run) -> dict:
    """Aggregate a run's per-request results into the run-level metrics."""
    rs = run.results
    n = len(rs)
    prompt = sum(r.n_prompt for r in rs)
    cached = sum(r.n_cached for r in rs)
    reproc = sum(r.n_reprocessed for r in rs)
    ttft = np.array([r.ttft_ms for r in rs]) if rs else np.zeros(1)
    kinds = [e.kind for e in run.events]
    return {
        "trace": run.trace_name,
        "policy": run.policy,
        "profile": run.profile,
        "n_requests": n,
        "prompt_tokens": prompt,
        "reused_tokens": cached,
        "reprocessed_tokens": reproc,
        "true_prefix_tokens": sum(r.n_true_prefix for r in rs),
        "lost_tokens": sum(r.n_lost for r in rs),
        "reuse_ratio": cached / prompt if prompt else 0.0,
        "prefill_s": sum(r.prefill_ms for r in rs) / 1000.0,
        "restore_s": sum(r.restore_ms for r in rs) / 1000.0,
        "create_s": sum(r.create_ms for r in rs) / 1000.0,
        "ttft_p50_ms": float(np.percentile(ttft, 50)),
        "ttft_p95_ms": float(np.percentile(ttft, 95)),
        "ttft_p99_ms": float(np.percentile(ttft, 99)),
        "full_reprocess": sum(1 for r in rs if r.full_reprocess),
        "restores": sum(1 for r in rs if r.restored_n_tokens >= 0),
        "created": sum(r.n_created for r in rs),
        "evicted": sum(r.n_evicted for r in rs),
        "invalidated": sum(r.n_invalidated for r in rs),
        "peak_ckpt_mib": run.peak_ckpt_mib,
        "peak_cache_ram_mib": run.peak_cache_ram_mib,
        "cache_loads": kinds.count(EventKind.CACHE_LOAD),
        "makespan_s": max((r.finish_s for r in rs), default=0.0),
    }


class _PromptCache:
    """Host-RAM prompt cache (``--cache-ram``, spec §5): full states plus copies of checkpoints."""

    def __init__(self, limit_mib: float, limit_tokens: int, trace: Trace, profile: CostProfile):
        self.limit_mib = math.inf if limit_mib < 0 else limit_mib
        self.limit_tokens = limit_tokens
        self.entries: list[_CacheEntry] = []
        self.trace = trace
        self.profile = profile
        self._changed()

    def _changed(self) -> None:
        # The totals are read for every request but change only here: re-summed (not kept as
        # running totals) so they stay bit-identical to a fresh sum over the entries.
        self._size_mib = sum(e.size_mib for e in self.entries)
        self._n_tokens = sum(e.n_tokens for e in self.entries)

    @property
    def size_mib(self) -> float:
        return self._size_mib

    def _evict_oldest(self, emit: Callable[..., None]) -> None:
        old = self.entries.pop(0)
        self._changed()
        emit(EventKind.CACHE_EVICT, old.n_tokens, old.size_mib)

    def _lcp_seq(self, seq_a: int, n_a: int, seq_b: int, n_b: int) -> int:
        if seq_a < 0 or seq_b < 0:
            return 0
        return min(self.trace.seq_lcp(seq_a, seq_b), n_a, n_b)

    def save(self, slot: _Slot, emit: Callable[..., None]) -> None:
        """``prompt_save`` + ``alloc`` (st:1711)."""
        if slot.n_cache <= 0:
            return
        lcps = [self._lcp_seq(e.seq, e.n_tokens, slot.seq, slot.n_cache) for e in self.entries]
        if slot.n_cache in lcps:
            return                        # " - prompt is already in the cache, skipping"
        size = self.profile.state_mib(slot.n_cache) + slot.ckpt_mib
        if size > self.limit_mib:
            return                        # #25070: bigger than the whole cache
        # entries that are prefixes of the new one are obsolete
        kept = [e for e, lcp in zip(self.entries, lcps) if lcp != e.n_tokens]
        if len(kept) != len(self.entries):
            self.entries = kept
            self._changed()
        while self.entries and self.size_mib + size > self.limit_mib:
            self._evict_oldest(emit)
        self.entries.append(_CacheEntry(slot.seq, slot.n_cache, list(slot.ckpts), size))
        self._changed()
        emit(EventKind.CACHE_SAVE, slot.n_cache, size)

    def load(self, slot: _Slot, req: int, n_prompt: int, emit: Callable[..., None]) -> None:
        """``load`` (st:1793): take the entry better than the slot in both f_keep and f_sim."""
        lcp = self.trace.prefix_with_state(slot.seq, slot.n_cache, req)
        best_keep = lcp / slot.n_cache if slot.n_cache > 0 else -1.0
        best_sim = lcp / n_prompt
        best = -1
        for i, e in enumerate(self.entries):
            l_e = self.trace.prefix_with_state(e.seq, e.n_tokens, req)
            f_keep, f_sim = l_e / e.n_tokens, l_e / n_prompt
            if f_keep >= 0.25 and f_keep > best_keep and f_sim > best_sim:
                best, best_keep, best_sim = i, f_keep, f_sim
        if best >= 0:
            e = self.entries.pop(best)
            self._changed()
            slot.seq, slot.n_cache, slot.ckpts = e.seq, e.n_tokens, list(e.ckpts)
            emit(EventKind.CACHE_LOAD, e.n_tokens, e.size_mib)

    def update(self, emit: Callable[..., None]) -> None:
        """``update`` (st:1870): pop the oldest while over the byte or token limit."""
        while self.entries and self.size_mib > self.limit_mib:
            self._evict_oldest(emit)
        n_tok = self._n_tokens
        if n_tok and math.isfinite(self.limit_mib):
            lim_tok = max(self.limit_tokens, int(self.limit_mib / (self.size_mib / n_tok)))
        else:
            lim_tok = 1 << 62
        while self.entries and self._n_tokens > lim_tok:
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
             on_progress: Callable[[int], None] | None = None,
             seeding: Seeding | None = None) -> Run:
    """Replay ``trace`` under ``policy`` and ``config``, costing it with ``profile``.

    ``seeding`` stands in for slot state a log excerpt does not show (validation only).
    """
    config = config or ServerConfig()
    pol = make_policy(policy)
    prof = profile if isinstance(profile, CostProfile) else load_profile(profile)
    pol.prepare(trace, config, prof)           # offline policies see the whole trace first
    rules = pol.rules
    cap = pol.ctx_checkpoints if pol.ctx_checkpoints is not None else config.ctx_checkpoints
    budget = config.ckpt_budget_mib
    nb, ub = config.eff_n_batch, config.eff_n_ubatch
    slots = [_Slot(i) for i in range(config.n_slots)]
    pcache = _PromptCache(config.cache_ram_mib, config.n_ctx, trace, prof) \
        if config.cache_ram_mib != 0 else None
    device = _Device()
    results: list[RequestResult] = []
    events: list[Event] = []
    peak_ckpt = peak_ram = 0.0
    order = np.argsort(trace.t_s, kind="stable").tolist()
    ckpt_total = 0.0
    budget_finite = math.isfinite(budget)
    n_prompt_l, n_output_l, t_l = trace.n_prompt.tolist(), trace.n_output.tolist(), trace.t_s.tolist()
    sessions, user_starts, tool_starts = trace.session, trace.user_starts, trace.tool_starts
    sps = config.slot_prompt_similarity

    # The task queue: (key, arrival rank, id). In arrival order the key is the rank and every
    # request is queued up front. In ready order the key is the ready time and a session's next
    # request joins when the previous one finishes; start times then never decrease, so slot
    # state stays causal.
    rank = {r: i for i, r in enumerate(order)}
    nxt_in_session: dict[int, int] = {}
    last_of: dict[str, int] = {}
    session_free: dict[str, float] = {}
    queue: list[tuple[float, int, int]] = []
    for r in order:
        prev = last_of.get(sessions[r])
        if prev is None or config.arrival_order:
            queue.append((float(rank[r]) if config.arrival_order else t_l[r], rank[r], r))
        else:
            nxt_in_session[prev] = r
        last_of[sessions[r]] = r
    heapq.heapify(queue)
    done = 0

    while queue:
        key, _, r = heapq.heappop(queue)
        T = n_prompt_l[r]
        n_out = n_output_l[r]
        arrival = t_l[r]
        session = sessions[r]
        if config.arrival_order:
            start_s = max(arrival, session_free.get(session, 0.0))
            now_s = arrival             # starts may go back in time; arrivals do not
        else:
            start_s = now_s = key
        idle = [s for s in slots if s.busy_until <= start_s]
        if not idle:
            start_s = min(s.busy_until for s in slots)
            idle = [s for s in slots if s.busy_until <= start_s]
        pinned = seeding.slot_for(r, idle) if seeding is not None else None
        if pinned is not None:
            # the log shows the slot this task ran on, and the seed is that slot's state after any
            # prompt-cache load: take it as it is
            slot, update_cache = pinned, False
        else:
            slot, update_cache = _select_slot(trace, r, T, idle, sps)
        if record_events:
            def emit(kind: EventKind, n_tokens: int = -1, size_mib: float = 0.0, detail: str = "",
                     _r: int = r, _slot: int = slot.id) -> None:
                events.append(Event(kind, _r, _slot, n_tokens, size_mib, detail))
        else:
            emit = _no_event
        emit(EventKind.SLOT_SELECTED, detail="lru" if update_cache else "lcp")
        if pcache is not None:
            if update_cache:
                pcache.save(slot, emit)
                pcache.load(slot, r, T, emit)
                pcache.update(emit)
            if config.cache_idle_slots:
                # spec §2.1: after launch every other idle slot is saved; unified KV also clears it
                for s in idle:
                    if s is not slot and s.n_cache > 0:
                        pcache.save(s, emit)
                        if config.kv_unified:
                            s.seq, s.n_cache, s.ckpts = -1, 0, []
                pcache.update(emit)

        # --- restore decision (spec §2.2) ---
        n_lcp = trace.prefix_with_state(slot.seq, slot.n_cache, r)
        ks = [c.n_tokens for c in slot.ckpts]
        dec = restore_decision(rules, n_lcp, slot.n_cache, T, ks)
        n_invalid = 0
        if ks and max(ks) > dec.keep_upto:
            kept = []
            for c in slot.ckpts:
                if c.n_tokens > dec.keep_upto:
                    n_invalid += 1
                    emit(EventKind.ERASED_INVALIDATED, c.n_tokens, c.size_mib)
                else:
                    kept.append(c)
            slot.ckpts = kept
            ks = [c.n_tokens for c in kept]
        ckpts = slot.ckpts          # from here on only changed in place
        restore_ms = 0.0
        if dec.restored >= 0:
            size = next(c.size_mib for c in reversed(ckpts) if c.n_tokens == dec.restored)
            restore_ms = prof.restore_ms(size)
            emit(EventKind.RESTORED, dec.restored, size)
        if dec.full_reprocess:
            emit(EventKind.FULL_REPROCESS, 0)
        n_past = dec.n_past

        # --- prefill with checkpoint placement (spec §2.3) and eviction (§2.4) ---
        if cap > 0:
            plan = pol.place(PrefillView(r, slot.id, n_past, T, user_starts[r], tool_starts[r],
                                         tuple(ks), nb, ub))
        else:
            plan = PrefillPlan((), *batch_counts(n_past, T, nb, ub))
        n_created = n_evicted = 0
        create_ms = 0.0
        created_at = []
        for k in plan.positions:
            size = prof.ckpt_mib(k)
            if size > budget:
                continue
            drops = pol.pre_evict(ckpts, k, r, cap)
            for i in sorted(drops, reverse=True):
                c = ckpts.pop(i)
                n_evicted += 1
                emit(EventKind.ERASED_SPACING, c.n_tokens, c.size_mib)
            while ckpts and (len(ckpts) >= cap or (budget_finite and slot.ckpt_mib + size > budget)):
                i = pol.victim(ckpts, k)
                c = ckpts.pop(i)
                n_evicted += 1
                emit(EventKind.ERASED_OLD, c.n_tokens, c.size_mib)
            for i in sorted(pol.supersede(ckpts, k), reverse=True):
                c = ckpts.pop(i)
                n_evicted += 1
                emit(EventKind.SUPERSEDED, c.n_tokens, c.size_mib)
            ckpts.append(Checkpoint(k, size, r, start_s))
            created_at.append(k)
            n_created += 1
            create_ms += prof.create_ms(size)
            if record_events:           # the message alone costs more than a no-op emit
                emit(EventKind.CREATED, k, size, f"{len(ckpts)} of {cap}")
        for i in sorted(pol.prune(ckpts), reverse=True):
            c = ckpts.pop(i)
            n_evicted += 1
            emit(EventKind.DROPPED, c.n_tokens, c.size_mib)
        prefill_ms = prof.prefill_ms(n_past, T, plan.n_batches, plan.n_ubatches)
        decode_ms = prof.decode_ms(T, n_out)

        if seeding is not None and r in seeding.ckpts:
            slot.ckpts = [Checkpoint(k, prof.ckpt_mib(k), r, start_s) for k in seeding.ckpts[r]]
        slot.seq = r
        slot.n_cache = T + max(n_out - 1, 0)       # prompt + generated[:-1] (spec §0)
        work_ms = restore_ms + prefill_ms + create_ms
        work_start = device.run(start_s, work_ms / 1000.0, now_s)
        finish = work_start + (work_ms + decode_ms) / 1000.0
        if config.log_timing:
            t_done = (trace[r].observed or {}).get("t_done_s")
            if t_done is not None:
                finish = max(start_s, float(t_done))
        slot.busy_until = finish
        slot.t_last_used = finish
        session_free[session] = finish
        q = nxt_in_session.get(r)
        if q is not None:
            heapq.heappush(queue, (max(t_l[q], finish), rank[q], q))
        ckpt_total = sum([s.ckpt_mib for s in slots])
        if ckpt_total > peak_ckpt:
            peak_ckpt = ckpt_total
        ram = pcache.size_mib if pcache is not None else 0.0
        peak_ram = max(peak_ram, ram)
        results.append(RequestResult(
            request_id=r, session=session, slot=slot.id, arrival_s=arrival, start_s=start_s,
            n_prompt=T, n_output=n_out, n_true_prefix=n_lcp, n_cached=n_past,
            n_reprocessed=T - n_past, restored_n_tokens=dec.restored,
            full_reprocess=dec.full_reprocess, n_created=n_created, n_evicted=n_evicted,
            n_invalidated=n_invalid, prefill_ms=prefill_ms, restore_ms=restore_ms,
            create_ms=create_ms, ttft_ms=(work_start - arrival) * 1000.0 + work_ms, finish_s=finish,
            ckpt_mib_after=ckpt_total, cache_ram_mib_after=ram, created_at=tuple(created_at),
            device_wait_ms=(work_start - start_s) * 1000.0))
        done += 1
        if on_progress is not None and (done & 255) == 0:
            on_progress(256)
    if on_progress is not None:
        on_progress(len(order) & 255)
    return Run(trace.name, pol.spec, config, prof.name, results, events, peak_ckpt, peak_ram)


def _no_event(*args: object, **kwargs: object) -> None:
    return None


def _select_slot(trace: Trace, r: int, T: int, idle: list[_Slot], sps: float) -> tuple[_Slot, bool]:
    """``get_available_slot`` (spec §2.1): best LCP similarity above -sps, else LRU."""
    ret = None
    update_cache = False
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
        t_last = 0.0
        for s in idle:
            # '<=': among equal t_last_used the LAST index wins (a fresh -np 4 server starts on slot 3)
            if ret is None or s.t_last_used <= t_last:
                ret, t_last = s, s.t_last_used
        update_cache = True
    return ret, update_cache
