"""Replay a llama-server log through the simulator and compare, decision by decision.

For each task the log shows, five decisions are compared with what the ``llama-server`` policy
(the build the log comes from, with the flags read from the log) does on the same trace:

=============  ==================================================================================
cache_n        tokens kept after the restore decision (the server's ``cache_n``)
restored       which checkpoint was restored (its n_tokens), or none
full           whether the prompt was re-processed from 0 ("forcing full prompt re-processing")
created        positions of the checkpoints created while the prompt was processed
erased         positions of the checkpoints erased (invalidated, old, too close, superseded)
=============  ==================================================================================

A decision is *unknown* (neither agreed nor a mismatch) when the log lacks what it needs:
checkpoint lines not visible at this verbosity, a slot whose earlier history is not in the
excerpt, a prompt cut before it finished, or a value that was only inferred (e.g. ``cache_n``
of a pure extension at ``-lv 3`` in builds that print no ``cached n_tokens`` line).
"""
from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cost import CostProfile, load_profile
from .ingest.log_trace import LogTrace, build_range_text, excerpt_seeds, n_seed_variants, seeded_requests, trace_from_log
from .records import EventKind
from .server import count_batches
from .trace import Trace

DECISIONS = ("cache_n", "restored", "full", "created", "erased")
# sources of cache_n that are read off the log, not inferred from the absence of a line
_DIRECT_CACHE_N = {"restored", "full", "seq_rm", "need_one", "prompt_n", "empty", "no_search"}
_ERASE_KINDS = {EventKind.ERASED_INVALIDATED, EventKind.ERASED_OLD, EventKind.ERASED_SPACING,
                EventKind.SUPERSEDED}


@dataclass(frozen=True)
class Decision:
    """One compared decision of one task."""

    task: int
    request: int
    decision: str
    status: str              # agreed | mismatch | unknown
    logged: Any
    simulated: Any
    line: int                # log line of the fact (the task's first line when none)
    why: str = ""            # for unknown: what the log lacks


@dataclass(frozen=True)
class Validation:
    """Outcome of a validation: counts, every decision, prompt-time errors, and the setup used."""

    log: str
    policy: str
    config: dict
    profile: str
    n_tasks: int
    decisions: list[Decision]
    timings: list[dict]
    left_out: list[dict]
    slots: dict[int, int] = dataclasses.field(default_factory=dict)     # request -> slot (log)
    build_range: list[dict] = dataclasses.field(default_factory=list)   # rule groups tried (build dated)
    # the build as the log's wording dates it (build not printed, mainline): {"range", "text",
    # "evidence": {"from"/"to": {"build", "line", "wording"}}}; empty otherwise
    build_wording: dict = dataclasses.field(default_factory=dict)
    settings_evidence: dict = dataclasses.field(default_factory=dict)   # setting -> value, line, how
    fork: dict = dataclasses.field(default_factory=dict)                # a relative of llama-server

    @property
    def known(self) -> list[Decision]:
        """Decisions that the log could settle."""
        return [d for d in self.decisions if d.status != "unknown"]

    @property
    def agreed(self) -> int:
        """Number of known decisions where the simulator did what the server did."""
        return sum(1 for d in self.decisions if d.status == "agreed")

    @property
    def agreement(self) -> float | None:
        """agreed / known decisions (None when nothing could be compared)."""
        k = len(self.known)
        return self.agreed / k if k else None

    def by_decision(self) -> dict[str, dict[str, int]]:
        """Counts per decision kind and status."""
        out: dict[str, dict[str, int]] = {d: {"agreed": 0, "mismatch": 0, "unknown": 0} for d in DECISIONS}
        for d in self.decisions:
            out[d.decision][d.status] += 1
        return out

    def to_json(self) -> dict:
        """The ``--json`` document."""
        def errors(ms_key: str, pct_key: str) -> dict:
            errs = [t[pct_key] for t in self.timings if t[pct_key] is not None]
            tot_logged = sum(t["logged_ms"] for t in self.timings)
            tot = sum(t[ms_key] for t in self.timings)
            return {"mean_abs_error_pct": sum(abs(e) for e in errs) / len(errs) if errs else None,
                    # per-task errors carry machine noise; the total is what a replay's
                    # prefill-time figure depends on
                    "total_logged_ms": round(tot_logged, 2), f"total_{ms_key}": round(tot, 2),
                    "total_error_pct": _pct(tot, tot_logged, 2)}
        return {
            "log": self.log, "tasks": self.n_tasks, "decisions": len(self.known),
            "agreed": self.agreed, "agreement": self.agreement,
            "unknown": sum(1 for d in self.decisions if d.status == "unknown"),
            "by_decision": self.by_decision(),
            "mismatches": [_d_json(d) for d in self.decisions if d.status == "mismatch"],
            "unknown_reasons": dict(Counter(d.why for d in self.decisions if d.status == "unknown")),
            "policy": self.policy, "config": self.config, "profile": self.profile,
            # the replay's prediction, and the cost model alone on the work the log shows
            "prompt_time": {"tasks": self.timings, **errors("predicted_ms", "error_pct"),
                            "same_work_tasks": sum(t["simulated_n"] == t["prompt_n"] for t in self.timings),
                            "logged_work": errors("logged_work_ms", "logged_work_error_pct")},
            "left_out": self.left_out,
            "per_task": self.per_task(),
            "build_range": self.build_range,
            "build_wording": self.build_wording or None,
            "settings_evidence": self.settings_evidence,
            "fork": self.fork or None,
        }

    def per_task(self) -> list[dict]:
        """Each task's five decisions as the log has them, as the simulator has them, their status
        and, for an unknown one, why (``validate --json``'s ``per_task``)."""
        out: dict[tuple[int, int], dict] = {}
        for d in self.decisions:
            # a task left out of the trace (no prompt length) has request -1: keyed by its task too
            t = out.setdefault((d.request, d.task), {"task": d.task, "request": d.request, "line": d.line,
                                           "slot": self.slots.get(d.request) if d.request >= 0 else
                                           next((x.get("slot") for x in self.left_out if x["task"] == d.task), None),
                                           "logged": {},
                                           "simulated": {}, "status": {}, "why_unknown": {}})
            t["line"] = min(t["line"], d.line)
            t["logged"][d.decision] = d.logged
            t["simulated"][d.decision] = d.simulated
            t["status"][d.decision] = d.status
            if d.status == "unknown":
                t["why_unknown"][d.decision] = d.why
        return sorted(out.values(), key=lambda t: (t["line"], t["request"]))


def _d_json(d: Decision) -> dict:
    return {"task": d.task, "request": d.request, "decision": d.decision, "line": d.line,
            "logged": d.logged, "simulated": d.simulated}


def config_from_log(settings: dict, overrides: dict | None = None):
    """The ServerConfig a log's start-up lines imply (spec §8 defaults elsewhere), then overrides."""
    from .sim import ServerConfig
    n_slots = int(settings.get("n_slots", 1))
    kv_unified = bool(settings.get("kv_unified", n_slots > 1))
    ram = settings.get("cache_ram_mib", 8192)
    kw: dict[str, Any] = {
        "n_slots": n_slots,
        "n_ctx": int(settings.get("n_ctx_slot", settings.get("n_ctx", 262144))),
        "n_batch": int(settings.get("n_batch", 2048)),
        "n_ubatch": int(settings.get("n_ubatch", 512)),
        "ctx_checkpoints": int(settings.get("ctx_checkpoints", 32)),
        "cache_ram_mib": float(ram),
        "slot_prompt_similarity": float(settings.get("slot_prompt_similarity", 0.10)),
        "cache_idle_slots": bool(settings.get("cache_idle_slots", kv_unified)),
        "kv_unified": kv_unified,
        "log_timing": True,
    }
    for k, v in (overrides or {}).items():
        if v is not None:
            kw[k] = v
    return ServerConfig(**kw)


def profile_from_log(lt: LogTrace, base: CostProfile) -> CostProfile:
    """``base`` with checkpoint and state sizes measured in the log (they steer prompt-cache eviction)."""
    ck = lt.log.ckpt_sizes
    prof = base
    if ck:
        a, b = _linfit([n / 1000.0 for n, _ in ck], [m for _, m in ck])
        prof = dataclasses.replace(prof, ckpt_size_mib=max(a, 0.0), ckpt_size_mib_per_ktok=max(b, 0.0))
    st = lt.log.state_sizes
    if st:
        # total state = attention KV (grows with n) + the recurrent part (one checkpoint's worth)
        per_k = [(m - prof.ckpt_mib(n)) / (n / 1000.0) for n, m in st if n > 0]
        if per_k:
            prof = dataclasses.replace(prof, kv_mib_per_ktok=max(0.0, sum(per_k) / len(per_k)))
    if prof is not base:
        prov = dict(base.provenance)
        prov["sizes"] = f"checkpoint and state sizes fitted to {len(ck)} + {len(st)} lines of the log"
        prof = dataclasses.replace(prof, name=base.name + "+log-sizes", provenance=prov)
    return prof


def _linfit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 1e-12:
        return my, 0.0
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return my - b * mx, b


def policy_for_log(lt: LogTrace, version: str | None = None, min_step: int | None = None) -> str:
    """The ``llama-server`` policy spec matching the log's build and flags."""
    s = lt.log.settings
    build = version or f"b{lt.log.build}"
    parts = [f"version={build}"]
    ms = min_step if min_step is not None else s.get("min_step")
    if ms is not None:
        parts.append(f"min_step={int(ms)}")
    if s.get("every_n"):
        parts.append(f"every_n={int(s['every_n'])}")
    return "llama-server:" + ",".join(parts)


def validate_log(path: str | Path, *, version: str | None = None, profile: str | None = None,
                 overrides: dict | None = None, min_step: int | None = None,
                 log_sizes: bool = True) -> Validation:
    """Parse ``path``, replay it through the matching llama-server policy, compare per task."""
    lt = trace_from_log(path)
    trace = Trace(lt.header, lt.requests)
    config = config_from_log(lt.log.settings, overrides)
    base = load_profile(profile)
    prof = profile_from_log(lt, base) if log_sizes else base
    range_check: list[dict] = []
    replays: dict[str, tuple] = {}
    if version is None and not lt.header.meta.get("build_printed") and len(trace):
        # The build was dated from the wording of its lines, which gives a range. Replay under
        # every rule group the range spans and keep the one that agrees most (ties: the earliest);
        # every group's result is reported (issue: "b8265-b8285 contradicted, b8286-b8399 agrees").
        version, range_check = _best_in_range(lt, trace, config, prof, min_step, replays)
    spec = policy_for_log(lt, version, min_step)
    decisions: list[Decision] = []
    timings: list[dict] = []
    if len(trace):
        res_by_req, decisions = replays.get(spec) or _replay(trace, spec, config, prof, lt)
        for req in trace:
            obs = req.observed or {}
            res = res_by_req[req.id]
            if obs.get("prompt_ms") is not None and obs.get("prompt_n"):
                pred = res.prefill_ms + res.create_ms + res.restore_ms
                logged = float(obs["prompt_ms"])
                # The replay's time mixes two errors: its decisions (on an excerpt it may re-process
                # the whole prompt where the server restored) and the cost model. The profile on
                # the work the log shows (the last prompt_n tokens of the prompt) is the cost
                # model alone.
                n_log = int(obs["prompt_n"])
                start = max(0, req.n_prompt - n_log)
                nb, nub = count_batches(start, req.n_prompt, config.n_batch, config.n_ubatch, ())
                alone = prof.prefill_ms(start, req.n_prompt, nb, nub)
                timings.append({"task": obs.get("task"), "line": obs.get("line"), "prompt_n": n_log,
                                "simulated_n": int(res.n_reprocessed), "logged_ms": logged,
                                "predicted_ms": round(pred, 2), "error_pct": _pct(pred, logged),
                                "logged_work_ms": round(alone, 2), "logged_work_error_pct": _pct(alone, logged)})
    decisions += _left_out_decisions(lt)
    fork = {}
    if lt.log.stats.fork:
        range_check = []     # mainline's rule groups date nothing in a relative's log
        # not mainline: its rules are not modelled, so no decision is settled by a mainline replay
        why = (f"{lt.log.stats.fork} log (line {lt.log.stats.fork_line}): its checkpoint rules are not "
               "modelled; a mainline replay would not be evidence")
        decisions = [dataclasses.replace(d, status="unknown", why=why) for d in decisions]
        fork = {"name": lt.log.stats.fork, "line": lt.log.stats.fork_line, "modelled": False}
    wording = {}
    if not fork and not lt.header.meta.get("build_printed"):
        lo, hi, ev = lt.log.build_lo, lt.log.build_hi, lt.log.build_evidence
        wording = {"range": [lo, hi], "text": build_range_text(lo, hi, ev), "evidence": ev}
    cfg = {k: (v if not (isinstance(v, float) and math.isinf(v)) else "inf")
           for k, v in dataclasses.asdict(config).items()}
    return Validation(log=str(path), policy=spec, config=cfg, profile=prof.name, n_tasks=len(lt.log.tasks),
                      decisions=decisions, timings=timings, left_out=lt.left_out,
                      slots={r.id: (r.observed or {}).get("slot") for r in trace}, build_range=range_check,
                      settings_evidence=lt.log.evidence, fork=fork, build_wording=wording)


def _left_out_decisions(lt: LogTrace) -> list[Decision]:
    """A task without a prompt length is no request of the trace, but it is a task of the log:
    its five decisions are listed as what the log shows, each unknown (request -1)."""
    by_task = {t.task: t for t in lt.log.tasks}
    out: list[Decision] = []
    for lo in lt.left_out:
        t = by_task.get(lo["task"])
        if t is None:
            continue
        why = "the prompt length is not in the log (it starts or ends too close to the task to show it)"
        first = {k: ln for k, _, ln in reversed(t.erased)}
        logged = {"cache_n": (t.cache_n, t.line), "restored": (t.restored, t.restored_line),
                  "full": (t.full_reprocess, t.full_line),
                  "created": ([n for n, _, _ in t.created], min((ln for _, _, ln in t.created), default=-1)),
                  "erased": (sorted(n for _, n, _ in t.erased), min(first.values(), default=-1))}
        for name in DECISIONS:
            val, ln = logged[name]
            out.append(Decision(t.task, -1, name, "unknown", val, None, ln if ln >= 0 else t.line, why))
    return out


def _replay(trace: Trace, spec: str, config, prof, lt: LogTrace | None = None
            ) -> tuple[dict, list[Decision]]:
    """Simulate ``trace`` under ``spec``: (result per request, the five decisions of each task).

    A prompt length that the log gives only as a range (two-decimal progress lines,
    ``n_prompt_range``) is replayed at both ends as well: a decision counts only where every
    length gives the same result (spec §2.3: near-end checkpoints follow T; every-N ones do not).
    """
    res, decisions = _replay_histories(trace, spec, config, prof, lt)
    ranged = {r.id: tuple((r.observed or {})["n_prompt_range"]) for r in trace
              if (r.observed or {}).get("n_prompt_range")}
    if not ranged or lt is None:
        return res, decisions
    ends: list[list[Decision]] = []
    for k in (0, 1):
        reqs = [dataclasses.replace(r, n_prompt=ranged[r.id][k],
                                    n_output=max(1, r.n_prompt + r.n_output - ranged[r.id][k]))
                if r.id in ranged else r for r in trace]
        ends.append(_replay_histories(Trace(trace.header, reqs), spec, config, prof,
                                      dataclasses.replace(lt, requests=reqs))[1])
    out = []
    for i, d in enumerate(decisions):
        if d.status != "unknown" and any(e[i].simulated != d.simulated for e in ends):
            if d.request in ranged:
                lo, hi = ranged[d.request]
                why = f"depends on the exact prompt length, which its progress lines give only as {lo}-{hi}"
            else:
                why = "depends on the exact prompt length of an earlier task, which its progress lines give as a range"
            d = dataclasses.replace(d, status="unknown", why=why)
        out.append(d)
    return res, out


def _replay_histories(trace: Trace, spec: str, config, prof, lt: LogTrace | None = None
                      ) -> tuple[dict, list[Decision]]:
    """``_replay`` at one prompt length per request.

    An excerpt's slots held checkpoints before the log starts: each is stood in for by the
    histories its first task's lines allow (``log_trace.excerpt_seeds``), the log is replayed
    under each, and a decision counts only where every history gives the same result (else it is
    unknown: it depends on what the log does not show).
    """
    from .sim import Seeding, simulate
    from .policies import make_policy
    seeds, why_not = excerpt_seeds(lt.log) if lt is not None else ({}, {})
    # User-message starts are read off the checkpoints a prefill created (log_trace, #22929 eras):
    # a lineage reveals those past the resume point it prefilled from, not at or below it.
    # Whether the workload is chat at all the excerpt may not show, so both are tried.
    rules = make_policy(spec).rules
    user_era = rules.era in ("last-user", "user")
    # from b8157 a create at a batch's start is logged after that batch's seq_rm line (before it
    # the prompt's checkpoint came after "prompt done", spec §6): an excerpt that begins at a
    # seq_rm line then shows whether that batch got one
    start_shown = rules.build >= 8157
    runs: list[tuple[dict, dict]] = []
    n_var = n_seed_variants(seeds) if seeds else 1
    meta = [(v, u) for u in ((False, True) if seeds and user_era else (False,)) for v in range(n_var)]
    for v, at_resume in meta:
        if seeds:
            reqs, ckpts, pins, m = seeded_requests(lt, seeds, v, at_resume)
            run = simulate(Trace(trace.header, reqs), spec, config, prof, seeding=Seeding(ckpts, pins))
        else:
            run, m = simulate(trace, spec, config, prof), 0
        ev: dict[int, list] = {}
        for e in run.events:
            if e.request_id >= m:
                ev.setdefault(e.request_id - m, []).append(e)
        runs.append(({r.request_id - m: r for r in run.results if r.request_id >= m}, ev))
    decisions: list[Decision] = []
    # A replay whose state parted from the log on a seeded slot (a decision the log shows came
    # out differently) stood in for a history that was not the server's: from there on that
    # slot's later tasks are not evidence under it. root -> variant -> (task, line) it parted at
    parted: dict[int, dict[int, tuple[int, int]]] = {}
    # A later task prefilling from at or below the lowest point its lineage prefilled from may meet
    # user starts from before the log.
    revealed_from: dict[int, int] = {}
    # In the user-message eras a task the excerpt joins inside its prefill placed checkpoints at
    # user starts below its first batch, which the excerpt cannot show: every later decision of
    # its slot (or of a slot that loads from the prompt cache) may rest on them. slot -> why
    blind: dict[int, str] = {}
    for req in trace:
        obs = req.observed or {}
        root = obs.get("seed_root", -1)
        slot = obs.get("slot", -1)
        loads = any(k == EventKind.CACHE_LOAD.value for k, _, _ in obs.get("events", []))
        blind_why = blind.get(slot) or (next(iter(blind.values())) if loads and blind else "")
        if root in seeds:
            obs = {**obs, "history_known": True, "seeded": True}
        elif root in why_not and not obs.get("history_known", False):
            obs = {**obs, "history_why": why_not[root]}
        per_run = [compare_task(req.id, obs, res[req.id], ev.get(req.id, []), partial_created=not user_era)
                   for res, ev in runs]
        first_cut = root in seeds and seeds[root].decided_before_log and obs.get("task") == root
        cut = (("cache_n", "restored", "full", "erased") if seeds[root].erasures_before_log
               else ("cache_n", "restored", "full")) if first_cut else ()
        gone = parted.get(root, {}) if root in seeds else {}
        # The log can rule out a user start at the resume point (the runs that assumed one), but
        # not single out one placement of unnamed checkpoints: a group of runs (one per placement)
        # stays evidence only while none of its runs has parted from the log.
        intact = [i for i, (_, u) in enumerate(meta)
                  if not any(j in gone for j, (_, uu) in enumerate(meta) if uu == u)]
        live = [per_run[i] for i in intact] or per_run[:1]
        # placement and eviction start from the restore: where it depends on unseen history, so do they
        vary = {d.decision for j, d in enumerate(live[0]) if any(ds[j].simulated != d.simulated for ds in live[1:])}
        if vary & {"cache_n", "restored", "full"}:
            # (a prefill the excerpt joins late compares only creates every history placed alike)
            vary |= {"erased"} if root in seeds and starts_inside_prefill(obs) else {"created", "erased"}
        users_unseen = -1
        if root in seeds and user_era and obs.get("cache_n") is not None:
            start = int(obs["cache_n"])
            if obs.get("task") != root and 0 < start <= revealed_from.get(root, start - 1):
                users_unseen = revealed_from[root]
            revealed_from[root] = min(revealed_from.get(root, start), start)
        for j, d in enumerate(live[0]):
            if d.status == "unknown":
                pass
            elif d.decision in cut:
                d = dataclasses.replace(d, status="unknown", why=(
                    "the log starts after this restore decision (the slot's state before it is not shown)"))
            elif gone and not intact:
                t, ln = min(gone.values())
                d = dataclasses.replace(d, status="unknown", why=(
                    f"follows task {t} (line {ln}), where every stand-in for the slot's unseen history "
                    "parted from the log"))
            elif blind_why:
                d = dataclasses.replace(d, status="unknown", why=blind_why)
            elif users_unseen >= 0 and d.decision in ("created", "erased"):
                d = dataclasses.replace(d, status="unknown", why=(
                    f"user-message starts at or below {users_unseen} were prefilled before the log starts "
                    "(they place checkpoints, spec §2.3)"))
            elif d.decision in vary:
                sd = seeds.get(root)
                how = f"; their count: {sd.evidence}" if sd is not None else ""
                d = dataclasses.replace(d, status="unknown", why=(
                    "depends on the checkpoints the slot held before the log starts" + how))
            decisions.append(d)
        if user_era and root not in seeds and starts_inside_prefill(obs) and slot not in blind:
            fb = obs.get("first_batch")
            below = f"below {fb}" if fb is not None else "before its first line"
            blind[slot] = (f"follows task {obs.get('task')} (line {obs.get('line')}), joined inside its prefill: "
                           f"user-message starts {below} placed checkpoints the excerpt does not show (spec §2.3)")
        if root in seeds:
            fb = obs.get("first_batch")
            at_fb = start_shown and fb is not None and starts_inside_prefill(obs)
            for v, ds in enumerate(per_run):
                forced = set(cut) | ({"created", "erased"} if users_unseen >= 0 else set())
                # a stand-in that gives the excerpt's first batch a checkpoint the log shows it did
                # not get (or the reverse) was not the server's history (a decision outside the
                # compared view, so checked here)
                fb_odd = at_fb and (fb in {e.n_tokens for e in runs[v][1].get(req.id, [])
                                           if e.kind is EventKind.CREATED}) != (fb in obs.get("created", []))
                if v not in gone and (fb_odd or any(d.status == "mismatch" and d.decision not in forced
                                                    for d in ds)):
                    parted.setdefault(root, {})[v] = (int(obs.get("task", -1)), int(obs.get("line", -1)))
    return runs[0][0], decisions


def _best_in_range(lt: LogTrace, trace: Trace, config, prof, min_step: int | None,
                   replays: dict[str, tuple]) -> tuple[str, list[dict]]:
    """(build to replay as, one row per rule group of the log's dated build range); each group's
    replay is kept in ``replays`` (by policy spec) so the chosen one is not simulated again."""
    from .server import RULE_BOUNDARIES

    def groups(starts: list[int], hi: int) -> list[dict]:
        rows = []
        for i, b in enumerate(starts):
            end = starts[i + 1] - 1 if i + 1 < len(starts) else hi
            spec = policy_for_log(lt, f"b{b}", min_step)
            replays[spec] = _replay(trace, spec, config, prof, lt)
            known = [d for d in replays[spec][1] if d.status != "unknown"]
            bad = next((d for d in known if d.status == "mismatch"), None)
            rows.append({"builds": f"b{b}" if b == end else f"b{b}-b{end}", "as": f"b{b}",
                         "agreed": sum(1 for d in known if d.status == "agreed"), "decisions": len(known),
                         "first_mismatch_line": bad.line if bad else None})
        return rows

    lo, hi = lt.header.meta.get("build_range") or (lt.log.build, lt.log.build)
    rows = groups([lo] + [b for b in RULE_BOUNDARIES if lo < b <= hi], hi)
    if all(r["agreed"] < r["decisions"] for r in rows):
        # no group of the wording's range replays the log: try the neighbouring groups too
        # (xllamacpp 0.2.14 words its erasures as before b8393 but erases as #20671 does)
        below = [b for b in RULE_BOUNDARIES if b <= lo][-1:]
        above = [b for b in RULE_BOUNDARIES if b > hi][:2]
        extra = (groups(below, lo - 1) if below else []) + \
            (groups(above[:1], above[1] - 1 if len(above) > 1 else lo + 99999) if above else [])
        for r in extra:
            r["outside_wording"] = True
        rows = sorted(rows + extra, key=lambda r: int(r["as"][1:]))
    # ties keep the group of the build the wording dates the log to (LogTasks.build: the newest of
    # an open range, the start of a closed one), so parse, validate and explain name the same
    # build when the log settles nothing between them; else the earliest
    dated = lt.log.build
    best = max(rows, key=lambda r: (r["agreed"] - (r["decisions"] - r["agreed"]), not r.get("outside_wording"),
                                    _in_group(r, dated), -int(r["as"][1:])))
    if _in_group(best, dated) and best["as"] != f"b{dated}":
        # same rules inside a group: name the build as parse dates it (the replay is the same)
        replays[policy_for_log(lt, f"b{dated}", min_step)] = replays[policy_for_log(lt, best["as"], min_step)]
        return f"b{dated}", rows
    return best["as"], rows


def restore_decided(obs: dict) -> bool:
    """Whether the log shows the task past its restore decision: anything logged after that point
    (a restore or reset line, a create, a prefill line, cache_n as timings print it, the finished
    prompt). A resume at T-1 ("n_past was set to", cache_n from need_one) is decided only once a
    batch ran: before b9191 its truncate could still fail and clear the memory (``TaskObs.batch_ran``)."""
    if obs.get("cache_n_source") == "need_one" and not obs.get("batch_ran", True):
        return False
    return bool(obs.get("complete")) or obs.get("restored", -1) >= 0 or bool(obs.get("full_reprocess")) \
        or bool(obs.get("created")) or bool(obs.get("prefilling")) \
        or obs.get("cache_n_source", "") in ("seq_rm", "prompt_n", "need_one")


def _in_group(row: dict, build: int) -> bool:
    lo, _, hi = row["builds"].partition("-")
    return int(lo[1:]) <= build <= int((hi or lo)[1:])


def _pct(pred: float, logged: float, digits: int = 1) -> float | None:
    return round(100.0 * (pred - logged) / logged, digits) if logged > 0 else None


def starts_inside_prefill(obs: dict) -> bool:
    """The excerpt begins past this task's prefill start: no line shows where it began (the task's
    start, a restore or reset, or a first seq_rm line at cache_n), so the creates before its first
    line are not in it."""
    if obs.get("started_in_log", True) or obs.get("restored", -1) >= 0 or obs.get("full_reprocess"):
        return False
    return obs.get("first_batch") is None or obs.get("first_batch") != obs.get("cache_n")


def compare_task(rid: int, obs: dict, res, events: list, partial_created: bool = True) -> list[Decision]:
    """The five decisions of one task: logged (``obs``) against simulated (result + events).

    ``partial_created``: a task whose prompt the log does not finish may still settle the
    checkpoints it created below ``seen_to`` -- not in the user-message eras (b9315+), where
    where they go depends on the last user message's start, which is read off the checkpoints
    created at it and may lie past the cut."""
    task, line = int(obs.get("task", -1)), int(obs.get("line", -1))
    lines: dict[str, int] = {}
    for k, _, ln in obs.get("events", []):
        lines.setdefault(k, ln)          # the first line of each kind
    why = ""
    unseen_why = ""
    hist_why = ""
    if not obs.get("history_known", False):
        hist_why = "the slot's earlier history is not in the log"
        if obs.get("history_why"):
            hist_why += f" ({obs['history_why']})"
    if hist_why and not obs.get("started_in_log", True) and "after its restore decision" in hist_why:
        why = hist_why          # the excerpt begins past this task's start: the first thing it lacks
    elif not obs.get("visible", False):
        why = obs.get("visible_why") or "checkpoint lines not visible (use -lv 4)"
        if obs.get("slot_empty"):
            # an empty slot has nothing to restore or reset (n_past = 0, spec §2.2): that much the
            # log settles without a checkpoint line; what the prefill created it does not show
            why, unseen_why = "", why
    else:
        why = hist_why
    out: list[Decision] = []

    def add(name: str, logged: Any, sim: Any, known_why: str, ln: int, first: str = "") -> None:
        w = first or why or known_why
        if w:
            out.append(Decision(task, rid, name, "unknown", logged, sim, ln, w))
        else:
            out.append(Decision(task, rid, name, "agreed" if logged == sim else "mismatch", logged, sim, ln))

    src = obs.get("cache_n_source", "")
    complete = bool(obs.get("complete"))
    decided = restore_decided(obs)
    ends = "" if decided else "the log ends before the restore decision"
    cn_why = "" if src in _DIRECT_CACHE_N else "cache_n not printed (inferred only)"
    if obs.get("cache_n") is None:
        cn_why = ends or ("the log starts after this restore decision (the slot's state before it is not shown)"
                          if not obs.get("started_in_log", True) else "cache_n is not in the log")
    add("cache_n", obs.get("cache_n"), res.n_cached, cn_why, line, ends)
    # A hand-edited paste (lines without their "id N | task M |" prefix) shows what it kept: a
    # restore or reset line is evidence, a line it lacks may have been left out
    pasted = "the lines lost their slot/task prefix (a hand-edited paste): a line left out cannot be " \
        "told from one never printed" if obs.get("abbreviated") else ""
    shown = obs.get("restored", -1) >= 0 or bool(obs.get("full_reprocess"))
    restore_why = ends or ("" if shown else pasted)
    add("restored", obs.get("restored", -1), res.restored_n_tokens, restore_why, lines.get("restored", line), ends)
    add("full", bool(obs.get("full_reprocess")), bool(res.full_reprocess), restore_why,
        lines.get("full_reprocess", line), ends)
    why = why or unseen_why
    sim_created = [e.n_tokens for e in events if e.kind is EventKind.CREATED]
    logged_created = list(obs.get("created", []))
    created_why = "" if complete else "the prompt was not finished inside the log"
    seen_to = obs.get("seen_to")
    if created_why and seen_to is not None and partial_created:
        # The prompt goes on past the excerpt (or was cancelled), but every create below seen_to
        # is in it (a create is logged before its batch is decoded, after the batch's seq_rm
        # line): compare those.
        created_why = ""
        sim_created = [k for k in sim_created if k < seen_to]
    if not created_why and obs.get("n_prompt_source") == "inferred" and not obs.get("n_prompt_range"):
        # (a range is replayed at both ends: _replay)
        created_why = "prompt length only inferred"
    # An excerpt that begins inside this task shows the checkpoints it created (and FIFO-erased)
    # from its first line on, not those before it
    inside = starts_inside_prefill(obs)
    if inside and not created_why and not partial_created:
        created_why = ("the excerpt starts inside this task's prefill: in the user-message eras (b9315+) "
                       "where its checkpoints go depends on user starts read off the ones it shows")
    if inside and not created_why:
        # A checkpoint at p is made once the prefill reaches p: past the first batch start the
        # excerpt shows (its seq_rm line), or at or past the first create it shows, it is in the
        # excerpt. (At the batch start itself builds before b8157 may log it before that line.)
        # A seeded task is replayed from there on: what its first batch creates depends on
        # where the unseen checkpoints lie (every-N spacing), what follows it mostly does not.
        fb, seen = obs.get("first_batch"), sorted(logged_created)
        if fb is not None:
            sim_created = [k for k in sim_created if k > fb]
            logged_created = [k for k in logged_created if k > fb]
        elif seen:
            sim_created = [k for k in sim_created if k >= seen[0]]
        else:
            created_why = ("the excerpt starts inside this task's prefill: checkpoints created before its "
                           "first line are not in it")
    created_why = created_why or pasted
    add("created", logged_created, sim_created, created_why, lines.get("created", line))
    sim_erased = sorted(e.n_tokens for e in events if e.kind in _ERASE_KINDS)
    erased_line = min((ln for k, _, ln in obs.get("events", []) if k.startswith("erased")
                       or k == "superseded"), default=line)
    erased_why = created_why or ("the prompt was not finished inside the log" if not complete else
                                 "the excerpt starts inside this task's prefill: what it erased before its "
                                 "first line is not in it" if inside else "")
    add("erased", sorted(obs.get("erased", [])), sim_erased,
        "" if complete and not inside and not pasted else erased_why, erased_line)
    return out
