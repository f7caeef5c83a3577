"""``ckptsim sweep``, ``recommend`` and ``report``."""
from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from ._app import (UserError, app, check_at_least, check_batches, check_cache_ram, check_jobs,
                   check_policies, check_profile, cli_errors, err, file_backend, int_list, out,
                   print_json, progress)
from ._tables import Col, show_table
from .sim_cmds import QueueOpt, WideOpt, _col, arrival_order, split_policies

TracesArg = typer.Argument(..., metavar="TRACE...", help="ckptsim traces (.jsonl).")
JsonOpt = typer.Option(False, "--json", help="Print one JSON document and nothing else.")
ProfileOpt = typer.Option(None, "--profile", help="Cost profile: a shipped name or a JSON file.")
JobsOpt = typer.Option(None, "--jobs", "-j", help="Worker processes (default: all cores).")
ClusterOpt = typer.Option(None, "--cluster", metavar="ADDRESS",
                          help="Run the simulations on the Dask cluster whose scheduler is at ADDRESS "
                               "(tcp://host:port; needs ckptsim[cluster]); default: local processes.")


@contextmanager
def _cluster_errors():
    """A cluster that cannot be used is a bad --cluster value: one line, exit 2."""
    from ..cluster import ClusterError
    try:
        yield
    except ClusterError as e:
        raise UserError(str(e)) from None


def _check_cluster(address: str | None) -> None:
    if address is not None:
        from ..cluster import check_address
        with _cluster_errors():
            check_address(address)


def _floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag}: expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise UserError(f"{flag}: expected at least one number, got {text!r}")
    return values


def _check_traces(paths: list[Path]) -> None:
    """Fail here, with the file and line, before worker processes would trip over a bad trace."""
    from ..trace import iter_trace
    for p in paths:
        if not p.exists():
            raise UserError(f"{p}: no such file")
        _, reqs = iter_trace(p)
        for _ in reqs:      # validates every line; the trace itself is loaded by the workers
            pass


def _with_bar(total: int, label: str, enabled: bool):
    """A progress bar and the callback that advances it by one finished simulation."""
    bar = progress(enabled=enabled)
    task = bar.add_task(label, total=total)
    return bar, (lambda _row: bar.advance(task, 1))


@app.command()
@cli_errors
def sweep(traces: List[Path] = TracesArg,
          policy: List[str] = typer.Option(["llama-server"], "--policy", "-p",
                                           help="Policy spec; repeat, or separate with ';'."),
          ctx_checkpoints: str = typer.Option("4,8,16,32,64,128", "--ctx-checkpoints", "-ctxcp",
                                              help="Comma-separated checkpoint counts per slot."),
          min_step: Optional[str] = typer.Option(None, "--checkpoint-min-step", "-cms", "--min-step",
                                                 help="Comma-separated --checkpoint-min-step values "
                                                      "(llama-server, coverage)."),
          cache_ram: str = typer.Option("8192", "--cache-ram", "-cram", help="Comma-separated prompt-cache MiB."),
          n_slots: str = typer.Option("1", "--n-slots", "-np", "--parallel", help="Comma-separated slot counts."),
          batch: int = typer.Option(2048, "--batch-size", "-b", "--batch", help="Logical batch size (-b)."),
          ubatch: int = typer.Option(512, "--ubatch-size", "-ub", "--ubatch", help="Physical batch size (-ub)."),
          profile: Optional[str] = ProfileOpt, jobs: Optional[int] = JobsOpt,
          cluster: Optional[str] = ClusterOpt,
          output: Path = typer.Option(..., "-o", "--output", help="OUT.csv or OUT.parquet."),
          force: bool = typer.Option(False, "--force", help="Overwrite OUT."),
          queue: str = QueueOpt, wide: bool = WideOpt, as_json: bool = JsonOpt) -> None:
    """Simulate traces x policies x flags on all cores (or a Dask cluster); write one tidy table
    (one row per run)."""
    from ..sim import ServerConfig
    from ..sweep import expand, run_sweep, write_table
    check_jobs(jobs)
    _check_cluster(cluster)
    check_batches(batch, ubatch)
    grid = int_list(ctx_checkpoints, "--ctx-checkpoints")
    rams = _floats(cache_ram, "--cache-ram")
    for r in rams:
        check_cache_ram(r)
    check_profile(profile)
    specs = [s for p in policy for s in split_policies(p)]
    check_policies(specs)
    _check_traces(traces)
    if output.suffix not in (".csv", ".parquet"):
        raise UserError(f"{output}: output must end in .csv or .parquet")
    if output.exists() and not force:
        raise FileExistsError(f"{output} exists; pass --force to overwrite it")
    steps = int_list(min_step, "--min-step") if min_step else [None]
    tasks = expand([str(t) for t in traces], specs, grid, steps, rams, int_list(n_slots, "--n-slots"),
                   ServerConfig(n_batch=batch, n_ubatch=ubatch, arrival_order=arrival_order(queue)), profile)
    bar, done = _with_bar(len(tasks), f"sweep ({len(tasks)} runs)", not as_json)
    with bar, _cluster_errors():
        df = run_sweep(tasks, jobs=jobs, on_done=done, cluster=cluster)
    write_table(df, output, force=True)
    if as_json:
        print_json({"output": str(output), "rows": len(df), "columns": list(df.columns)})
        return
    show_table(f"{len(df)} runs -> {output}", _sweep_columns(df), _sweep_rows(df.head(40)), wide=wide)
    if len(df) > 40:
        err.print(f"(first 40 of {len(df)} rows shown; all in {output})")


def _sweep_columns(df) -> list[Col]:
    """The swept flags (those with more than one value) and the main metrics."""
    varies = {c: df[c].nunique(dropna=False) > 1 for c in ("trace", "min_step", "cache_ram_mib", "n_slots")
              if c in df.columns}
    cols = [Col("trace", "trace", "trace" if varies.get("trace") else None, text=True),
            Col("policy", "policy", "policy", text=True),
            Col("ctx_checkpoints", "--ctx-checkpoints", "ctxcp", legend="--ctx-checkpoints")]
    if varies.get("min_step"):
        cols.append(Col("min_step", "--checkpoint-min-step", "cms", legend="--checkpoint-min-step"))
    if varies.get("cache_ram_mib"):
        cols.append(Col("cache_ram_mib", "--cache-ram", "cram", legend="--cache-ram"))
    if varies.get("n_slots"):
        cols.append(Col("n_slots", "-np", "-np"))
    return cols + [_col("reprocessed_tokens"), _col("prefill_s"), _col("prompt_s", compact=False),
                   _col("ttft_p95_ms")]


def _sweep_rows(df) -> list[dict]:
    from ..metrics import with_prompt_s
    return [{k: _cell(v, k) for k, v in with_prompt_s(r).items()} for r in df.to_dict("records")]


@app.command()
@cli_errors
def recommend(traces: List[Path] = TracesArg,
              version: str = typer.Option("latest", "--version", help="Your llama-server build, e.g. b10573."),
              profile: Optional[str] = ProfileOpt,
              ram_mib: Optional[float] = typer.Option(None, "--ram-mib", help="Host RAM you can give to "
                                                      "checkpoints + prompt cache, MiB."),
              vram_mib: Optional[float] = typer.Option(None, "--vram-mib", help="GPU memory, MiB (checked "
                                                       "against the KV of the longest prompt)."),
              n_slots: str = typer.Option("1", "--n-slots", "-np", help="Slots (-np); a comma list "
                                          "(e.g. 1,2,4) searches them too."),
              objective: str = typer.Option("prefill", "--objective", help="prefill (total prompt time: prefill "
                                            "+ checkpoint restore + creation) or p95 (95th percentile TTFT)."),
              jobs: Optional[int] = JobsOpt, cluster: Optional[str] = ClusterOpt, queue: str = QueueOpt,
              wide: bool = WideOpt, as_json: bool = JsonOpt) -> None:
    """The llama-server flags that minimise prompt time (prefill + checkpoint restore + creation)
    under your memory limits, with the evidence."""
    from ..recommend import explain, recommend_over_slots
    from ..sim import ServerConfig
    check_jobs(jobs)
    _check_cluster(cluster)
    if ram_mib is not None and ram_mib <= 0:
        raise UserError(f"--ram-mib {ram_mib:g}: must be > 0 (host RAM for checkpoints and the "
                        "prompt cache, MiB; leave it out for no limit)")
    check_at_least(vram_mib, "--vram-mib", 0)
    check_profile(profile)
    _check_traces(traces)
    slot_counts = int_list(n_slots, "--n-slots")
    bar = progress(enabled=not as_json)
    task = bar.add_task("searching flags (simulations done)", total=None)
    with bar, _cluster_errors():
        rec, by_slots = recommend_over_slots([str(t) for t in traces], slot_counts, version=version,
                                             profile=profile, ram_mib=ram_mib, vram_mib=vram_mib,
                                             objective=objective, jobs=jobs, cluster=cluster,
                                             base=ServerConfig(arrival_order=arrival_order(queue)),
                                             on_done=lambda _r: bar.advance(task, 1))
    rerun = rerun_lines(traces, rec)
    if as_json:
        print_json({**rec.to_json(), "by_n_slots": by_slots, "rerun": rerun})
        return
    col = "prompt_s" if objective == "prefill" else "ttft_p95_ms"
    if len(by_slots) > 1:
        show_table("Best flags per slot count (-np)",
                   [Col("n_slots", "-np", "-np"), Col("command_line", "llama-server flags", "flags", text=True),
                    _col(col), _col("ttft_p95_ms", compact=col != "ttft_p95_ms"), _col("ram_mib")],
                   [{k: _cell(v, k) for k, v in row.items()} for row in by_slots], wide=wide)
    lines = explain(rec)
    # soft_wrap: the terminal wraps the flag line, so a copy of it stays one line
    out.print(f"[bold]{escape(lines[0])}[/]", highlight=False, soft_wrap=True)
    for line in lines[1:]:
        out.print(line, highlight=False, markup=False)
    for line in rerun:
        out.print(f"Re-run: {line}", highlight=False, markup=False, soft_wrap=True)
    flag_cols = [Col("ctx_checkpoints", "--ctx-checkpoints", "ctxcp", legend="--ctx-checkpoints"),
                 Col("min_step", "--checkpoint-min-step", "cms", legend="--checkpoint-min-step"),
                 Col("every_n", "--checkpoint-every-n-tokens", "cpent", legend="--checkpoint-every-n-tokens"),
                 Col("cache_ram_mib", "--cache-ram", "cram", legend="--cache-ram")]
    # a build has either spacing flag, not both: the other column would be all '-'
    cols = [c for c in flag_cols if c.key in rec.pareto.columns and rec.pareto[c.key].notna().any()]
    cols += [_col("ram_mib"), _col(col), _col("reprocessed_tokens", compact=False)]
    if col != "ttft_p95_ms":
        cols.append(_col("ttft_p95_ms"))
    show_table("Pareto table: memory vs time (no other flag set is better on both)", cols,
               [{c.key: _cell(r[c.key], c.key) for c in cols} for _, r in rec.pareto.iterrows()], wide=wide)
    bcols = [Col("n_batch", "-b", "-b"), Col("n_ubatch", "-ub", "-ub"), _col(col), _col("reprocessed_tokens")]
    if col != "ttft_p95_ms":
        bcols.append(_col("ttft_p95_ms"))
    show_table("-b/-ub at the recommended checkpoint flags", bcols,
               [{c.key: _cell(r[c.key], c.key) for c in bcols} for r in rec.batch_sizes], wide=wide)
    acols = [Col("policy", "policy", "policy", text=True), _col(col), _col("reprocessed_tokens"),
             Col("gain", "vs recommended", "vs rec", legend="change against the recommendation")]
    arows = []
    for r in rec.alternatives + [dict(rec.oracle, gain_vs_recommended=None)]:
        g = r.get("gain_vs_recommended")
        arows.append({"policy": str(r["policy"]), col: _cell(r[col], col),
                      "reprocessed_tokens": _cell(r["reprocessed_tokens"], "reprocessed_tokens"),
                      "gain": "" if g is None else f"{-g:+.1%}"})
    show_table("Other policies at the recommended flags", acols, arows, wide=wide)


def rerun_lines(traces: list[Path], rec) -> list[str]:
    """The simulate command that re-runs the recommendation on each trace (its numbers are the
    claim's, summed over the traces)."""
    import shlex
    flags = rec.command_line.removeprefix("llama-server ")
    return [f"ckptsim simulate {shlex.quote(str(t))} --policy llama-server:version={rec.version} "
            f"--server-args {shlex.quote(flags)}" for t in traces]


def _cell(v, key: str = "") -> str:
    """A table cell; durations in ms (``key`` ends in ``_ms``) in human units (metrics.format_ms)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if key == "reuse_ratio":
        return f"{v:.1%}"
    if key.endswith("_ms"):
        from ..metrics import format_ms
        return format_ms(float(v))
    if isinstance(v, float):
        return f"{v:,.1f}" if not v.is_integer() else f"{v:,.0f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


@app.command()
@cli_errors
def report(traces: List[Path] = TracesArg,
           out_dir: Path = typer.Option(..., "--out", help="Directory for the report (reports/NAME/)."),
           policies: Optional[str] = typer.Option(None, "--policies", help="Policy specs ("
                                                  "';' or ',' separated); default: a representative set."),
           ctx_checkpoints: str = typer.Option("4,8,16,32,64,128", "--ctx-checkpoints", "-ctxcp",
                                               help="Counts for the cost curves."),
           at: int = typer.Option(32, "--at", help="--ctx-checkpoints of the detailed runs (CDF, timeline)."),
           n_slots: int = typer.Option(1, "--n-slots", "-np"),
           cache_ram: float = typer.Option(8192.0, "--cache-ram"),
           profile: Optional[str] = ProfileOpt, jobs: Optional[int] = JobsOpt,
           force: bool = typer.Option(False, "--force", help="Overwrite an existing report directory."),
           memory_include_none: bool = typer.Option(False, "--memory-include-none",
                                                    help="Give `none` a row in the memory-over-time figure "
                                                         "(left out: it keeps no checkpoints)."),
           as_json: bool = JsonOpt) -> None:
    """Write an HTML + markdown report with cost curves, TTFT CDF, slot timelines and memory plots."""
    from ..report import DEFAULT_POLICIES, ReportSpec, build_report, check_out_dir
    from ..sim import ServerConfig
    check_jobs(jobs)
    check_cache_ram(cache_ram)
    check_profile(profile)
    specs = tuple(split_policies(policies)) if policies else DEFAULT_POLICIES
    check_policies(list(specs))
    grid = tuple(int_list(ctx_checkpoints, "--ctx-checkpoints"))
    _check_traces(traces)
    check_out_dir(out_dir, force)
    spec = ReportSpec(tuple(str(t) for t in traces), specs, grid,
                      ServerConfig(n_slots=n_slots, ctx_checkpoints=at, cache_ram_mib=cache_ram), profile,
                      timeline_policies=tuple(p for p in ("llama-server", "oracle")),
                      memory_include_none=memory_include_none)
    file_backend()
    bar, done = _with_bar(len(traces) * len(specs) * len(grid), "report: sweep", not as_json)
    with bar:
        written = build_report(spec, out_dir, force=force, jobs=jobs, on_done=done)
    if as_json:
        print_json({"out": str(out_dir), "files": [str(p) for p in written]})
        return
    out.print(f"wrote {out_dir / 'report.html'} and {out_dir / 'report.md'} ({len(written)} files)")
