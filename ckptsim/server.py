"""llama-server's checkpoint behaviour per version: the restore rule, placement and eviction.

Everything here mirrors ``../shared/docs/llama-server-checkpoints.md`` ("spec"), which was read off
``tools/server/server-context.cpp`` at 3f545becc (b10573) and the git history before it. The
restore rule is physics for every policy (design principle 3), so it lives here, once.

Positions are in tokens. A hybrid/recurrent slot holding L tokens has pos_min = pos_max = L - 1,
and a checkpoint with ``n_tokens = k`` has pos_min = pos_max = k - 1 (spec §0)::

    cache:      |0 ........................................ L)
    new prompt: |0 ..................... n_past)............... T)
    checkpoints:     ^k1        ^k2          ^k3 (k3 > n_past: erased after the restore)
    restore picks the newest k <= n_past (k <= n_past - 1 when the prompt is fully cached)
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

# #28302 (spec §2, merged ~2026-09) has no known tag. Measured by `ckptsim conformance`
# (docs/conformance.md): b10809 replays only under the older rules, b11063 only under #28302's,
# so it landed in b10810-b11063; 11000 lies inside that bracket.
PR28302_BUILD = 11000
FIRST_BUILD = 6685     # #16382: context checkpoints for hybrid/recurrent models
LATEST_BUILD = 11549
DEFAULT_BUILD = LATEST_BUILD


@dataclass(frozen=True)
class ServerConfig:
    """The server flags the simulation runs under (names as llama-server's, spec §8).

    ``ctx_checkpoints`` is the cap unless the policy pins its own (``policies.checkpoint_cap``).
    """

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


# Every build at which a modelled rule changes, with the PR that changed it (spec §3, §8): the one
# table of build boundaries. Each build is the merge commit's own build number, its commit count on
# master (`git rev-list --count COMMIT` in llama.cpp's history; `rev-list --count b9542` is 9542),
# which is what a server built from that commit prints. The spec's §3 table gives the first
# release tag after each merge instead, 0-33 builds later (#24110: merged as b9509, tag b9542;
# xllamacpp 2026.6.9538 already has it, docs/conformance.md). #28302 is not in the history read. ServerRules' flags read their thresholds here and nowhere else, and
# validate replays a log's open build range once per group between them (RULE_BOUNDARIES).
RULE_CHANGES: dict[str, tuple[int, str]] = {
    "end_minus_64": (6711, "#16440"),          # checkpoint at T-64; >= 64 tokens, > 64 after the last
    "cache_ram": (6723, "#16391"),             # host prompt cache (--cache-ram 8192); -ctxcp 3 -> 8
    "truncate_last_fails": (7011, "#17009"),   # seq_rm of the recurrent state's last position fails
    "end_minus_batch": (7970, "#19408"),       # checkpoint at T - min(n_batch, 512)
    "every_n_tokens": (8218, "#20087"),        # --checkpoint-every-n-tokens; -ctxcp 8 -> 32
    "near_end_pair": (8271, "#20288"),         # breaks and checkpoints at T-(4+ub) and T-4
    "erase_vs_pos_next": (8393, "#20671"),     # invalidation against pos_next (before: the n_past found)
    "n_swa_zero": (8450, "#20726"),            # n_swa = 0: thold = n_past, search iff pos_min >= thold
    "pick_pos_min_zero": (8693, "#21510"),     # a checkpoint with pos_min == 0 is always acceptable
    "search_every_request": (9231, "#23280"),  # thold = n_past - 1; n_past == T no longer resets
    "user_turns": (9310, "#22929"),            # last user message, --checkpoint-min-step 256; every-N
                                               # and the 64-token rules removed
    "has_new": (9509, "#24110"),               # thold = n_past - (0 if has_new else 1)
    "skip_past_pos_next": (9593, "#24411"),    # skip checkpoints with pos_max > pos_next
    "every_user_start": (9765, "#24176"),      # break at every user start; min step 256 -> 8192
    "cache_alloc_makes_room": (9908, "#25070"),  # a prompt-cache save pops the oldest entries itself
    "user_break_conditional": (9936, "#25420"),  # user-start break only if a checkpoint is due there
    "spacing_eviction": (9978, "#25472"),      # spacing eviction (a); near-end exempt from spacing
    "spacing_when_full": (PR28302_BUILD, "#28302"),  # (a) only when full; supersede the same n_tokens
}


def _since(change: str) -> int:
    return RULE_CHANGES[change][0]


@dataclass(frozen=True)
class ServerRules:
    """The decision rules of one llama-server build for hybrid/recurrent, text-only prompts (spec §3).

    Each flag names a rule and reads the build that introduced it from ``RULE_CHANGES``. The flags
    are cached: the simulator consults them for every request and batch.
    """

    build: int

    # --- restore (spec §2.2, §3 "Search / Pick / Erase") ---
    @cached_property
    def searches_every_request(self) -> bool:
        """b9231-b9508 (#23280, until #24110): thold = n_past - 1, so even pure extensions search."""
        return _since("search_every_request") <= self.build < _since("has_new")

    @cached_property
    def has_new_rule(self) -> bool:
        """b9509+ (#24110): thold = n_past - (0 if has_new else 1)."""
        return self.build >= _since("has_new")

    @cached_property
    def n_swa_zero(self) -> bool:
        """b8450+ (#20726): n_swa = 0, so thold = n_past and a search runs iff pos_min >= thold
        (before: n_swa := 1, thold = n_past - 1, search iff 0 < n_past < L)."""
        return self.build >= _since("n_swa_zero")

    @cached_property
    def skip_past_pos_next(self) -> bool:
        """b9593+ (#24411): the search skips checkpoints with pos_max > pos_next."""
        return self.build >= _since("skip_past_pos_next")

    @cached_property
    def pick_pos_min_zero(self) -> bool:
        """b8693+ (#21510): a checkpoint with pos_min == 0 (k == 1) is always acceptable."""
        return self.build >= _since("pick_pos_min_zero")

    @cached_property
    def erase_vs_pos_next(self) -> bool:
        """b8393+ (#20671): the invalidation pass erases against pos_next (after the restore);
        before, against the n_past found before it (it ran for every request in both)."""
        return self.build >= _since("erase_vs_pos_next")

    @cached_property
    def full_on_resend(self) -> bool:
        """b7011-b9230 (#17009, until #23280): n_past == T hits a failed seq_rm on recurrent
        memory => full re-processing. Before #17009 a seq_rm that starts at the state's own last
        position succeeds (the old test, ``p0 < cell.pos``, is false there), so the server keeps
        n_past = T - 1 and decodes that token again (measured on b6751 and b6900; the spec dates
        the failure from b6685)."""
        return _since("truncate_last_fails") <= self.build < _since("search_every_request")

    # --- placement (spec §2.3, §3 "Place") ---
    @cached_property
    def era(self) -> str:
        """Name of the placement rule set this build uses."""
        b = self.build
        if b < _since("end_minus_64"):
            return "end"            # b6685: one checkpoint after the prompt, k = T
        if b < _since("end_minus_batch"):
            return "end-64"         # b6711 #16440: k = T - 64
        if b < _since("near_end_pair"):
            return "end-batch"      # b7970 #19408: k = T - min(n_batch, 512)
        if b < _since("user_turns"):
            return "near-end"       # b8271 #20288: k in {T-(4+ub), T-4} (+ every-N from b8218)
        if b < _since("every_user_start"):
            return "last-user"      # b9310 #22929: + last user message, min_step spacing
        return "user"               # b9765 #24176: every user start

    @cached_property
    def user_turn_checkpoints(self) -> bool:
        """b9310+ (#22929): checkpoints at user-message starts, spaced by ``--checkpoint-min-step``
        (the flag exists from this build on)."""
        return self.build >= _since("user_turns")

    @cached_property
    def every_n(self) -> bool:
        """b8218-b9309 (#20087, until #22929): ``--checkpoint-every-n-tokens`` mid-prompt checkpoints."""
        return _since("every_n_tokens") <= self.build < _since("user_turns")

    @cached_property
    def min64(self) -> bool:
        """b6711-b9309 (#16440, until #22929): checkpoints need >= 64 tokens and > 64 tokens after
        the previous one."""
        return _since("end_minus_64") <= self.build < _since("user_turns")

    @cached_property
    def user_break_conditional(self) -> bool:
        """b9936+ (#25420): break at a user start only if a checkpoint would be taken there."""
        return self.build >= _since("user_break_conditional")

    @cached_property
    def near_end_exempt(self) -> bool:
        """b9978+ (#25472): near-end checkpoints ignore the min_step spacing."""
        return self.build >= _since("spacing_eviction")

    @cached_property
    def spacing_eviction(self) -> bool:
        """b9978+ (#25472): creating a checkpoint first erases older tasks' too-close ones."""
        return self.build >= _since("spacing_eviction")

    @cached_property
    def spacing_eviction_only_when_full(self) -> bool:
        """#28302: the spacing pass runs only when the list is full; same-position ones are superseded."""
        return self.build >= _since("spacing_when_full")

    # --- flag defaults (spec §8) ---
    @cached_property
    def cache_alloc_makes_room(self) -> bool:
        """b9908+ (#25070): saving to the prompt cache first pops the oldest entries until the new
        one fits (and skips one bigger than the whole cache). Before, only ``update()`` trimmed,
        after the slot's load, keeping at least one entry: an entry the save would have pushed out
        could still be loaded (seen on b7964, docs/conformance.md)."""
        return self.build >= _since("cache_alloc_makes_room")

    @cached_property
    def default_ctx_checkpoints(self) -> int:
        """``--ctx-checkpoints`` default: 3 (b6685), 8 (b6723 #16391), 32 (b8218 #20087) (spec §8)."""
        return 3 if self.build < _since("cache_ram") else 8 if self.build < _since("every_n_tokens") else 32

    @cached_property
    def default_cache_ram_mib(self) -> float:
        """``--cache-ram`` default: 8192 MiB from b6723 (#16391), which added the host prompt cache;
        0 (no cache) before."""
        return 8192.0 if self.build >= _since("cache_ram") else 0.0

    @cached_property
    def default_min_step(self) -> int:
        """``--checkpoint-min-step`` default: 256 (b9310 #22929), 8192 (b9765 #24176) (spec §8)."""
        return 256 if self.build < _since("every_user_start") else 8192


def parse_build(version: str | int) -> int:
    """'b10573', '10573' or 'latest' -> build number."""
    if isinstance(version, int):
        return version
    v = str(version).strip().lower()
    if v in ("latest", "current", "master"):
        return LATEST_BUILD
    if v.startswith("b"):
        v = v[1:]
    if not v.isdigit():
        raise ValueError(f"bad llama-server version {version!r}: expected a build like b10573")
    b = int(v)
    if b < FIRST_BUILD:
        raise ValueError(f"build b{b} predates checkpoints for hybrid/recurrent models (b{FIRST_BUILD}, #16382)")
    return b


class RestoreDecision(NamedTuple):
    """Outcome of the restore step for one request (spec §2.2). (A named tuple: one per request.)"""

    n_past: int           # cached tokens kept (the server's cache_n)
    restored: int         # n_tokens of the restored checkpoint, -1 if none
    full_reprocess: bool  # a search found nothing usable ("forcing full prompt re-processing")
    searched: bool
    keep_upto: int        # checkpoints with n_tokens > keep_upto are erased ("erased invalidated")


def restore_decision(rules: ServerRules, n_lcp: int, n_cache: int, n_prompt: int,
                     ckpt_n_tokens: list[int]) -> RestoreDecision:
    """Apply the server's restore rule to a slot holding ``n_cache`` tokens (spec §2.2, §3).

    ``n_lcp`` is the common prefix of the cache and the new prompt, ``ckpt_n_tokens`` the
    slot's checkpoints in creation order (= ascending n_tokens).
    """
    n_past = n_lcp
    T, L = n_prompt, n_cache
    restored, full, searched = -1, False, False
    pos_next = n_past
    if rules.has_new_rule or rules.searches_every_request:
        # b9231+: search if 0 < n_past <= L and pos_min (L-1) >= thold
        has_new = n_past < T
        if rules.searches_every_request:
            thold = max(0, n_past - 1)
        else:
            thold = max(0, n_past - (0 if has_new else 1))
        do_search = 0 < n_past <= L and (L - 1) >= thold
    elif rules.n_swa_zero:
        # b8450 #20726: n_swa = 0, thold = n_past; search if pos_min >= thold, i.e. n_past < L
        thold = n_past
        do_search = 0 < n_past <= L and (L - 1) >= thold
    else:
        # b6685 #16382: n_swa := 1, thold = n_past - 1; search if 0 < n_past < L
        thold = n_past - 1
        do_search = 0 < n_past < L
    if do_search:
        searched = True
        chosen = -1
        skip_past = rules.skip_past_pos_next
        for k in reversed(ckpt_n_tokens):              # newest first
            if skip_past and k - 1 > pos_next:         # #24411: skip pos_max > pos_next
                continue
            if (k - 1) < thold or (rules.pick_pos_min_zero and k == 1):
                chosen = k
                break
        if chosen >= 0:
            restored = chosen
            pos_next = min(pos_next, chosen)
            n_past = min(pos_next, chosen)
        else:
            full = True
            pos_next = n_past = 0
    # Invalidation runs for every request, searched or not. b8393+: k - 1 > pos_next. Before:
    # pos_min > max(0, n_past - n_swa) with n_swa := 1 and the n_past found before the restore, so
    # a prompt with no common prefix keeps only k <= 1. Measured on b8151 and b8352 (xllamacpp
    # 0.2.12, 0.2.13): a new session on the slot erased every checkpoint (docs/conformance.md).
    if rules.erase_vs_pos_next:
        keep_upto = pos_next + 1
    else:
        keep_upto = max(n_lcp, 1)
    if n_past == T and n_past > 0:
        # "need to evaluate at least 1 token": in b7011-b9230 the seq_rm of the last token fails on
        # recurrent memory, the memory is cleared and the prompt re-processed (spec §3, last note).
        if rules.full_on_resend:
            n_past, full = 0, True
        else:
            n_past -= 1
    return RestoreDecision(n_past=n_past, restored=restored, full_reprocess=full, searched=searched,
                           keep_upto=keep_upto)


class PrefillPlan(NamedTuple):
    """Where checkpoints are created while one prompt is prefilled, and how many batches it takes.
    (A named tuple: one per request.)"""

    positions: tuple[int, ...]
    n_batches: int               # llama_decode calls (batches of at most n_batch)
    n_ubatches: int              # graph computes: llama_decode splits each batch into n_ubatch pieces


def batch_counts(start: int, end: int, n_batch: int, n_ubatch: int,
                 breaks: tuple[int, ...] | list[int] = ()) -> tuple[int, int]:
    """(batches, ubatches) for prefilling [start, end) when batches also end at ``breaks``.

    A batch holds at most ``n_batch`` tokens; llama_decode splits it into ubatches of at most
    ``n_ubatch`` (spec §2.3: ``n_ubatch = min(n_batch, -ub)``)::

        |start ....... n_batch ....... |....... n_batch ....... |.. rest ..|break|... |end
        |ub|ub|ub|ub|ub|ub|ub|ub|ub|ub |ub|ub|ub|ub|ub|ub|ub|ub |ub|ub|ub |ub|ub|
    """
    if end <= start:
        return 0, 0
    return count_batches(start, end, n_batch, n_ubatch,
                         sorted({x for x in breaks if start < x < end}) if breaks else ())


def count_batches(start: int, end: int, n_batch: int, n_ubatch: int,
                  breaks: tuple[int, ...] | list[int]) -> tuple[int, int]:
    """``batch_counts`` for start < end and ``breaks`` already sorted, distinct, inside (start, end)."""
    nb = max(1, n_batch)
    ub = max(1, min(nb, n_ubatch))
    per_full = -(-nb // ub)
    n_b = n_ub = 0
    s = start
    for b in breaks:
        q, rest = divmod(b - s, nb)
        n_b += q + (rest > 0)
        n_ub += q * per_full + -(-rest // ub)
        s = b
    q, rest = divmod(end - s, nb)
    return n_b + q + (rest > 0), n_ub + q * per_full + -(-rest // ub)


def server_placement(rules: ServerRules, start: int, n_prompt: int, user_starts: tuple[int, ...],
                     last_k: int | None, n_batch: int, n_ubatch: int, min_step: int,
                     every_n: int, enabled: bool = True,
                     last_user_min_step: int | None = None) -> PrefillPlan:
    """Checkpoint positions the server creates while prefilling [start, n_prompt) (spec §2.3, §3).

    ``last_k`` is the newest existing checkpoint (None if the slot has none). The loop walks
    batches, not tokens: a batch ends at ``n_batch`` tokens or at the first break point.
    ``last_user_min_step``: from b9765 the last user message is exempt from the min step; a
    number makes it need that many tokens after the newest checkpoint instead (a proposal in a
    comment on #25472, policy ``pr25472-half-step``).
    """
    T = n_prompt
    nb = max(1, min(n_batch, max(T, 1)))
    ub = max(1, min(nb, n_ubatch))
    era = rules.era
    if start >= T:
        return PrefillPlan((), 0, 0)
    if not enabled:
        return PrefillPlan((), *batch_counts(start, T, nb, ub))
    if era in ("end", "end-64", "end-batch"):
        return _placement_single_end(rules, start, T, last_k, nb, ub, era)
    # Break points that do not depend on state (#20288): T-(4+ub) and T-4, ascending.
    fixed = (T - min(nb, 4 + ub), T - min(nb, 4))
    # Only the user eras look at user starts (breaks and checkpoints alike).
    users = user_starts if era in ("last-user", "user") else ()
    last_user = users[-1] if users else -1
    every_n_on = rules.every_n and every_n > 0
    user_break_conditional = rules.user_break_conditional
    near_end_exempt = rules.near_end_exempt
    min64 = rules.min64
    out: list[int] = []
    n_batches = n_ubatches = 0
    ub_per_batch = -(-nb // ub)
    pos = start

    def spaced(p: int) -> bool:
        return last_k is None or p > last_k + min_step

    while pos < T:
        # Fast-forward over plain batches: n_batch long, no break point before the next user
        # start or fixed break, and no checkpoint at their start (not a user start, not near the
        # end, no every-n due). The per-batch rules below would only count them.
        if T - ub - pos >= nb:
            j = bisect.bisect_right(users, pos)
            at_user = j > 0 and users[j - 1] == pos
            if users and (era == "last-user" or (user_break_conditional and last_k is not None)):
                # Quiet user starts (users[:lo] but the last) neither end a batch nor get a
                # checkpoint away from the end: before b9775 all but the last, from b9936 those
                # not spaced past the newest checkpoint.
                lo = len(users) - 1 if era == "last-user" else bisect.bisect_right(users, last_k + min_step)
                if at_user and j - 1 < lo and pos != last_user:
                    at_user = False
                if j < len(users):
                    j = min(max(j, lo), len(users) - 1)
            if not at_user:
                nxt = users[j] if j < len(users) else T
                for f in fixed:
                    if pos < f < nxt:
                        nxt = f
                        break
                m = (min(nxt, T - ub) - pos) // nb
                if every_n_on:
                    m = min(m, -(-((last_k if last_k is not None else 0) + every_n - pos) // nb))
                if m > 0:
                    pos += m * nb
                    n_batches += m
                    n_ubatches += m * ub_per_batch
        n_start = pos
        end = min(n_start + nb, T)
        for f in fixed:
            if n_start < f < end:
                end = f
                break
        i = bisect.bisect_right(users, n_start)          # users[:i] <= n_start
        if era == "last-user":
            is_user = n_start == last_user
        else:
            is_user = i > 0 and users[i - 1] == n_start
        # The first user start inside the batch that ends it: before b9775 only the last one; then
        # any; from b9936 the last one or one spaced past the newest checkpoint -- those form a
        # suffix of the sorted starts, so bisection finds the first (long chats have hundreds).
        if i < len(users):
            if era == "last-user":
                j = len(users) - 1
            elif user_break_conditional and last_k is not None:
                j = min(max(i, bisect.bisect_right(users, last_k + min_step)), len(users) - 1)
            else:
                j = i
            if users[j] < end:
                end = users[j]
        n_ubatches += -(-(end - pos) // ub)
        pos = end
        n_batches += 1
        # Decide whether this batch gets a checkpoint at its start (state before the batch).
        near_end = T < pos + ub
        if era == "last-user" and n_start < last_user:
            # b9310-b9764: a near-end batch gets a checkpoint only after the last user message
            # (spec §3, #22929 row); seen in b9538's log: T=1467, -b 512, last user at 987 -> the
            # batch at T-512 = 955 is near the end but gets none, 987 and 1463 do
            near_end = False
        do = pos == T or is_user or near_end
        if every_n_on and not do and pos != T:
            # b8218 #20087: a mid batch far enough from the last checkpoint gets one.
            do = n_start - (last_k if last_k is not None else 0) >= every_n
        if n_start == 0:
            do = False          # memory empty: pos_min < 0 (spec §2.3)
        if do:
            if era == "near-end":
                if min64:
                    do = n_start >= 64 and (last_k is None or n_start > last_k + 64)
            elif era == "last-user":
                do = spaced(n_start)       # last_user became exempt only in b9765
            else:
                do = (last_k is None
                      or (n_start == last_user
                          and (last_user_min_step is None or n_start > last_k + last_user_min_step))
                      or (near_end and near_end_exempt) or n_start > last_k + min_step)
        if do:
            out.append(n_start)
            last_k = n_start
    return PrefillPlan(tuple(out), n_batches, n_ubatches)


def _placement_single_end(rules: ServerRules, start: int, T: int, last_k: int | None, nb: int,
                          ub: int, era: str) -> PrefillPlan:
    """b6685-b8270: at most one checkpoint per request, at the end of the prompt."""
    if era == "end":
        # b6685: taken after the last batch is decoded, so it covers the whole prompt.
        counts = batch_counts(start, T, nb, ub)
        k = T
        ok = k > 0
    else:
        off = 64 if era == "end-64" else min(nb, 512)
        brk = T - off
        if start < brk:
            counts = batch_counts(start, T, nb, ub, (brk,))
            k = brk
        else:
            counts = batch_counts(start, T, nb, ub)
            k = start
        ok = k >= 64 and (last_k is None or k > last_k + 64) and k > 0
    return PrefillPlan((k,) if ok else (), *counts)


def spacing_victims(rules: ServerRules, ckpts: list[tuple[int, int]], task_id: int, min_step: int,
                    n_ctx_checkpoints: int) -> list[int]:
    """Indices erased by rule (a) before a create: older tasks' checkpoints too close to a kept one.

    ``ckpts`` are (n_tokens, task_id) oldest first (spec §2.4 (a), #25472; #28302 only when full).
    """
    if not spacing_pass_runs(rules, len(ckpts), n_ctx_checkpoints):
        return []
    out: list[int] = []
    last = -1
    n_left = len(ckpts)
    for i, (k, tid) in enumerate(ckpts):
        if rules.spacing_eviction_only_when_full and n_left + 1 < n_ctx_checkpoints:
            break
        if tid != task_id and last >= 0 and k <= last + min_step:
            out.append(i)
            n_left -= 1
        else:
            last = k
    return out


def spacing_pass_runs(rules: ServerRules, n_ckpts: int, n_ctx_checkpoints: int) -> bool:
    """Whether rule (a) runs at all before a create with ``n_ckpts`` checkpoints in the slot."""
    if not rules.spacing_eviction:
        return False
    return not (rules.spacing_eviction_only_when_full and n_ckpts + 1 < n_ctx_checkpoints)


# Builds where a rule of this module changes (RULE_CHANGES): a build range that the wording of a
# log leaves open is replayed once per group (validate).
RULE_BOUNDARIES = tuple(sorted({b for b, _ in RULE_CHANGES.values()}))
