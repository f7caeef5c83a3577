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
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd

from .policies import Policy, checkpoint_cap, make_policy
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


@lru_cache(maxsize=32)
def _bound(path: str, n_batch: int, n_ubatch: int, n_ctx: int, profile: str | None) -> tuple[int, float, float]:
    from .oracle import lower_bound
    lb = lower_bound(_trace(path), ServerConfig(n_batch=n_batch, n_ubatch=n_ubatch, n_ctx=n_ctx), profile)
    return lb.reprocessed_tokens, lb.prefill_s, lb.ttft_p95_ms


def ckpt_memory_mib(config: ServerConfig, ckpt_mib: float, policy: Policy | None = None) -> float:
    """Host RAM the checkpoints may take at most: n_slots x cap x size (spec §4), the cap being the
    one ``policy`` runs under (``policies.checkpoint_cap``; the config's when no policy is given)."""
    cap = config.ctx_checkpoints if policy is None else checkpoint_cap(policy, config)
    per_slot = min(cap * ckpt_mib, config.ckpt_budget_mib)
    return config.n_slots * per_slot


def run_task(task: SweepTask) -> dict:
    """Simulate one task and return its tidy row (runs in a worker process)."""
    from .cost import load_profile
    from .metrics import with_prompt_s
    from .sim import simulate
    t0 = time.perf_counter()
    trace = _trace(task.trace_path)
    prof = load_profile(task.profile)
    run = simulate(trace, task.policy, task.config, prof, record_events=False)
    row = with_prompt_s(run.summary())
    cfg = task.config
    pol = make_policy(task.policy)
    max_ckpt = prof.ckpt_mib(int(trace.n_prompt.max())) if len(trace) else prof.ckpt_mib(0)
    lb = _bound(task.trace_path, cfg.n_batch, cfg.n_ubatch, cfg.n_ctx, task.profile)
    row.update(
        trace=trace.name or Path(task.trace_path).stem, trace_path=task.trace_path, policy=task.policy,
        policy_name=task.policy.split(":")[0].split("+")[0],
        ctx_checkpoints=cfg.ctx_checkpoints,
        min_step=task.min_step if task.min_step is not None else getattr(pol, "min_step", None),
        cache_ram_mib=cfg.cache_ram_mib, n_slots=cfg.n_slots, n_batch=cfg.n_batch, n_ubatch=cfg.n_ubatch,
        queue="arrival" if cfg.arrival_order else "ready",
        ckpt_budget_mib=None if math.isinf(cfg.ckpt_budget_mib) else cfg.ckpt_budget_mib,
        ckpt_mem_mib=ckpt_memory_mib(cfg, max_ckpt, pol),
        bound_reprocessed_tokens=lb[0], bound_prefill_s=lb[1], bound_ttft_p95_ms=lb[2],
        wall_s=time.perf_counter() - t0)
    return row


def run_sweep(tasks: list[SweepTask], jobs: int | None = None,
              on_done: Callable[[dict], None] | None = None) -> pd.DataFrame:
    """Run every task on ``jobs`` processes (default: all cores) and return one tidy DataFrame."""
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(tasks) or 1))
    rows: list[dict] = []
    if jobs == 1 or len(tasks) < 2 * jobs:   # starting processes would cost more than it saves
        for t in tasks:
            rows.append(run_task(t))
            if on_done:
                on_done(rows[-1])
    else:
        # Big traces first so the last worker is not left with the longest task.
        order = sorted(range(len(tasks)), key=lambda i: _weight(tasks[i]), reverse=True)
        with ProcessPoolExecutor(jobs, mp_context=_context(),
                                 initializer=_warm, initargs=(sorted({t.trace_path for t in tasks}),)) as ex:
            futs = {ex.submit(run_task, tasks[i]): i for i in order}
            by_index: dict[int, dict] = {}
            for f in as_completed(futs):
                by_index[futs[f]] = f.result()
                if on_done:
                    on_done(by_index[futs[f]])
            rows = [by_index[i] for i in range(len(tasks))]
    return tidy(rows)


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

