"""Checkpoint policies: where to take checkpoints while a prompt is prefilled, and which to drop.

A policy answers two questions (design principle 2); the simulator owns everything else:
- ``place(view)``: checkpoint positions (n_tokens) to create while prefilling [view.start, T);
- ``victim(ckpts, new_k)``: which checkpoint goes when the count or byte budget is full.
``prepare(trace, config, profile, replay)`` is called once before the replay (a no-op except for
offline policies such as the oracle, which read the whole trace there and may replay it with
``replay``, the simulator itself, handed in so that no policy imports the simulator).
``pre_evict`` lets a policy drop checkpoints voluntarily before a create (llama-server's spacing
rule). Policies are built from spec strings: ``every-n:n=2048``, ``llama-server:version=b10573``,
and ``A+B`` combines A's placement with B's eviction (``every-n:n=2048+coverage``).
"""
from __future__ import annotations

import dataclasses
import math
import operator
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

from . import engines, oracle
from .adaptive import AdaptiveRules
from .records import Checkpoint
from .server import (DEFAULT_BUILD, PrefillPlan, RestoreDecision, ServerConfig, ServerRules, batch_counts,
                     count_batches, parse_build, restore_decision, server_placement, spacing_pass_runs,
                     spacing_victims)

_CURRENT_RULES = ServerRules(DEFAULT_BUILD)
_n_tokens = operator.itemgetter(0)        # Checkpoint.n_tokens, for map() over a slot's list


class PrefillView(NamedTuple):
    """What a policy may look at when it plans the checkpoints of one prompt. (A named tuple:
    the simulator makes one per request.)"""

    request_id: int
    slot: int
    start: int                     # first position prefilled (cache_n after the restore step)
    n_prompt: int
    user_starts: tuple[int, ...]
    tool_starts: tuple[int, ...]
    ckpt_n_tokens: tuple[int, ...]  # the slot's checkpoints, oldest first
    n_batch: int
    n_ubatch: int
    # Common prefix of the prompt and the slot's cache before the restore step (the server's LCP;
    # ``start`` is below it when the restore fell back to an earlier checkpoint).
    lcp_n_tokens: int = 0
    # Longest common prefix of the prompt with any sequence served before it (a finished
    # request's prompt + output, a running one's prompt): what a radix tree of everything the
    # server has seen would match. Computed online from the trace's parent chain.
    seen_prefix_n_tokens: int = 0
    # ``seen_prefix_n_tokens`` again when the prompt leaves that sequence there (a radix tree
    # would split an edge: Marconi's branch point), else 0 (the prompt extends the whole
    # sequence, shares nothing, or runs out inside it).
    branch_n_tokens: int = 0
    # The slot's cache before the restore step: its length and the request that left it (-1: empty).
    cached_n_tokens: int = 0
    cached_task: int = -1
    # Prompt-cache entries evicted so far, server-wide (``--cache-ram`` full: the server logs each
    # one); 0 with the cache off.
    n_cache_evicted: int = 0


class Policy:
    """Base policy: no checkpoints, FIFO eviction, the current server's restore rule."""

    name: ClassVar[str] = "base"
    source: ClassVar[str] = ""
    # True when victim/prune only make sense for the positions this policy's own place() chose
    # (the oracle): ``A+B`` refuses such a B.
    needs_own_placement: ClassVar[bool] = False
    # Simulation time relative to ``none``'s, roughly: a sweep starts the costly tasks first.
    relative_cost: ClassVar[float] = 1.0
    # True when ``prepare`` replays the trace without checkpoints (``oracle.shadow_run``): runs
    # that differ only in cap and budget, and ``none`` under the same flags, share that replay
    # within a process, so a sweep runs them in one (``sweep.shared_units``).
    makes_shadow: ClassVar[bool] = False

    # restore rule this policy runs under (spec §2.2); only llama-server versions change it
    @property
    def rules(self) -> ServerRules:
        return _CURRENT_RULES

    @property
    def ctx_checkpoints(self) -> int | None:
        """A count cap the policy itself pins (None: the server config's); read it through
        ``checkpoint_cap``, which owns the rule."""
        return None

    def prepare(self, trace, config: ServerConfig, profile,
                replay: Callable[..., object]) -> None:
        """Called once before the replay with the whole trace (offline policies plan here).

        ``replay(trace, policy, config, profile, record_events=...)`` is the simulator itself
        (``sim.simulate``), for a policy that plans on trial replays of the trace.
        """
        return None

    def take_replay(self) -> object | None:
        """A replay of this very policy under the config ``prepare`` was given that ``prepare``
        has already made (a ``sim.Run`` with events), handed over once; the simulator returns it
        instead of replaying again (not under ``Seeding``). Default: None, replay."""
        return None

    def restore(self, n_lcp: int, n_cache: int, n_prompt: int,
                ckpts: list[Checkpoint]) -> RestoreDecision:
        """The restore step for a slot holding ``n_cache`` tokens (spec §2.2): how many to keep,
        which checkpoint to roll back to, which to erase. Default: llama-server's rule for
        ``rules``; an engine whose reuse differs (block granularity, no live state) overrides it."""
        return restore_decision(self.rules, n_lcp, n_cache, n_prompt, list(map(_n_tokens, ckpts)))

    def restored(self, ckpt: Checkpoint, request_id: int) -> None:
        """Told that request ``request_id`` resumed from ``ckpt`` (recency-based evictions)."""
        return None

    def place(self, v: PrefillView) -> PrefillPlan:
        """Positions to checkpoint while prefilling [v.start, v.n_prompt)."""
        return PrefillPlan((), *batch_counts(v.start, v.n_prompt, v.n_batch, v.n_ubatch))

    def after_generation(self, v: PrefillView, n_cache: int) -> tuple[int, ...]:
        """Positions (ascending, <= ``n_cache``) to checkpoint once the answer is generated and the
        slot holds ``n_cache`` tokens; only states the generation passed can be kept (default: none)."""
        return ()

    def pre_evict(self, ckpts: list[Checkpoint], new_k: int, task_id: int, cap: int) -> list[int]:
        """Indices of checkpoints to drop before ``new_k`` is created, budget or not."""
        return []

    def victim(self, ckpts: list[Checkpoint], new_k: int) -> int:
        """Index of the checkpoint to evict when over budget (default: the oldest)."""
        return 0

    def supersede(self, ckpts: list[Checkpoint], new_k: int) -> list[int]:
        """Indices replaced by the new checkpoint, dropped after the over-budget eviction (default: none)."""
        return []

    def prune(self, ckpts: list[Checkpoint]) -> list[int]:
        """Indices of checkpoints to let go after a request, budget or not (default: none).

        Only an offline policy knows a checkpoint is dead; dropping it early keeps prompt-cache
        entries (which carry copies of the slot's checkpoints, spec §5) small.
        """
        return []

    @property
    def spec(self) -> str:
        """The spec string that rebuilds this policy."""
        params = [f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self) if f.init] \
            if dataclasses.is_dataclass(self) else []
        return self.name + (":" + ",".join(params) if params else "")


def plan_at(v: PrefillView, positions: list[int]) -> PrefillPlan:
    """Checkpoints at ``positions`` inside (start, T]; batches break there."""
    start, T = v.start, v.n_prompt
    lo = start if start > 0 else 0
    ps = sorted({p for p in positions if lo < p <= T})
    if T <= start:
        return PrefillPlan(tuple(ps), 0, 0)
    return PrefillPlan(tuple(ps), *count_batches(start, T, v.n_batch, v.n_ubatch,
                                                 ps[:-1] if ps and ps[-1] == T else ps))


@dataclass
class NoCheckpoints(Policy):
    """No checkpoints at all: every rollback re-processes the whole prompt (the worst case)."""

    name: ClassVar[str] = "none"
    source: ClassVar[str] = "baseline"
    _replayed: object = field(default=None, init=False, repr=False, compare=False)   # see prepare

    @property
    def ctx_checkpoints(self) -> int | None:
        return 0

    def prepare(self, trace, config: ServerConfig, profile, replay: Callable[..., object]) -> None:
        # This run is the oracle's shadow replay under the same flags (oracle.shadow_config is
        # this policy's effective config): when this process holds that replay, it is the run.
        self._replayed = oracle.held_shadow(trace, config, profile)

    def take_replay(self) -> object | None:
        run, self._replayed = self._replayed, None
        return run


@dataclass
class Fifo(Policy):
    """One checkpoint at the end of each prompt, oldest evicted (b6685-b8217; PRs #17428, #19970)."""

    name: ClassVar[str] = "fifo"
    source: ClassVar[str] = "llama-server b6685 #16382; complaints in #17428 and #19970"
    offset: int = 0   # checkpoint at T - offset (0: the whole prompt, as b6685)

    def place(self, v: PrefillView) -> PrefillPlan:
        return plan_at(v, [v.n_prompt - self.offset])


@dataclass
class PerBatch(Policy):
    """A checkpoint after every batch of the prompt (PR #19970)."""

    name: ClassVar[str] = "per-batch"
    source: ClassVar[str] = "PR #19970 (--checkpoint-every-nb)"
    relative_cost: ClassVar[float] = 1.5

    def place(self, v: PrefillView) -> PrefillPlan:
        ps = list(range(v.start + v.n_batch, v.n_prompt, v.n_batch)) + [v.n_prompt]
        return plan_at(v, ps)


@dataclass
class EveryN(Policy):
    """A checkpoint at every multiple of ``n`` tokens and at the end of the prompt (#20087)."""

    name: ClassVar[str] = "every-n"
    source: ClassVar[str] = "llama-server b8218 #20087 --checkpoint-every-n-tokens"
    n: int = 8192
    end: int = 1      # 1: also checkpoint the end of the prompt

    def place(self, v: PrefillView) -> PrefillPlan:
        if self.n <= 0:
            raise ValueError("every-n: n must be > 0")
        first = (v.start // self.n + 1) * self.n
        ps = list(range(first, v.n_prompt, self.n))
        if self.end:
            ps.append(v.n_prompt)
        return plan_at(v, ps)


@dataclass
class UserTurn(Policy):
    """A checkpoint just before each user message, and at the end of the prompt (PR #22929)."""

    name: ClassVar[str] = "user-turn"
    source: ClassVar[str] = "PR #22929 (checkpoint before the user message)"
    end: int = 1
    tools: int = 0    # 1: also before each tool output

    def place(self, v: PrefillView) -> PrefillPlan:
        ps = list(v.user_starts)
        if self.tools:
            ps += list(v.tool_starts)
        if self.end:
            ps.append(v.n_prompt)
        return plan_at(v, ps)


@dataclass
class LlamaServer(Policy):
    """llama-server itself, per build: placement, eviction and restore rule (spec §2-§3)."""

    name: ClassVar[str] = "llama-server"
    source: ClassVar[str] = "tools/server/server-context.cpp; behaviour spec §2-§4"
    relative_cost: ClassVar[float] = 2.0
    version: str = f"b{DEFAULT_BUILD}"
    ctx_checkpoints_flag: int = -1   # -ctxcp; -1: the server config's value
    min_step: int = -1               # --checkpoint-min-step; -1: the build's default
    every_n: int = 8192              # --checkpoint-every-n-tokens (b8218-b9309); -1 off
    _rules: ServerRules = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rules = ServerRules(parse_build(self.version))
        if self.min_step == -1:
            self.min_step = self._rules.default_min_step
        if self.min_step < 0:
            raise ValueError("llama-server: min_step must be >= 0")

    @property
    def rules(self) -> ServerRules:
        return self._rules

    @property
    def ctx_checkpoints(self) -> int | None:
        return None if self.ctx_checkpoints_flag < 0 else self.ctx_checkpoints_flag

    def place(self, v: PrefillView) -> PrefillPlan:
        last = v.ckpt_n_tokens[-1] if v.ckpt_n_tokens else None
        # Only the chat path gives the server user-message spans (spec §2.5); a trace without
        # user positions behaves like /completion.
        return server_placement(self._rules, v.start, v.n_prompt, v.user_starts, last,
                                v.n_batch, v.n_ubatch, self.min_step, self.every_n)

    def pre_evict(self, ckpts: list[Checkpoint], new_k: int, task_id: int, cap: int) -> list[int]:
        rules = self._rules
        # Most creates happen with the pass off (older builds, or a list not full): skip the pairs.
        if not rules.spacing_eviction or not spacing_pass_runs(rules, len(ckpts), cap):
            return []
        return sorted(spacing_victims(rules, [(c.n_tokens, c.task_id) for c in ckpts], task_id,
                                      self.min_step, cap))

    def supersede(self, ckpts: list[Checkpoint], new_k: int) -> list[int]:
        # #28302 (c): a checkpoint at the same position is superseded -- after the FIFO erase of
        # a full list (spec §2.4 order (a), FIFO, (c)). Seen in b11549's log (`conformance
        # --random`): -ctxcp 2 holding [720, 848], restore to 848, then "erasing old ... 720",
        # "superseding ... 848", "created ... 1 of 2".
        if not self._rules.spacing_eviction_only_when_full:
            return []
        ks = list(map(_n_tokens, ckpts))
        if new_k not in ks:               # the common case, answered in C
            return []
        return [i for i, k in enumerate(ks) if k == new_k]

    @property
    def spec(self) -> str:
        parts = [f"version={self.version}", f"min_step={self.min_step}"]
        if self.ctx_checkpoints_flag >= 0:
            parts.append(f"ctx_checkpoints={self.ctx_checkpoints_flag}")
        if self._rules.every_n:
            parts.append(f"every_n={self.every_n}")
        return "llama-server:" + ",".join(parts)


@dataclass
class Coverage(LlamaServer):
    """The current server's placement with coverage-preserving eviction (PR #22826, not merged).

    When full, evict the interior checkpoint whose neighbours are closest together, so the
    kept positions stay spread over the context instead of crowding at its end.
    """

    name: ClassVar[str] = "coverage"
    source: ClassVar[str] = "PR #22826 (closed, not merged)"

    def pre_evict(self, ckpts: list[Checkpoint], new_k: int, task_id: int, cap: int) -> list[int]:
        return []

    def victim(self, ckpts: list[Checkpoint], new_k: int) -> int:
        return coverage_victim([c.n_tokens for c in ckpts], new_k)

    @property
    def spec(self) -> str:
        return "coverage"


def coverage_victim(ks: list[int], new_k: int) -> int:
    """Index of the interior checkpoint whose removal leaves the smallest gap (the new one counts)."""
    pts = list(ks) + [new_k]
    if len(pts) < 3:
        return 0
    best_i, best_gap = 1, None
    for i in range(1, len(pts) - 1):
        if i >= len(ks):
            break
        gap = pts[i + 1] - pts[i - 1]
        if best_gap is None or gap < best_gap:
            best_i, best_gap = i, gap
    return best_i


@dataclass
class OraclePolicy(Policy):
    """Offline optimum: checkpoints exactly where future requests restore, the least valuable evicted.

    Clairvoyant (docs/oracle.md): ``prepare`` replays the trace without checkpoints to learn where
    each request will resume, places checkpoints at those positions only, and evicts by the value
    of the planned uses (``evict``: density, value or belady). The machinery is in ``oracle.py``.
    """

    name: ClassVar[str] = "oracle"
    source: ClassVar[str] = "ckptsim offline optimum (docs/oracle.md)"
    needs_own_placement: ClassVar[bool] = True   # victim/prune rank the uses place() planned
    relative_cost: ClassVar[float] = 2.0         # the shadow replay and its own (docs/oracle.md)
    makes_shadow: ClassVar[bool] = True
    evict: str = "density"   # value | density | belady (docs/oracle.md, "Eviction")
    _through: dict = field(default_factory=dict, init=False, repr=False)
    _rank: dict = field(default_factory=dict, init=False, repr=False)
    _uses: dict = field(default_factory=dict, init=False, repr=False)
    _now: int = field(default=-1, init=False, repr=False)
    _cap: int = field(default=32, init=False, repr=False)
    _budget_mib: float = field(default=math.inf, init=False, repr=False)
    _profile: object = field(default=None, init=False, repr=False)
    # A trial replay of a plan made by its parent (the prompt-cache check in prepare): plans nothing.
    _checking: bool = field(default=False, init=False, repr=False)
    _replayed: object = field(default=None, init=False, repr=False, compare=False)   # see prepare
    fell_back: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.evict not in oracle.EVICTIONS:
            raise ValueError(f"policy 'oracle': evict={self.evict!r}; expected one of "
                             f"{'|'.join(oracle.EVICTIONS)}")

    @property
    def spec(self) -> str:
        return "oracle" if self.evict == "density" else f"oracle:evict={self.evict}"

    def prepare(self, trace, config: ServerConfig, profile, replay: Callable[..., object]) -> None:
        """Read the future: predict every request's restore need and who can create it."""
        self._cap, self._budget_mib, self._profile = checkpoint_cap(self, config), config.ckpt_budget_mib, profile
        if self._checking:
            return
        # The plan is made for the shadow's trajectory. Where the checkpoints change timing, a
        # waiting session can overtake another and the plan becomes a forecast (re-planning on
        # the plan's own replay was tried: +4x time for < 0.5% on the SWE traces, docs/oracle.md).
        # Both are cached per trace and flags but the cap and budget (oracle.shadow_config).
        shadow, (self._through, self._rank) = oracle.shadow_plan(trace, config, profile, replay)
        if config.cache_ram_mib > 0:
            # Prompt-cache entries carry copies of the slot's checkpoints (spec §5), so where
            # --cache-ram binds, checkpoint bytes can push whole conversations out of it (an
            # unlimited cache, -1, evicts nothing, so theorem 2 holds there unchecked). The
            # placement does not see that trade-off: replay it, and when keeping no checkpoints
            # at all (the shadow) is cheaper, do that (docs/oracle.md).
            #
            # Either way the replay that follows is one already made, so it is not made again
            # (``take_replay``; docs/oracle.md, "Cost and speed"):
            # - kept: the trial replays this very policy -- same plan (``_through``, ``_rank``,
            #   read only), same evict rule, cap and budget (``prepare`` sets them from the same
            #   config), fresh per-request state, the same trace, config and profile -- and a
            #   replay is deterministic; events do not feed back into it, so recording them (for a
            #   caller that wants them) changes nothing else;
            # - fallen back: with no plan the oracle never creates a checkpoint (``place`` makes
            #   nothing, ``after_generation`` keeps nothing, ``prune`` and ``victim`` meet an empty
            #   list), and a replay without checkpoints is the same under any cap and budget:
            #   batches break nowhere (``batch_counts`` with no breaks, as under a cap of 0),
            #   prompt-cache entries carry no checkpoint bytes, and the restore rule, slot choice
            #   and prompt cache are the base policy's, as for ``none``. That is the shadow.
            trial = OraclePolicy(evict=self.evict)
            trial._checking = True
            trial._through, trial._rank = self._through, self._rank
            placed = replay(trace, trial, config, profile, record_events=True)
            if oracle.work_s(shadow.summary()) < oracle.work_s(placed.summary()):
                self._through = {}
                self.fell_back = True
                self._replayed = shadow
            else:
                self._replayed = placed

    def take_replay(self) -> object | None:
        run, self._replayed = self._replayed, None
        return run

    def place(self, v: PrefillView) -> PrefillPlan:
        rank = self._rank.get(v.request_id, -1)
        uses: dict[int, list[int]] = defaultdict(list)
        for p, use in self._through.get(v.request_id, ()):
            if use > rank:
                uses[p].append(use)
        self._uses = uses
        self._now = rank
        existing = list(v.ckpt_n_tokens)
        want = sorted(p for p in uses if max(v.start, 1) <= p <= v.n_prompt and p not in existing)
        made = oracle.choose_creates(want, existing, uses, rank, self.evict, self._cap, self._budget_mib,
                                     self._profile)
        return PrefillPlan(tuple(made), *batch_counts(v.start, v.n_prompt, v.n_batch, v.n_ubatch, made))

    def victim(self, ckpts: list[Checkpoint], new_k: int) -> int:
        return oracle.victim_index([c.n_tokens for c in ckpts], self._uses, self._now, self.evict)

    def prune(self, ckpts: list[Checkpoint]) -> list[int]:
        """Drop what no later request on this lineage will restore (the plan lists every future
        need that passes through the current request, cache loads included)."""
        return [i for i, c in enumerate(ckpts) if not self._uses.get(c.n_tokens)]


# --- The field's policies: other engines and open llama.cpp PRs (docs/policies.md) -------------
# Their rules are in engines.py; each class says where a state is kept, which goes, and (where the
# engine's reuse differs from llama-server's) its restore rule.

@dataclass
class VllmAll(engines.RecencyClock, Policy):
    """vLLM ``--mamba-cache-mode all``: the state at every block boundary, LRU, block-granular hits.

    ``block`` is the attention block size vLLM forces up to the Mamba page (528 tokens for
    Qwen3.5-4B, 2048 for Qwen3.5-35B-A3B at TP2), so a prompt shorter than one block never hits.
    States at every multiple of ``block`` the request computes, prompt and generated tokens alike.
    ``retention`` (``--prefix-cache-retention-interval``): -1 keeps every state; 0 (vLLM's
    default since #52216) only the replay boundary, the deepest state a resend of the prompt can
    resume from; N > 0 one state per N-token segment plus the replay boundary. ``shared=1`` adds
    a state at the shared-prefix junction (where the prompt leaves the longest sequence the
    server has seen) on the ``unit`` grid (``--prefix-match-unit``; 0: the block grid). Reuse
    resumes from the deepest retained state inside the common prefix; a finished request's live
    state is freed, so only cached states count.
    """

    name: ClassVar[str] = "vllm-all"
    source: ClassVar[str] = ("vLLM CacheConfig.mamba_cache_mode='all'; block size forced to the Mamba page "
                             "(vllm#40696); retention interval vllm#45845, #52216; shared-prefix "
                             "checkpoint vllm#37898, #47782")
    block: int = 528
    retention: int = -1
    shared: int = 0
    unit: int = 0

    def __post_init__(self) -> None:
        engines.check_positive(self.name, block=self.block)
        if self.retention < -1 or self.unit < 0 or self.shared not in (0, 1):
            raise ValueError(f"policy {self.name!r}: expected retention >= -1, shared=0|1, unit >= 0")
        self._clock_init()

    def restore(self, n_lcp, n_cache, n_prompt, ckpts):
        return engines.exact_restore(n_lcp, n_cache, n_prompt, [c.n_tokens for c in ckpts], False)

    def _computed(self, v: PrefillView) -> list[int]:
        return engines.grid(v.start, v.n_prompt, self.block)

    def place(self, v: PrefillView) -> PrefillPlan:
        self._tick(v.request_id)
        ps = self._computed(v)
        replay = max((p for p in ps if p <= v.n_prompt - 1), default=-1)
        ps = engines.vllm_retained(ps, self.block, self.retention, replay)
        if self.shared and v.seen_prefix_n_tokens > 0:
            u = self.unit or self.block
            ps.append(v.seen_prefix_n_tokens // u * u)
        return plan_at(v, ps)

    def after_generation(self, v: PrefillView, n_cache: int) -> tuple[int, ...]:
        # a decode step that completes a block caches its state; none is a replay boundary
        ps = engines.grid(v.n_prompt, n_cache, self.block)
        return tuple(engines.vllm_retained(ps, self.block, self.retention, -1))

    def victim(self, ckpts: list[Checkpoint], new_k: int) -> int:
        return self._lru_victim(ckpts)


@dataclass
class VllmAlign(VllmAll):
    """vLLM ``--mamba-cache-mode align``: the state at the last block boundary of each scheduled chunk.

    Prefill runs in chunks of at most ``budget`` tokens (``--max-num-batched-tokens``) cut to a
    block multiple, and the chunk crossing the prompt's last block boundary stops there, so
    states lie floor(budget / block) x block apart plus one at floor(T / block) x block.
    Generation, retention, shared-prefix junction, LRU and reuse as ``vllm-all``.
    """

    name: ClassVar[str] = "vllm-align"
    source: ClassVar[str] = ("vLLM mamba_cache_mode='align' (MambaPrefillChunkAlignmentPolicy); retention "
                             "vllm#45845, #52216; shared-prefix checkpoint vllm#37898, #47782")
    budget: int = 8192

    def __post_init__(self) -> None:
        super().__post_init__()
        engines.check_positive(self.name, budget=self.budget)

    def _computed(self, v: PrefillView) -> list[int]:
        return engines.vllm_align_states(v.start, v.n_prompt, self.block, self.budget)


@dataclass
class SglangNoBuffer(engines.RecencyClock, Policy):
    """SGLang ``MambaRadixCache``, ``--mamba-scheduler-strategy no_buffer``: the state at each request's end.

    A finished request inserts its sequence with a copy of its state; each chunk of a chunked
    prefill (``--chunked-prefill-size``, ``chunk``; 0: one chunk) inserts the state at its end.
    Matching returns the deepest node holding a state, exact to the token (page size 1); states
    are evicted least recently used (a match refreshes only the matched node).
    """

    name: ClassVar[str] = "sglang-no-buffer"
    source: ClassVar[str] = "SGLang mem_cache/mamba_radix_cache.py, no_buffer (sglang#11214)"
    chunk: int = 8192

    def __post_init__(self) -> None:
        if self.chunk < 0:
            raise ValueError(f"policy {self.name!r}: chunk must be >= 0, got {self.chunk}")
        self._clock_init()

    def restore(self, n_lcp, n_cache, n_prompt, ckpts):
        return engines.exact_restore(n_lcp, n_cache, n_prompt, [c.n_tokens for c in ckpts], False)

    def place(self, v: PrefillView) -> PrefillPlan:
        self._tick(v.request_id)
        return plan_at(v, list(range(v.start + self.chunk, v.n_prompt, self.chunk)) if self.chunk else [])

    def after_generation(self, v: PrefillView, n_cache: int) -> tuple[int, ...]:
        return (n_cache,)

    def victim(self, ckpts: list[Checkpoint], new_k: int) -> int:
        return self._lru_victim(ckpts)


@dataclass
class SglangExtraBuffer(SglangNoBuffer):
    """SGLang ``--mamba-scheduler-strategy extra_buffer``: tracked states, branch points included.

    Each prefill chunk tracks one state: at the branch point when the chunk holds it (the
    longest ``grid``-aligned prefix the server has seen, beyond the state the request resumed
    from: ``mamba_branching_seqlen``), else at its last ``grid``-aligned position (FLA's chunk,
    64). Generation tracks the state at each multiple of ``interval`` (``--mamba-track-interval``);
    a finished request inserts the last tracked state, not its exact end. Reuse and LRU as
    ``sglang-no-buffer``.
    """

    name: ClassVar[str] = "sglang-extra-buffer"
    source: ClassVar[str] = ("SGLang mamba_radix_cache.py + schedule_batch.py, extra_buffer (sglang#14792; "
                             "--mamba-track-interval 256)")
    interval: int = 256
    grid: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        engines.check_positive(self.name, interval=self.interval, grid=self.grid)

    def place(self, v: PrefillView) -> PrefillPlan:
        self._tick(v.request_id)
        b = v.seen_prefix_n_tokens // self.grid * self.grid
        return plan_at(v, engines.sglang_tracked_states(v.start, v.n_prompt, self.chunk, self.grid,
                                                        b if b > v.start else -1))

    def after_generation(self, v: PrefillView, n_cache: int) -> tuple[int, ...]:
        last = n_cache // self.interval * self.interval
        return (last,) if last > v.n_prompt else ()


@dataclass
class Marconi(engines.RecencyClock, Policy):
    """Marconi (Pan et al., MLSys 2025): states only at branch points and at the last decoded token.

    Admission: the state at the branch point found by speculative insertion (where the prompt
    leaves a sequence the server has seen, ``PrefillView.branch_n_tokens``) and the state after
    the last decoded token. Eviction: the lowest ``recency + alpha x FLOP efficiency``
    (``engines.marconi_victim``). ``alpha=auto`` tunes alpha as the paper's artifact does: 0 until
    the first eviction; once the first 5 x (requests seen by then) requests have been served,
    the grid 0, 0.1, ..., 2 is replayed on exactly those past requests and the alpha saving the
    most prefill time is kept. Reuse: the deepest cached state in the common prefix.
    """

    name: ClassVar[str] = "marconi"
    source: ClassVar[str] = ("Marconi, Pan et al., MLSys 2025 (arXiv 2411.19379) and its artifact "
                             "(radix_cache_hybrid.py, config_tuner.py)")
    relative_cost: ClassVar[float] = 2.0
    alpha: str = "auto"

    def __post_init__(self) -> None:
        self._alpha = 0.0
        if self.alpha != "auto":
            try:
                self._alpha = float(self.alpha)
            except ValueError:
                raise ValueError(f"policy {self.name!r}: alpha must be 'auto' or a number >= 0, "
                                 f"got {self.alpha!r}") from None
            if not self._alpha >= 0:
                raise ValueError(f"policy {self.name!r}: alpha must be >= 0, got {self.alpha!r}")
        self._clock_init()
        self._seen: list[int] = []           # request ids in the order they were served
        self._seen_set: set[int] = set()
        self._window = -1                    # requests to serve before tuning; -1: no eviction yet
        self._tuned = self.alpha != "auto"
        self._env: tuple | None = None       # (trace, config, profile, replay) from prepare
        self.tuned_alpha: float | None = None

    def prepare(self, trace, config: ServerConfig, profile, replay: Callable[..., object]) -> None:
        self._env = (trace, config, profile, replay)

    def restore(self, n_lcp, n_cache, n_prompt, ckpts):
        return engines.exact_restore(n_lcp, n_cache, n_prompt, [c.n_tokens for c in ckpts], False)

    def place(self, v: PrefillView) -> PrefillPlan:
        self._tick(v.request_id)
        if v.request_id not in self._seen_set:
            self._seen_set.add(v.request_id)
            self._seen.append(v.request_id)
            # tune once the window's requests have all been served (the artifact tunes when the
            # window's last request is inserted, after its answer): never on the current one
            if not self._tuned and 0 < self._window < len(self._seen):
                self._tune()
        return plan_at(v, [v.branch_n_tokens] if v.branch_n_tokens > 0 else [])

    def after_generation(self, v: PrefillView, n_cache: int) -> tuple[int, ...]:
        return (n_cache,)

    def victim(self, ckpts: list[Checkpoint], new_k: int) -> int:
        if self._window < 0 and not self._tuned:
            self._window = engines.MARCONI_BOOTSTRAP * max(1, len(self._seen))
        if len(ckpts) == 1:
            return 0
        now = max(self._now, max(c.task_id for c in ckpts)) + 1
        _, config, profile, _ = self._env if self._env else (None, None, None, None)
        nb, ub = (config.eff_n_batch, config.eff_n_ubatch) if config is not None else (2048, 512)
        i = engines.marconi_victim(ckpts, [self._last_use(c) for c in ckpts], now, self._alpha,
                                   profile, nb, ub)
        self._forget(ckpts[i])
        return i

    def _tune(self) -> None:
        """Replay the window's requests once per alpha of the grid and keep the best (the
        artifact's ``ConfigTuner.tune_config``: most FLOPs saved; here least prefill time)."""
        self._tuned = True
        if self._env is None:
            return
        trace, config, profile, replay = self._env
        sub = engines.sub_trace(trace, self._seen[:self._window])
        best_a, best_ms = 0.0, None
        for a in engines.MARCONI_ALPHAS:
            run = replay(sub, Marconi(alpha=repr(a)), config, profile, record_events=False)
            ms = sum(run.results.column("prefill_ms").tolist())   # left to right, as over the rows
            if best_ms is None or ms < best_ms - 1e-9:
                best_a, best_ms = a, ms
        self._alpha = self.tuned_alpha = best_a

    @property
    def spec(self) -> str:
        return "marconi" if self.alpha == "auto" else f"marconi:alpha={self.alpha}"


@dataclass
class IkLlama(Policy):
    """ik_llama.cpp: interval checkpoints, variance eviction, the prompt-end checkpoint kept.

    A checkpoint every ``interval`` tokens (``--ctx-checkpoints-interval``) in the prompt and in
    generation, one ``tolerance`` tokens before the prompt's end (``--ctx-checkpoints-tolerance``,
    ik#1346; 0: at the end) and one when generation ends. When full, the interior checkpoint whose
    removal leaves the least variance of the gaps goes (ik#2020), prompt-end checkpoints kept
    while another can go (ik#2491). Restore: the deepest checkpoint in the common prefix, at its
    exact position, or the live state when the prompt extends it. The NVMe spill tier is left out
    (docs/policies.md).
    """

    name: ClassVar[str] = "ik-llama"
    source: ClassVar[str] = ("ik_llama.cpp examples/server: ik#1346 (tolerance), ik#2020 (variance eviction), "
                             "ik#2491 (prompt-end checkpoint kept out of eviction)")
    interval: int = 512
    tolerance: int = 5

    def __post_init__(self) -> None:
        engines.check_positive(self.name, interval=self.interval)
        if self.tolerance < 0:
            raise ValueError(f"policy {self.name!r}: tolerance must be >= 0, got {self.tolerance}")
        self._prompt_end: dict[int, int] = {}    # request id -> its prompt-end checkpoint

    def restore(self, n_lcp, n_cache, n_prompt, ckpts):
        return engines.exact_restore(n_lcp, n_cache, n_prompt, [c.n_tokens for c in ckpts], True)

    def place(self, v: PrefillView) -> PrefillPlan:
        end = max(1, v.n_prompt - self.tolerance)
        self._prompt_end[v.request_id] = end
        return plan_at(v, engines.grid(v.start, end - 1, self.interval) + [end])

    def after_generation(self, v: PrefillView, n_cache: int) -> tuple[int, ...]:
        return tuple(engines.grid(v.n_prompt, n_cache - 1, self.interval)) + (n_cache,)

    def victim(self, ckpts: list[Checkpoint], new_k: int) -> int:
        return engines.variance_victim([c.n_tokens for c in ckpts],
                                       [self._prompt_end.get(c.task_id) == c.n_tokens for c in ckpts])


@dataclass
class Pr25592(LlamaServer):
    """llama.cpp PR #25592 (open): exact-position restore, evict the checkpoint nearest its neighbour.

    The current server's placement (its near-end checkpoints are already exempt from
    ``--checkpoint-min-step``, #25472), the exact restore rule (a checkpoint resumes only at its
    own position inside the common prefix; those past it are erased), and when full the
    checkpoint nearest a neighbour goes instead of the oldest. No spacing-eviction pass; the
    current build's supersede (#28302: a checkpoint created where one exists replaces it) stays,
    as in the build whose placement it runs on. Without it, the placement re-creating the
    checkpoint a request resumed from appended a duplicate every request (docs/policies.md).
    """

    name: ClassVar[str] = "pr25592"
    source: ClassVar[str] = "llama.cpp PR #25592 (open; fixes #24055)"

    def restore(self, n_lcp, n_cache, n_prompt, ckpts):
        return engines.exact_restore(n_lcp, n_cache, n_prompt, [c.n_tokens for c in ckpts], True)

    def pre_evict(self, ckpts: list[Checkpoint], new_k: int, task_id: int, cap: int) -> list[int]:
        return []

    def victim(self, ckpts: list[Checkpoint], new_k: int) -> int:
        return engines.nearest_neighbour_victim([c.n_tokens for c in ckpts], new_k)

    @property
    def spec(self) -> str:
        return self.name + ":" + LlamaServer.spec.fget(self).partition(":")[2]


@dataclass
class Pr24035(Pr25592):
    """llama.cpp PR #24035 (open): keep every checkpoint inside the prefix, evict the densest interior one.

    Exact restore leaving one token to compute; only checkpoints beyond the common prefix are
    erased; the batch splits at the recovered common-prefix boundary and a checkpoint is taken
    there (where the prompt leaves the cache); when full, the interior checkpoint in the densest
    region goes, the earliest and the most recent kept. The server's placement otherwise.
    """

    name: ClassVar[str] = "pr24035"
    source: ClassVar[str] = "llama.cpp PR #24035 (open)"

    def place(self, v: PrefillView) -> PrefillPlan:
        plan = super().place(v)
        lcp = v.lcp_n_tokens
        if not v.start < lcp < v.n_prompt or lcp in plan.positions:
            return plan
        ps = sorted(plan.positions + (lcp,))
        return PrefillPlan(tuple(ps), *batch_counts(v.start, v.n_prompt, v.n_batch, v.n_ubatch, ps))

    def victim(self, ckpts: list[Checkpoint], new_k: int) -> int:
        return engines.densest_interior_victim([c.n_tokens for c in ckpts], new_k)


@dataclass
class Pr25472HalfStep(LlamaServer):
    """A comment on llama.cpp PR #25472: prevent clustered checkpoints at creation instead of evicting.

    The last user message's checkpoint needs ``min_step / 2`` tokens after the newest checkpoint
    instead of being exempt; near-end checkpoints stay exempt; the spacing-eviction pass is left
    out (prevention replaces it), so a full list drops the oldest. On #25472's build, b9985.
    """

    name: ClassVar[str] = "pr25472-half-step"
    source: ClassVar[str] = "comment on llama.cpp PR #25472 (min_step/2 floor for the last user message)"
    version: str = "b9985"

    def place(self, v: PrefillView) -> PrefillPlan:
        last = v.ckpt_n_tokens[-1] if v.ckpt_n_tokens else None
        return server_placement(self.rules, v.start, v.n_prompt, v.user_starts, last, v.n_batch,
                                v.n_ubatch, self.min_step, self.every_n,
                                last_user_min_step=self.min_step // 2)

    def pre_evict(self, ckpts: list[Checkpoint], new_k: int, task_id: int, cap: int) -> list[int]:
        return []

    def supersede(self, ckpts: list[Checkpoint], new_k: int) -> list[int]:
        return []

    @property
    def spec(self) -> str:
        return self.name + ":" + LlamaServer.spec.fget(self).partition(":")[2]


@dataclass
class Combined(Policy):
    """``A+B``: placement and restore rule of A, eviction of B.

    ``oracle+B`` is the oracle's placement under B's eviction (its plan, made for its own
    eviction, becomes a heuristic there). ``A+oracle`` is refused: the oracle's eviction ranks
    checkpoints by the future uses of the positions its own placement planned, so under another
    placement it would know of no use and drop every checkpoint.
    """

    placement: Policy = field(default_factory=NoCheckpoints)
    eviction: Policy = field(default_factory=Fifo)
    name: ClassVar[str] = "combined"

    def __post_init__(self) -> None:
        check_combination(f"{self.placement.spec}+{self.eviction.spec}", self.eviction)

    def prepare(self, trace, config: ServerConfig, profile, replay: Callable[..., object]) -> None:
        self.placement.prepare(trace, config, profile, replay)
        self.eviction.prepare(trace, config, profile, replay)
        # a part's replay of itself is not the combination's: dropped, and the combination replays
        self.placement.take_replay()
        self.eviction.take_replay()

    @property
    def relative_cost(self) -> float:  # type: ignore[override]
        return max(self.placement.relative_cost, self.eviction.relative_cost)

    @property
    def makes_shadow(self) -> bool:  # type: ignore[override]
        return self.placement.makes_shadow or self.eviction.makes_shadow

    @property
    def rules(self) -> ServerRules:
        return self.placement.rules

    @property
    def ctx_checkpoints(self) -> int | None:
        return self.placement.ctx_checkpoints

    def restore(self, n_lcp: int, n_cache: int, n_prompt: int,
                ckpts: list[Checkpoint]) -> RestoreDecision:
        return self.placement.restore(n_lcp, n_cache, n_prompt, ckpts)

    def restored(self, ckpt: Checkpoint, request_id: int) -> None:
        self.placement.restored(ckpt, request_id)
        self.eviction.restored(ckpt, request_id)

    def place(self, v: PrefillView) -> PrefillPlan:
        return self.placement.place(v)

    def after_generation(self, v: PrefillView, n_cache: int) -> tuple[int, ...]:
        return self.placement.after_generation(v, n_cache)

    def pre_evict(self, ckpts: list[Checkpoint], new_k: int, task_id: int, cap: int) -> list[int]:
        return self.eviction.pre_evict(ckpts, new_k, task_id, cap)

    def victim(self, ckpts: list[Checkpoint], new_k: int) -> int:
        return self.eviction.victim(ckpts, new_k)

    def supersede(self, ckpts: list[Checkpoint], new_k: int) -> list[int]:
        return self.eviction.supersede(ckpts, new_k)

    def prune(self, ckpts: list[Checkpoint]) -> list[int]:
        return self.eviction.prune(ckpts)

    @property
    def spec(self) -> str:
        return f"{self.placement.spec}+{self.eviction.spec}"


def check_combination(spec: str, eviction: Policy) -> None:
    """Refuse ``A+B`` when B's eviction cannot serve another policy's placement (the oracle's)."""
    if eviction.needs_own_placement:
        raise ValueError(f"policy {spec!r}: {eviction.name}'s eviction only ranks the checkpoints its "
                         f"own placement planned; use {eviction.spec!r} alone, or "
                         f"'{eviction.spec}+B' for its placement with B's eviction")


@dataclass
class Adaptive(AdaptiveRules, Policy):
    """Learned restore depths: checkpoints where the restores seen so far say the next ones land,
    kept while they save the most tokens per MiB (docs/policies.md, "adaptive"; rules in
    ``ckptsim/adaptive.py``)."""

    name: ClassVar[str] = "adaptive"
    source: ClassVar[str] = "ckptsim (docs/policies.md, adaptive): learned restore depths, value per MiB"


# The registry: adding a policy touches this file only.
POLICIES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (NoCheckpoints, Fifo, PerBatch, EveryN, UserTurn, LlamaServer, Coverage,
                               OraclePolicy, VllmAll, VllmAlign, SglangNoBuffer, SglangExtraBuffer, Marconi,
                               IkLlama, Pr25592, Pr24035, Pr25472HalfStep, Adaptive)
}
# Short names users type for the server's historical eras (spec §3).
ALIASES = {
    "server": "llama-server",
    "llama-server-b6685": "llama-server:version=b6685",
    "llama-server-b8232": "llama-server:version=b8300",
    "llama-server-b9985": "llama-server:version=b9985",
}
_PARAM_ALIASES = {"ctx_checkpoints": "ctx_checkpoints_flag", "checkpoint_min_step": "min_step",
                  "ctx-checkpoints": "ctx_checkpoints_flag", "min-step": "min_step"}


def make_policy(spec: str | Policy) -> Policy:
    """Build a policy from a spec string such as ``every-n:n=2048+coverage``."""
    if isinstance(spec, Policy):
        return spec
    spec = spec.strip()
    if "+" in spec:
        a, b = spec.split("+", 1)
        return Combined(placement=make_policy(a), eviction=make_policy(b))
    spec = ALIASES.get(spec, spec)
    name, _, args = spec.partition(":")
    name = name.strip()
    cls = POLICIES.get(name)
    if cls is None:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(policy_names())}")
    fields_ = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict = {}
    for part in filter(None, (p.strip() for p in args.split(","))):
        k, eq, val = part.partition("=")
        k = _PARAM_ALIASES.get(k.strip(), k.strip())
        if not eq or k not in fields_:
            raise ValueError(f"policy {name!r}: bad parameter {part!r}; expected one of "
                             f"{', '.join(f'{n}=...' for n in fields_) or '(none)'}")
        default = getattr(cls, k, None)
        try:
            kwargs[k] = val.strip() if isinstance(default, str) else int(val)
        except ValueError:
            raise ValueError(f"policy {name!r}: {k} must be an integer, got {val!r}") from None
    return cls(**kwargs)


def policy_names() -> list[str]:
    """Names of the registered policies, sorted (the registry is the only list)."""
    return sorted(POLICIES)


def checkpoint_cap(policy: Policy, config: ServerConfig) -> int:
    """The checkpoint cap (``--ctx-checkpoints``) a run of ``policy`` under ``config`` uses.

    The one rule for the cap's two homes: ``config.ctx_checkpoints`` (the server flag, what a
    sweep varies) applies unless the policy pins a cap of its own (``Policy.ctx_checkpoints``:
    a spec's ``llama-server:ctx_checkpoints=N``, or ``none``, which pins 0); ``A+B`` runs under
    A's. The simulator, the oracle's planning and a sweep's memory column all ask here.
    """
    pinned = policy.ctx_checkpoints
    return config.ctx_checkpoints if pinned is None else pinned


def effective_config(policy: Policy, config: ServerConfig) -> ServerConfig:
    """``config`` with every value a run of ``policy`` cannot read set to one canonical value, so
    two configs with the same effective config give the same run (a sweep runs them once).

    The cap is ``checkpoint_cap``'s: a cap the policy pins makes ``--ctx-checkpoints`` unread.
    With a cap of 0 no checkpoint is ever placed or created (``sim._Replay.prefill``), so the
    byte budget has nothing to limit and becomes unlimited. ``simulate`` hands this config, not
    ``config``, to the policy's ``prepare`` and to the replay, which makes the equality hold by
    construction rather than by each policy's care (a ``prepare`` reading the flag directly).
    """
    cap = checkpoint_cap(policy, config)
    budget_mib = math.inf if cap == 0 else config.ckpt_budget_mib
    if cap == config.ctx_checkpoints and budget_mib == config.ckpt_budget_mib:
        return config
    return dataclasses.replace(config, ctx_checkpoints=cap, ckpt_budget_mib=budget_mib)



def read_at_cap_zero(policy: Policy) -> ServerRules | None:
    """What a run of ``policy`` under a cap of 0 can read of it: its ``rules``, or None when it
    may read more.

    Under a cap of 0 no checkpoint ever exists: the simulator places none (``place`` and
    ``after_generation`` are not called, ``sim._Replay.prefill``), so ``victim``, ``pre_evict``,
    ``supersede`` and ``restored`` never run, and ``restore`` and ``prune`` only ever meet an
    empty list. A policy whose restore step is the base class's (``restore_decision`` under its
    rules) and whose ``prepare`` plans nothing is then read only through ``rules`` (the restore
    rule and the build's prompt-cache behaviour): such runs with equal rules are equal, whatever
    the policy's name and placement parameters (``llama-server:min_step=N`` for every N, ``none``,
    ``fifo``...). ``none``'s ``prepare`` only takes an equal replay (the shadow). Engines with
    their own restore step, and policies that plan (the oracle, ``marconi``, ``adaptive``), say
    None. ``A+B`` runs under A's rules and restore and calls both ``prepare``: both must qualify.
    """
    if isinstance(policy, Combined):
        ok = read_at_cap_zero(policy.placement) is not None and read_at_cap_zero(policy.eviction) is not None
        return policy.rules if ok else None
    cls = type(policy)
    if cls.restore is not Policy.restore:
        return None
    if cls.prepare is not Policy.prepare and cls is not NoCheckpoints:
        return None
    return policy.rules
