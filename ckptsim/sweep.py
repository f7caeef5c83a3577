"""Sweeps: the cross product traces x policies x server flags, simulated in worker processes.

One task is one ``simulate()`` call; the result is one tidy row (the run's summary plus the flags
it ran under plus the proven lower bound for its trace), so a sweep is one DataFrame that pandas,
plots and ``recommend`` can slice.
"""
from __future__ import annotations

import dataclasses
import math
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd

from .policies import NoCheckpoints, Policy, checkpoint_cap, effective_config, make_policy, read_at_cap_zero
from .sim import ServerConfig

DEFAULT_CTX_CHECKPOINTS = (4, 8, 16, 32, 64, 128)


@dataclass(frozen=True)
class SweepTask:
    """One simulation of a sweep: a trace file, a policy spec, the flags and the cost profile."""

    trace_path: str
    policy: str
    config: ServerConfig
    profile: str | None = None
    min_step: int | None = None      # the --checkpoint-min-step this row tests (None: not a flag of it)


def with_min_step(spec: str, min_step: int | None) -> tuple[str, int | None]:
    """The spec with ``min_step`` set when the policy has that flag (llama-server, coverage)."""
    if min_step is None or "+" in spec:
        return spec, None
    pol = make_policy(spec)
    if not (dataclasses.is_dataclass(pol) and "min_step" in {f.name for f in dataclasses.fields(pol)}):
        return spec, None
    name, _, args = spec.partition(":")
    parts = [p for p in args.split(",") if p.strip() and not p.strip().startswith(("min_step", "min-step"))]
    return f"{name}:" + ",".join(parts + [f"min_step={min_step}"]), min_step


def pinned_cap(pol: Policy) -> int | None:
    """The checkpoint cap a policy spec sets itself (``llama-server:ctx_checkpoints=4``), which
    overrides --ctx-checkpoints (``policies.checkpoint_cap``); None when the swept cap decides.
    A pin at 0 (``none``) keeps no checkpoints under any cap, so its rows are right whatever cap
    labels them: it pins nothing here."""
    pin = pol.ctx_checkpoints
    return None if pin == 0 else pin


def expand(traces: Iterable[str | Path], policies: Iterable[str],
           ctx_checkpoints: Iterable[int] = DEFAULT_CTX_CHECKPOINTS,
           min_steps: Iterable[int | None] = (None,), cache_ram_mib: Iterable[float] = (8192.0,),
           n_slots: Iterable[int] = (1,), base: ServerConfig | None = None,
           profile: str | None = None) -> list[SweepTask]:
    """Every combination, once: policies without a min-step flag are not repeated per min-step.

    A spec that pins the checkpoint cap itself (``llama-server:ctx_checkpoints=4``) is refused
    unless the swept --ctx-checkpoints are that cap alone: its rows would otherwise be labelled
    with caps it does not run under (the policy's cap wins in ``simulate``).
    """
    base = base or ServerConfig()
    ctx_checkpoints = list(ctx_checkpoints)
    tasks: list[SweepTask] = []
    seen: set = set()
    for spec in policies:
        pin = pinned_cap(make_policy(spec))          # a bad spec fails before any work starts
        others = sorted({int(c) for c in ctx_checkpoints} - {pin})
        if pin is not None and others:
            raise ValueError(f"policy {spec!r} pins ctx_checkpoints={pin}, so --ctx-checkpoints "
                             f"{','.join(map(str, others))} would not apply to it; drop "
                             f"ctx_checkpoints from the spec to sweep the cap, or sweep "
                             f"--ctx-checkpoints {pin}")
    for tr in traces:
        for spec in policies:
            for ms in min_steps:
                spec_ms, ms_used = with_min_step(spec, ms)
                for cp in ctx_checkpoints:
                    for ram in cache_ram_mib:
                        for ns in n_slots:
                            cfg = dataclasses.replace(base, ctx_checkpoints=int(cp), cache_ram_mib=float(ram),
                                                      n_slots=int(ns))
                            key = (str(tr), spec_ms, cfg)
                            if key in seen:
                                continue
                            seen.add(key)
                            tasks.append(SweepTask(str(tr), spec_ms, cfg, profile, ms_used))
    return tasks


@lru_cache(maxsize=8)
def _trace(path: str):
    from .trace import load_trace
    return load_trace(path)


# (trace path, n_batch, n_ubatch, n_ctx, profile) -> the bound's three figures; per process
_BOUNDS: dict[tuple, tuple[int, float, float]] = {}


def _bound(path: str, trace, config: ServerConfig, profile, profile_key: str | None) -> tuple[int, float, float]:
    from .oracle import lower_bound
    key = (path, config.n_batch, config.n_ubatch, config.n_ctx, profile_key)
    if key not in _BOUNDS:
        lb = lower_bound(trace, ServerConfig(n_batch=config.n_batch, n_ubatch=config.n_ubatch,
                                             n_ctx=config.n_ctx), profile)
        _BOUNDS[key] = (lb.reprocessed_tokens, lb.prefill_s, lb.ttft_p95_ms)
    return _BOUNDS[key]


def ckpt_memory_mib(config: ServerConfig, ckpt_mib: float, policy: Policy | None = None) -> float:
    """Host RAM the checkpoints may take at most: n_slots x cap x size (spec §4), the cap being the
    one ``policy`` runs under (``policies.checkpoint_cap``; the config's when no policy is given)."""
    cap = config.ctx_checkpoints if policy is None else checkpoint_cap(policy, config)
    per_slot = min(cap * ckpt_mib, config.ckpt_budget_mib)
    return config.n_slots * per_slot


def run_key(task: SweepTask) -> tuple:
    """Tasks with equal keys give the same run: same trace, spec and profile, and flags that differ
    only in values the policy cannot read (``policies.effective_config``). The spec is compared
    as written, not rebuilt, so two spellings of one policy simply run twice -- except under a
    cap of 0, where a policy that can be read only through its rules there
    (``policies.read_at_cap_zero``: ``none``, ``fifo``, ``llama-server:min_step=N`` for every N...)
    stands as those rules, so all of them run once."""
    pol = make_policy(task.policy)
    cfg = effective_config(pol, task.config)
    what: object = task.policy
    if cfg.ctx_checkpoints == 0:
        rules = read_at_cap_zero(pol)
        if rules is not None:
            what = ("no checkpoints", rules)
    return (task.trace_path, what, cfg, task.profile)


def shadow_key(task: SweepTask) -> tuple | None:
    """The shadow replay (``oracle.shadow_run``) a run makes or is, or None: every run of a policy
    that makes one (``Policy.makes_shadow``: the oracle) under flags that differ only in cap and
    budget needs the same replay, and ``none`` under those flags *is* it
    (``oracle.shadow_config``). Such runs, done one after another in one process, replay it once."""
    pol = make_policy(task.policy)
    if not (pol.makes_shadow or isinstance(pol, NoCheckpoints)):
        return None
    from .oracle import shadow_config
    return (task.trace_path, task.profile, shadow_config(task.config))


def shared_units(runs: list[SweepTask], jobs: int) -> list[list[int]]:
    """The runs (indices) grouped into units that one process runs in order: each run alone,
    except the runs that share a shadow replay (``shadow_key``), which go together, the ``none``
    run last (it takes the replay the first oracle run made). A group heavier than one process's
    share of the sweep (``jobs`` processes) is split across as many units as that takes, so the
    sharing never leaves processes idle (each unit then replays the shadow once)."""
    units: list[list[int]] = []
    groups: dict[tuple, list[int]] = {}
    for j, t in enumerate(runs):
        key = shadow_key(t)
        if key is None:
            units.append([j])
        else:
            if key not in groups:
                groups[key] = []
                units.append(groups[key])      # the group's place: where its first run was
            groups[key].append(j)
    share = sum(_weight(t) for t in runs) / max(1, jobs)
    out: list[list[int]] = []
    for u in units:
        makers = [j for j in u if make_policy(runs[j].policy).makes_shadow]
        if len(u) == 1 or not makers:
            out.append(u)
            continue
        rest = [j for j in u if j not in makers]
        n = max(1, min(len(makers), math.ceil(sum(_weight(runs[j]) for j in u) / share))) if share > 0 else 1
        chunks = [makers[i::n] for i in range(n)]
        chunks[0] += rest
        out.extend(chunks)
    return out


def simulate_tasks(tasks: list[SweepTask]) -> list[dict]:
    """``simulate_task`` of each, in order, in this process (a unit of ``shared_units``)."""
    return [simulate_task(t) for t in tasks]


def simulate_task(task: SweepTask, trace=None, profile=None) -> dict:
    """Simulate one task: the figures that depend on the run alone, not on the row's labels
    (``label_row`` adds those). ``trace`` and ``profile`` come loaded when the caller has them
    (a cluster worker gets them from the client); else they are read here, once per process."""
    from .cost import load_profile
    from .metrics import with_prompt_s
    from .sim import simulate
    t0 = time.perf_counter()
    trace = _trace(task.trace_path) if trace is None else trace
    prof = load_profile(task.profile) if profile is None else profile
    run = simulate(trace, task.policy, task.config, prof, record_events=False)
    out = with_prompt_s(run.summary())
    lb = _bound(task.trace_path, trace, task.config, prof, task.profile)
    out.update(trace=trace.name or Path(task.trace_path).stem,
               max_ckpt_mib=prof.ckpt_mib(int(trace.n_prompt.max())) if len(trace) else prof.ckpt_mib(0),
               bound_reprocessed_tokens=lb[0], bound_prefill_s=lb[1], bound_ttft_p95_ms=lb[2],
               wall_s=time.perf_counter() - t0)
    return out


def label_row(task: SweepTask, result: dict, reused: bool = False) -> dict:
    """The tidy row of ``task`` from the run that stands for it: the run's figures plus the flags
    this task asked for. ``reused``: the figures come from another task's run with the same
    ``run_key``, so this row cost nothing (wall_s 0)."""
    row = dict(result)
    max_ckpt = row.pop("max_ckpt_mib")
    tail = {k: row.pop(k) for k in _RUN_TAIL}
    cfg = task.config
    pol = make_policy(task.policy)
    row.update(
        trace_path=task.trace_path, policy=task.policy,
        policy_name=task.policy.split(":")[0].split("+")[0],
        ctx_checkpoints=cfg.ctx_checkpoints,
        min_step=task.min_step if task.min_step is not None else getattr(pol, "min_step", None),
        cache_ram_mib=cfg.cache_ram_mib, n_slots=cfg.n_slots, n_batch=cfg.n_batch, n_ubatch=cfg.n_ubatch,
        queue="arrival" if cfg.arrival_order else "ready",
        ckpt_budget_mib=None if math.isinf(cfg.ckpt_budget_mib) else cfg.ckpt_budget_mib,
        ckpt_mem_mib=ckpt_memory_mib(cfg, max_ckpt, pol))
    row.update(tail, wall_s=0.0 if reused else tail["wall_s"], reused=reused)
    return row


_RUN_TAIL = ("bound_reprocessed_tokens", "bound_prefill_s", "bound_ttft_p95_ms", "wall_s")


def run_task(task: SweepTask) -> dict:
    """Simulate one task and return its tidy row."""
    return label_row(task, simulate_task(task))


def run_sweep(tasks: list[SweepTask], jobs: int | None = None,
              on_done: Callable[[dict], None] | None = None, cluster: str | None = None,
              reuse: bool = True) -> pd.DataFrame:
    """Run every task and return one tidy DataFrame, one row per task in the tasks' order.

    Tasks with the same ``run_key`` are simulated once and the run is reported in each of their
    rows (``reuse=False`` runs every task, each on its own, for benchmarks and the test that
    proves the equality). The runs go to ``jobs`` local processes (default: all cores), those that
    share a shadow replay together (``shared_units``), or to the Dask cluster at ``cluster``
    (``tcp://host:port``; ``ckptsim.cluster``), one task per run. ``on_done`` is called once per row.
    """
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tasks):
        groups.setdefault(run_key(t) if reuse else (i,), []).append(i)
    members = list(groups.values())
    runs = [tasks[m[0]] for m in members]
    rows: list[dict | None] = [None] * len(tasks)
    if cluster is not None:
        from .cluster import run_on_cluster
        results = run_on_cluster(runs, cluster, simulate_task, heaviest_first(runs))
    else:
        results = _run_local(runs, jobs, share=reuse)
    for j, result in results:
        for k, i in enumerate(members[j]):
            rows[i] = label_row(tasks[i], result, reused=k > 0)
            if on_done:
                on_done(rows[i])
    return tidy(rows)


def _run_local(runs: list[SweepTask], jobs: int | None, share: bool = True) -> Iterator[tuple[int, dict]]:
    """(index, result) of each run as it finishes, on ``jobs`` processes (default: all cores);
    ``share``: in the units of ``shared_units`` (else each run alone)."""
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(runs) or 1))
    if jobs == 1 or len(runs) < 2 * jobs:   # starting processes would cost more than it saves
        for unit in shared_units(runs, 1) if share else [[j] for j in range(len(runs))]:
            for j in unit:
                yield j, simulate_task(runs[j])
        return
    units = shared_units(runs, jobs) if share else [[j] for j in range(len(runs))]
    weight = [sum(_weight(runs[j]) for j in u) for u in units]
    with ProcessPoolExecutor(jobs, mp_context=_context(),
                             initializer=_warm, initargs=(sorted({t.trace_path for t in runs}),)) as ex:
        futs = {ex.submit(simulate_tasks, [runs[j] for j in units[i]]): units[i]
                for i in sorted(range(len(units)), key=weight.__getitem__, reverse=True)}
        for f in as_completed(futs):
            yield from zip(futs[f], f.result())


# (trace, profile) of the ``simulate_many`` call whose workers are being forked: they inherit it
# instead of receiving a pickled copy of the trace
_FORKED: tuple | None = None


def simulate_many(trace, specs: list[str], config: ServerConfig, profile, jobs: int | None = None,
                  on_progress: Callable[[int], None] | None = None) -> Iterator[tuple[int, object]]:
    """(index, ``sim.Run``) of each spec on one loaded trace, as each finishes (``compare``).

    The policies that share a shadow replay run in one process, the makers first, as a serial run
    would order them (``shared_units``, as for a sweep); the rest each alone, heaviest first, on
    ``jobs`` processes (default: all cores). The worker processes are started here, before this
    returns, forked where that is safe (``_context``), so the caller may start a progress-bar
    thread after it; else each worker is sent the trace once. With one job the runs happen in
    this process, one after another, as the iterator is read.
    ``on_progress`` is called with requests done: per request chunk in this process, per whole
    run from workers. The runs are the same either way (``tests/test_compare_jobs.py``)."""
    from .sim import simulate
    # the sweep's own grouping (one trace, one config): only the specs differ
    tasks = [SweepTask("", s, config) for s in specs]
    units = shared_units(tasks, jobs or os.cpu_count() or 1)
    weight = [sum(_weight(tasks[i]) for i in u) for u in units]
    units = [units[k] for k in sorted(range(len(units)), key=weight.__getitem__, reverse=True)]
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(units)))
    if jobs == 1:
        def serial() -> Iterator[tuple[int, object]]:
            for u in units:
                for i in u:
                    yield i, simulate(trace, specs[i], config, profile, record_events=False,
                                      on_progress=on_progress)
        return serial()
    global _FORKED
    ctx = _context()
    if ctx.get_start_method() == "fork":
        _FORKED = (trace, profile)      # the workers inherit it
        ex = ProcessPoolExecutor(jobs, mp_context=ctx)
    else:                               # each worker gets one pickled copy, not one per run
        ex = ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_hold, initargs=(trace, profile))
    try:
        # fork starts every worker at the first submit (they copy _FORKED then)
        futs = {ex.submit(_simulate_unit, [specs[i] for i in u], config): u for u in units}
    except BaseException:
        ex.shutdown(cancel_futures=True)
        raise
    finally:
        _FORKED = None

    def collect() -> Iterator[tuple[int, object]]:
        with ex:
            for f in as_completed(futs):
                for i, run in zip(futs[f], f.result()):
                    if on_progress is not None:
                        on_progress(len(trace))
                    yield i, run
    return collect()


def _hold(trace, profile) -> None:
    """Worker start-up where it cannot fork: keep the trace ``simulate_many`` sent."""
    global _FORKED
    _FORKED = (trace, profile)


def _simulate_unit(specs: list[str], config: ServerConfig) -> list:
    """A worker's share of ``simulate_many``: its specs in order, on the inherited trace."""
    from .sim import simulate
    assert _FORKED is not None, "simulate_many's workers start with the trace"
    trace, profile = _FORKED
    return [simulate(trace, s, config, profile, record_events=False) for s in specs]


def heaviest_first(runs: list[SweepTask]) -> list[int]:
    """Indices, big traces and costly policies first, so the last worker is not left with the
    longest run."""
    return sorted(range(len(runs)), key=lambda j: _weight(runs[j]), reverse=True)


def _context() -> mp.context.BaseContext:
    """fork when this process has no other thread (fast, works from notebooks and stdin);
    otherwise forkserver, because forking while a progress-bar thread holds a lock can deadlock."""
    methods = mp.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return mp.get_context("fork")
    return mp.get_context("forkserver" if "forkserver" in methods else "spawn")


def _warm(paths: list[str]) -> None:
    """Worker start-up: load the traces once per process (file order is the same everywhere)."""
    for p in paths[:8]:
        _trace(p)


def _weight(t: SweepTask) -> float:
    cost = make_policy(t.policy).relative_cost
    return cost * max(1.0, os.path.getsize(t.trace_path) if os.path.exists(t.trace_path) else 1.0)


_FIRST = ["trace", "policy", "policy_name", "ctx_checkpoints", "min_step", "cache_ram_mib", "n_slots",
          "n_batch", "n_ubatch", "ckpt_budget_mib", "ckpt_mem_mib"]


def tidy(rows: list[dict]) -> pd.DataFrame:
    """Rows -> DataFrame with the flag columns first (one row per trace x policy x flags)."""
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    first = [c for c in _FIRST if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]]


def write_table(df: pd.DataFrame, path: Path, force: bool = False) -> Path:
    """Write a sweep table as CSV or Parquet (by suffix); refuses to overwrite unless ``force``."""
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        try:
            df.to_parquet(path, index=False)
        except ImportError:
            raise ValueError(f"{path}: writing Parquet needs pyarrow (pip install 'ckptsim[parquet]'); "
                             "or write .csv") from None
    elif path.suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        raise ValueError(f"{path}: output must end in .csv or .parquet")
    return path

