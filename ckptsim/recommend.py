"""Recommend llama-server flags: the ones that minimise prompt work under the user's memory limits.

The search runs the ``llama-server`` policy of the user's build over its own flags
(``--ctx-checkpoints``, ``--checkpoint-min-step`` or ``--checkpoint-every-n-tokens``, ``--cache-ram``)
in three stages: count x spacing at the default prompt cache, then the prompt-cache size for the
best few, then ``-b``/``-ub`` at the winner (they move the T-(4+ub) checkpoint, spec §2.3, and set
how many batches and ubatches a prompt costs). Every candidate must fit in host RAM (spec §4, §5)::

    n_slots x ctx_checkpoints x checkpoint size  +  cache_ram  <=  --ram-mib

It also reports the server defaults, the oracle at the same flags, the proven lower bound,
policies the server does not offer (with their gain), and the Pareto table behind the choice.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .cost import load_profile
from .server import ServerRules, parse_build
from .server_args import parse_server_args
from .sim import ServerConfig
from .sweep import SweepTask, run_sweep

CTX_CHECKPOINTS = (0, 2, 4, 8, 16, 32, 64, 128)
MIN_STEPS = (0, 256, 1024, 2048, 4096, 8192, 16384)
EVERY_N = (-1, 1024, 2048, 4096, 8192, 16384)
# (-b, -ub) pairs; the first is the server default (spec §8). Bigger -ub means fewer graph computes
# but a bigger compute buffer on the device, so a change must earn more than TOLERANCE.
BATCH_SIZES = ((2048, 512), (2048, 128), (2048, 256), (2048, 1024), (2048, 2048), (4096, 4096), (512, 512))
CACHE_RAM_MIB = (0, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
OBJECTIVES = {"prefill": "prompt_s", "p95": "ttft_p95_ms"}
# Policies outside the server's flags, compared at the recommended flags (upstream PR evidence).
ALTERNATIVES = ("coverage", "user-turn", "every-n:n=4096", "oracle")
TOLERANCE = 0.005    # flag sets within 0.5% of the best objective count as equal (less RAM wins)
MUCH_BETTER = 0.05   # a gain of 5% or more is reported as worth an upstream change


@dataclass(frozen=True)
class Flags:
    """One point of the search: the llama-server flags that change checkpoint behaviour."""

    ctx_checkpoints: int
    cache_ram_mib: float
    min_step: int | None = None      # --checkpoint-min-step (b9310+)
    every_n: int | None = None       # --checkpoint-every-n-tokens (b8218-b9309)
    n_batch: int = 2048              # -b
    n_ubatch: int = 512              # -ub

    def policy_spec(self, version: str) -> str:
        """The simulator policy that behaves like the server with these flags."""
        parts = [f"version={version}"]
        if self.min_step is not None:
            parts.append(f"min_step={self.min_step}")
        if self.every_n is not None:
            parts.append(f"every_n={self.every_n}")
        return "llama-server:" + ",".join(parts)

    def command_line(self, n_slots: int) -> str:
        """The flags as the user types them (long names, spec §8). With more than one slot the
        line says -kvu: the simulator shares one KV cache between the slots (and saves idle slots
        to the prompt cache), which an explicit -np without -kvu turns off (spec §8)."""
        args = ["llama-server", "-np", str(n_slots)] + (["-kvu"] if n_slots > 1 else [])
        args += ["--ctx-checkpoints", str(self.ctx_checkpoints)]
        if self.min_step is not None:
            args += ["--checkpoint-min-step", str(self.min_step)]
        if self.every_n is not None:
            args += ["--checkpoint-every-n-tokens", str(self.every_n)]
        args += ["--cache-ram", _num(self.cache_ram_mib), "-b", str(self.n_batch), "-ub", str(self.n_ubatch)]
        return " ".join(args)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def default_flags(version: str) -> Flags:
    """What the server does with no flags given (spec §8, per build)."""
    rules = ServerRules(parse_build(version))
    return Flags(rules.default_ctx_checkpoints, rules.default_cache_ram_mib,
                 min_step=rules.default_min_step if rules.user_turn_checkpoints else None,
                 every_n=8192 if rules.every_n else None)


def flags_from_command_line(line: str, version: str, base: ServerConfig | None = None) -> tuple[ServerConfig, str]:
    """Parse a printed flag line back into (ServerConfig, policy spec); the build's defaults fill
    the gaps (server_args reads the line, as ``simulate --server-args`` does)."""
    d = default_flags(version)
    a = parse_server_args(line)
    f = Flags(_given(a.ctx_checkpoints, d.ctx_checkpoints), _given(a.cache_ram_mib, d.cache_ram_mib),
              _given(a.min_step, d.min_step), _given(a.every_n, d.every_n),
              _given(a.n_batch, d.n_batch), _given(a.n_ubatch, d.n_ubatch))
    cfg = a.config(dataclasses.replace(base or ServerConfig(), ctx_checkpoints=f.ctx_checkpoints,
                                       cache_ram_mib=f.cache_ram_mib, n_batch=f.n_batch, n_ubatch=f.n_ubatch))
    return cfg, f.policy_spec(version)


def _given(value, default):
    return default if value is None else value


@dataclass(frozen=True)
class Recommendation:
    """The recommended flags, what they achieve, and the evidence behind them."""

    version: str
    objective: str
    n_slots: int
    ram_mib: float | None
    vram_mib: float | None
    ckpt_mib: float
    best: Flags
    command_line: str
    claimed: dict                    # metrics of the recommended flags, summed over the traces
    defaults: dict                   # the same metrics with the server's default flags
    oracle: dict                     # the oracle policy at the recommended flags
    bound: dict                      # proven lower bound (any policy, any flags)
    alternatives: list[dict]         # other policies at the recommended flags
    batch_sizes: list[dict]          # the -b/-ub candidates at the recommended checkpoint flags
    pareto: pd.DataFrame = field(repr=False)
    table: pd.DataFrame = field(repr=False)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """A JSON-ready document (the ``--json`` output)."""
        return {"version": self.version, "objective": self.objective, "n_slots": self.n_slots,
                "ram_mib": self.ram_mib, "vram_mib": self.vram_mib, "ckpt_mib": self.ckpt_mib,
                "flags": dataclasses.asdict(self.best), "command_line": self.command_line,
                "claimed": self.claimed, "defaults": self.defaults, "oracle": self.oracle,
                "bound": self.bound, "alternatives": self.alternatives, "batch_sizes": self.batch_sizes,
                "gain_vs_defaults": gain(self.defaults, self.claimed, self.objective),
                "gap_to_oracle": gain(self.claimed, self.oracle, self.objective),
                "pareto": _records(self.pareto), "notes": self.notes}


def _records(df: pd.DataFrame) -> list[dict]:
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in df.to_dict("records")]


def gain(before: dict, after: dict, objective: str) -> float:
    """Relative reduction of the objective going from ``before`` to ``after`` (0.25 = 25% less)."""
    col = OBJECTIVES[objective]
    b, a = before.get(col), after.get(col)
    if not b or a is None:
        return 0.0
    return (b - a) / b


def ram_needed_mib(f: Flags, n_slots: int, ckpt_mib: float) -> float:
    """Host RAM the flags may take: checkpoints of every slot plus the prompt cache."""
    ram = f.cache_ram_mib if f.cache_ram_mib > 0 else (math.inf if f.cache_ram_mib < 0 else 0.0)
    return n_slots * f.ctx_checkpoints * ckpt_mib + ram


_METRICS = ("prompt_s", "prefill_s", "restore_s", "create_s", "reprocessed_tokens", "ttft_p95_ms",
            "full_reprocess")


def _aggregate(rows: pd.DataFrame) -> dict:
    """Metrics summed over traces (p95 TTFT: the worst trace)."""
    out = {k: float(rows[k].sum()) for k in _METRICS if k in rows and k != "ttft_p95_ms"}
    out["ttft_p95_ms"] = float(rows["ttft_p95_ms"].max())
    out["reprocessed_tokens"] = int(rows["reprocessed_tokens"].sum())
    out["full_reprocess"] = int(rows["full_reprocess"].sum())
    return out


def recommend(trace_paths: list[str | Path], version: str = "latest", profile: str | None = None,
              ram_mib: float | None = None, vram_mib: float | None = None, n_slots: int = 1,
              objective: str = "prefill", base: ServerConfig | None = None, jobs: int | None = None,
              on_done=None, cluster: str | None = None, ctx_grid: tuple[int, ...] = CTX_CHECKPOINTS,
              spacing_grid: tuple[int, ...] | None = None,
              ram_grid: tuple[float, ...] = CACHE_RAM_MIB) -> Recommendation:
    """Search the server's flags on the traces and explain the choice (module docstring)."""
    from .oracle import lower_bound
    from .trace import load_trace
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    build = parse_build(version)
    version = f"b{build}"
    rules = ServerRules(build)
    prof = load_profile(profile)
    traces = [str(p) for p in trace_paths]
    loaded = [load_trace(p) for p in traces]
    max_prompt = max(int(t.n_prompt.max()) for t in loaded if len(t))
    ckpt_mib = prof.ckpt_mib(max_prompt)
    base = dataclasses.replace(base or ServerConfig(), n_slots=n_slots)
    col = OBJECTIVES[objective]
    notes: list[str] = []

    def fits(f: Flags) -> bool:
        return ram_mib is None or ram_needed_mib(f, n_slots, ckpt_mib) <= ram_mib

    spacing = MIN_STEPS if rules.user_turn_checkpoints else (EVERY_N if rules.every_n else (None,))
    mk = (lambda cp, ram, s: Flags(cp, ram, min_step=s)) if rules.user_turn_checkpoints else \
         (lambda cp, ram, s: Flags(cp, ram, every_n=s))
    d = default_flags(version)
    ram0 = d.cache_ram_mib if ram_mib is None else min(d.cache_ram_mib, max(0.0, ram_mib / 2))
    ram0 = max((r for r in CACHE_RAM_MIB if r <= ram0), default=0)
    spacing = tuple(x for x in spacing if spacing_grid is None or x in spacing_grid) or spacing
    # Both with the prompt cache (as much as half the RAM allows, up to the default) and without it.
    stage1 = [mk(cp, float(r), s) for r in dict.fromkeys((ram0, 0)) for cp in ctx_grid for s in spacing]
    stage1 = [f for f in stage1 if fits(f)] or [mk(0, 0.0, spacing[0])]

    def evaluate(flags: list[Flags], policies: tuple[str | None, ...] = (None,)) -> pd.DataFrame:
        tasks, keys = [], []
        for f in flags:
            cfg = dataclasses.replace(base, ctx_checkpoints=f.ctx_checkpoints, cache_ram_mib=f.cache_ram_mib,
                                      n_batch=f.n_batch, n_ubatch=f.n_ubatch)
            for pol in policies:
                for p in traces:
                    tasks.append(SweepTask(p, pol or f.policy_spec(version), cfg, profile))
                    keys.append(f)
        df = run_sweep(tasks, jobs=jobs, on_done=on_done, cluster=cluster)   # rows carry prompt_s (metrics.with_prompt_s)
        df["flags"] = keys
        return df

    def per_flags(df: pd.DataFrame) -> pd.DataFrame:
        rows = []
        for f, g in df.groupby("flags", sort=False):
            agg = _aggregate(g)
            agg.update(dataclasses.asdict(f), ram_mib=ram_needed_mib(f, n_slots, ckpt_mib), flags=f)
            rows.append(agg)
        return pd.DataFrame(rows)

    t1 = per_flags(evaluate(stage1))
    top = t1.sort_values([col, "ram_mib"]).head(3)["flags"].tolist()
    stage2 = [dataclasses.replace(f, cache_ram_mib=float(r)) for f in top for r in ram_grid]
    stage2 = [f for f in dict.fromkeys(stage2) if fits(f) and f not in set(t1["flags"])]
    table = pd.concat([t1, per_flags(evaluate(stage2))], ignore_index=True) if stage2 else t1
    extra = [d] if d not in set(table["flags"]) else []
    if extra:
        table = pd.concat([table, per_flags(evaluate(extra))], ignore_index=True)
    table = table.sort_values([col, "ram_mib", "ctx_checkpoints"]).reset_index(drop=True)
    feasible = table[table["flags"].map(fits)]
    # Within TOLERANCE of the best, the flag set with the least RAM wins: 0.1% faster is not
    # worth doubling the checkpoint memory.
    near = feasible[feasible[col] <= feasible[col].iloc[0] * (1 + TOLERANCE) + 1e-9]
    pick = near.sort_values(["ram_mib", col]).iloc[0]
    best = pick["flags"]
    claimed = _row_dict(pick)
    best, claimed, batch_rows = _search_batch_sizes(best, claimed, col, evaluate, per_flags, prof, notes)
    defaults = _row_dict(table[table["flags"].map(lambda f: f == d)].iloc[0])
    if not fits(d):
        notes.append(f"the server defaults need {ram_needed_mib(d, n_slots, ckpt_mib):,.0f} MiB, "
                     f"more than --ram-mib {ram_mib:,.0f}")

    specs = [f"coverage:version={version},min_step={best.min_step}"
             if spec == "coverage" and best.min_step is not None else spec for spec in ALTERNATIVES]
    alt_df = evaluate([best], policies=tuple(specs))
    alt_rows = []
    for s in specs:
        a = _aggregate(alt_df[alt_df["policy"] == s])
        a.update(policy=s, gain_vs_recommended=gain(claimed, a, objective))
        alt_rows.append(a)
        if s != "oracle" and a["gain_vs_recommended"] >= MUCH_BETTER:
            notes.append(f"{s} would cut {_label(objective).split(' (')[0]} by {a['gain_vs_recommended']:.0%} at the same "
                         f"memory ({claimed[col]:,.1f} -> {a[col]:,.1f}): a policy the server's flags "
                         "cannot express; evidence for an upstream change"
                         + (" (coverage-preserving eviction, PR #22826, not merged)"
                            if s.startswith("coverage") else ""))
    oracle = next(a for a in alt_rows if a["policy"] == "oracle")
    at_best = dataclasses.replace(base, n_batch=best.n_batch, n_ubatch=best.n_ubatch)
    bounds = [lower_bound(t, at_best, prof) for t in loaded]
    bound = {"reprocessed_tokens": sum(b.reprocessed_tokens for b in bounds),
             "prefill_s": sum(b.prefill_s for b in bounds),
             "prompt_s": sum(b.prefill_s for b in bounds),
             "ttft_p95_ms": max(b.ttft_p95_ms for b in bounds)}
    if vram_mib is not None:
        kv = prof.kv_mib_per_ktok * max_prompt / 1000.0 * n_slots
        notes.append(f"--vram-mib: the flags searched live in host RAM (spec §4, §5) and do not change "
                     f"VRAM; the longest prompt's KV for {n_slots} slot(s) is about {kv:,.0f} MiB"
                     + (" which does NOT fit" if kv > vram_mib else " which fits"))
    pareto = pareto_front(table, col)
    return Recommendation(version, objective, n_slots, ram_mib, vram_mib, ckpt_mib, best,
                          best.command_line(n_slots), claimed, defaults,
                          {k: v for k, v in oracle.items() if k != "gain_vs_recommended"}, bound,
                          [a for a in alt_rows if a["policy"] != "oracle"], batch_rows, pareto,
                          table.drop(columns=["flags"]), notes)


def _search_batch_sizes(best: Flags, claimed: dict, col: str, evaluate, per_flags, prof,
                        notes: list[str]) -> tuple[Flags, dict, list[dict]]:
    """Stage 3: -b/-ub at the chosen checkpoint flags. Keep the current pair unless another beats
    it by more than TOLERANCE (ties: the smaller -ub, whose compute buffer is smaller)."""
    cands = [dataclasses.replace(best, n_batch=b, n_ubatch=ub) for b, ub in BATCH_SIZES]
    cands = [f for f in dict.fromkeys(cands) if f != best]
    t = per_flags(evaluate(cands))
    rows = [{"n_batch": best.n_batch, "n_ubatch": best.n_ubatch, col: claimed[col],
             "reprocessed_tokens": claimed["reprocessed_tokens"], "ttft_p95_ms": claimed["ttft_p95_ms"]}]
    rows += [{"n_batch": r["flags"].n_batch, "n_ubatch": r["flags"].n_ubatch, col: r[col],
              "reprocessed_tokens": int(r["reprocessed_tokens"]), "ttft_p95_ms": r["ttft_p95_ms"]}
             for _, r in t.iterrows()]
    rows.sort(key=lambda r: (r["n_ubatch"], r["n_batch"]))
    better = t[t[col] < claimed[col] * (1 - TOLERANCE) - 1e-9]
    if prof.prefill_ms_per_ubatch == 0:
        notes.append(f"-b/-ub: profile {prof.name} has no per-ubatch cost, so they were compared on "
                     "checkpoint placement and per-batch cost only; a GPU usually prefills faster with a "
                     "larger -ub (calibrate --ubatch-sizes measures it)")
    if better.empty:
        return best, claimed, rows
    lo = better[col].min()
    near = better[better[col] <= lo * (1 + TOLERANCE) + 1e-9]
    pick = min((r for _, r in near.iterrows()), key=lambda r: (r["flags"].n_ubatch, r[col]))
    f = pick["flags"]
    notes.append(f"-b {f.n_batch} -ub {f.n_ubatch} instead of -b {best.n_batch} -ub {best.n_ubatch}: "
                 f"{gain(claimed, _row_dict(pick), 'prefill' if col == 'prompt_s' else 'p95'):.1%} less; "
                 f"a larger -ub also takes a larger compute buffer on the device")
    return f, _row_dict(pick), rows


def _label(objective: str) -> str:
    """The objective as tables and sentences name it (metrics.LABELS): prompt time is prefill +
    checkpoint restore + creation (``prompt_s``), never prefill alone (``prefill_s``)."""
    return "prompt time (prefill + restore + create)" if objective == "prefill" else "TTFT p95"


def _row_dict(row: pd.Series) -> dict:
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()
            if k in _METRICS or k == "ram_mib"}


def pareto_front(table: pd.DataFrame, col: str) -> pd.DataFrame:
    """Flag sets no other set beats on both memory and the objective, by increasing memory."""
    df = table.sort_values(["ram_mib", col])
    keep, best = [], math.inf
    for i, r in df.iterrows():
        if r[col] < best - 1e-9:
            keep.append(i)
            best = r[col]
    cols = ["ctx_checkpoints", "min_step", "every_n", "cache_ram_mib", "ram_mib", col,
            "reprocessed_tokens", "ttft_p95_ms"]
    cols = list(dict.fromkeys(c for c in cols if c in df.columns))
    return df.loc[keep, cols].reset_index(drop=True)


def explain(rec: Recommendation) -> list[str]:
    """Sentences that say what to set and why."""
    from .metrics import format_ms
    col = OBJECTIVES[rec.objective]

    def v(x: float) -> str:
        return f"{x:,.1f} s" if col == "prompt_s" else format_ms(x)

    g = gain(rec.defaults, rec.claimed, rec.objective)
    gap = gain(rec.claimed, rec.oracle, rec.objective)
    lines = [f"Set: {rec.command_line}",
             f"Expected {_label(rec.objective)}: {v(rec.claimed[col])} "
             f"(server defaults: {v(rec.defaults[col])}; {g:.1%} less), "
             f"RAM for checkpoints + prompt cache <= {rec.claimed['ram_mib']:,.0f} MiB "
             f"({rec.ckpt_mib:,.1f} MiB per checkpoint).",
             f"Offline optimum at these flags (oracle policy): {v(rec.oracle[col])} "
             f"({gap:.1%} below the recommendation); proven lower bound on prefill alone: "
             f"{rec.bound['prefill_s']:,.1f} s, {rec.bound['reprocessed_tokens']:,} tokens re-processed "
             f"(recommendation: {rec.claimed['reprocessed_tokens']:,})."]
    return lines + rec.notes


def recommend_over_slots(trace_paths: list[str | Path], slot_counts: list[int],
                         **kwargs) -> tuple[Recommendation, list[dict]]:
    """Run ``recommend`` for each ``-np`` value and keep the best (ties within 0.5%: less RAM).

    More slots keep more conversations resident (less re-processing, less queueing) but multiply
    the checkpoint memory, so the RAM limit decides how far that pays (spec §2.1, §4).
    """
    if not slot_counts or any(n < 1 for n in slot_counts):
        raise ValueError("--n-slots needs values >= 1")
    objective = kwargs.get("objective", "prefill")
    col = OBJECTIVES.get(objective, "prompt_s")
    recs = [recommend(trace_paths, n_slots=n, **kwargs) for n in dict.fromkeys(slot_counts)]
    rows = [{"n_slots": r.n_slots, "command_line": r.command_line, col: r.claimed[col],
             "ttft_p95_ms": r.claimed["ttft_p95_ms"], "reprocessed_tokens": r.claimed["reprocessed_tokens"],
             "ram_mib": ram_needed_mib(r.best, r.n_slots, r.ckpt_mib)} for r in recs]
    best_val = min(r.claimed[col] for r in recs)
    near = [(row["ram_mib"], row["n_slots"], r) for row, r in zip(rows, recs)
            if r.claimed[col] <= best_val * (1 + TOLERANCE)]
    return min(near, key=lambda x: (x[0], x[1]))[2], rows
