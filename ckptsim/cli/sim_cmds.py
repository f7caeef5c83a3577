"""``ckptsim simulate``, ``compare`` and ``demo``."""
from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ._app import (UserError, app, check_at_least, check_batches, check_cache_ram, check_policies,
                   check_profile, cli_errors, err, file_backend, out, print_json, progress)

DEFAULT_POLICIES = ["none", "fifo", "per-batch", "every-n:n=4096", "user-turn", "coverage",
                    "llama-server:version=b9985", "llama-server"]

ProfileOpt = typer.Option(None, "--profile", help="Cost profile: a shipped name or a JSON file.")
SlotsOpt = typer.Option(1, "--n-slots", "-np", help="Server slots (-np).")
CkptOpt = typer.Option(32, "--ctx-checkpoints", "-ctxcp", help="Checkpoints kept per slot.")
BatchOpt = typer.Option(2048, "--batch", "-b", help="Logical batch size (-b).")
UbatchOpt = typer.Option(512, "--ubatch", "-ub", help="Physical batch size (-ub).")
RamOpt = typer.Option(8192.0, "--cache-ram", help="Host prompt cache MiB (0 off, -1 unlimited).")
BudgetOpt = typer.Option(None, "--ckpt-budget-mib", help="Host RAM cap for checkpoints per slot, MiB.")
JsonOpt = typer.Option(False, "--json", help="Print one JSON document and nothing else.")
QueueOpt = typer.Option("arrival", "--queue", help="Service order: arrival (every policy sees the "
                        "same interleaving) or ready (the server's task queue: a request waiting for "
                        "its session's answer does not hold its place).")


def check_server_flags(batch: int, ubatch: int, cache_ram: float, budget_mib: float | None,
                       profile: str | None) -> None:
    """Refuse bad shared flags before any trace is read or any progress bar is drawn."""
    check_cache_ram(cache_ram)
    check_at_least(budget_mib, "--ckpt-budget-mib", 0)
    check_batches(batch, ubatch)
    check_profile(profile)


def server_config(n_slots: int, ctx_checkpoints: int, batch: int, ubatch: int, cache_ram: float,
                  budget_mib: float | None, queue: str = "arrival"):
    """Build a ServerConfig from the shared CLI flags."""
    from ..sim import ServerConfig
    return ServerConfig(n_slots=n_slots, ctx_checkpoints=ctx_checkpoints, n_batch=batch,
                        n_ubatch=ubatch, cache_ram_mib=cache_ram,
                        ckpt_budget_mib=math.inf if budget_mib is None else budget_mib,
                        arrival_order=arrival_order(queue))


def arrival_order(queue: str) -> bool:
    """ServerConfig.arrival_order from the --queue flag."""
    if queue not in ("arrival", "ready"):
        raise UserError(f"--queue must be arrival or ready, got {queue!r}")
    return queue == "arrival"


def run_policies(trace, policies: list[str], config, profile, show_progress: bool):
    """Simulate each policy on one trace, with a progress bar over all requests."""
    from ..sim import simulate
    check_policies(policies)  # fail on a bad spec before any work starts
    runs = []
    with progress(enabled=show_progress) as bar:
        task = bar.add_task(f"simulating {trace.name or 'trace'}", total=len(trace) * len(policies))
        for spec in policies:
            runs.append(simulate(trace, spec, config, profile,
                                 on_progress=lambda n: bar.advance(task, n)))
    return runs


def _summary_table(summaries: list[dict], title: str) -> Table:
    t = Table(title=title, title_justify="left")
    cols = [("policy", "policy"), ("reprocessed_tokens", "re-processed tok"),
            ("reuse_ratio", "reuse"), ("prefill_s", "prefill s"), ("ttft_p95_ms", "TTFT p95"),
            ("full_reprocess", "full re-proc"), ("restores", "restores"), ("created", "created"),
            ("peak_ckpt_mib", "peak ckpt MiB")]
    for _, label in cols:
        t.add_column(label, justify="left" if label == "policy" else "right")
    for s in summaries:
        t.add_row(*[_fmt(k, s[k]) for k, _ in cols])
    return t


def _fmt(key: str, v) -> str:
    if key == "reuse_ratio":
        return f"{v:.1%}"
    if key.endswith("_ms"):
        from ..metrics import format_ms
        return format_ms(v)
    if isinstance(v, float):
        return f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


@app.command()
@cli_errors
def simulate(trace_path: Path = typer.Argument(..., metavar="TRACE", help="A ckptsim trace (.jsonl)."),
             policy: str = typer.Option("llama-server", "--policy", "-p", help="Policy spec."),
             profile: Optional[str] = ProfileOpt, n_slots: int = SlotsOpt,
             ctx_checkpoints: int = CkptOpt, batch: int = BatchOpt, ubatch: int = UbatchOpt,
             cache_ram: float = RamOpt, ckpt_budget_mib: Optional[float] = BudgetOpt, queue: str = QueueOpt,
             per_request: Optional[Path] = typer.Option(None, "--per-request", help="Write per-request CSV here."),
             as_json: bool = JsonOpt) -> None:
    """Replay a trace against one policy and print the run's metrics."""
    from ..trace import load_trace
    check_server_flags(batch, ubatch, cache_ram, ckpt_budget_mib, profile)
    check_policies([policy])
    trace = load_trace(trace_path)
    config = server_config(n_slots, ctx_checkpoints, batch, ubatch, cache_ram, ckpt_budget_mib, queue)
    (run,) = run_policies(trace, [policy], config, profile, show_progress=not as_json)
    s = run.summary()
    if per_request is not None:
        from ..metrics import results_frame
        _refuse_overwrite(per_request, False)
        results_frame(run).to_csv(per_request, index=False)
    if as_json:
        print_json({"summary": s, "config": _config_json(config)})
        return
    out.print(_summary_table([s], f"{trace_path.name}: {run.policy} (profile {run.profile})"))


def _config_json(config) -> dict:
    from dataclasses import asdict
    d = asdict(config)
    return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in d.items()}


def _refuse_overwrite(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass --force to overwrite it")


@app.command()
@cli_errors
def compare(trace_path: Path = typer.Argument(..., metavar="TRACE", help="A ckptsim trace (.jsonl)."),
            policies: Optional[str] = typer.Option(None, "--policies", help="Comma-separated specs "
                                                   "(use ';' if a spec has commas)."),
            profile: Optional[str] = ProfileOpt, n_slots: int = SlotsOpt,
            ctx_checkpoints: int = CkptOpt, batch: int = BatchOpt, ubatch: int = UbatchOpt,
            cache_ram: float = RamOpt, ckpt_budget_mib: Optional[float] = BudgetOpt, queue: str = QueueOpt,
            out_dir: Optional[Path] = typer.Option(None, "--out", help="Write compare.csv and compare.png here."),
            force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
            as_json: bool = JsonOpt) -> None:
    """Replay a trace against several policies; print a table, write a CSV and a PNG."""
    from ..trace import load_trace
    check_server_flags(batch, ubatch, cache_ram, ckpt_budget_mib, profile)
    if policies:
        check_policies(split_policies(policies))
    trace = load_trace(trace_path)
    specs = split_policies(policies) if policies else default_policies(trace.header.meta.get("build"))
    config = server_config(n_slots, ctx_checkpoints, batch, ubatch, cache_ram, ckpt_budget_mib, queue)
    runs = run_policies(trace, specs, config, profile, show_progress=not as_json)
    summaries = [r.summary() for r in runs]
    from ..oracle import lower_bound
    bound = lower_bound(trace, config, profile).summary()
    written = []
    if out_dir is not None:
        written = write_compare(runs, out_dir, force, title=f"{trace_path.name} ({runs[0].profile})",
                                bound=bound)
    if as_json:
        print_json({"trace": str(trace_path), "config": _config_json(config), "policies": summaries,
                    "lower_bound": bound, "written": [str(p) for p in written]})
        return
    table = _summary_table(summaries, f"{trace_path.name}: {len(trace)} requests, profile {runs[0].profile}, "
                                      f"-np {n_slots} -ctxcp {ctx_checkpoints} -b {batch} -ub {ubatch}")
    # The proven bound brackets every row from below (docs/oracle.md, theorem 1).
    table.add_row("lower bound (any policy)", f"{bound['reprocessed_tokens']:,}", "",
                  f"{bound['prefill_s']:,.1f}", _fmt("ttft_p95_ms", bound["ttft_p95_ms"]), "", "", "", "",
                  style="dim")
    out.print(table)
    out.print(explain(summaries))
    for p in written:
        err.print(f"wrote {p}")


def split_policies(text: str) -> list[str]:
    """Split a --policies value: ';' separates specs when present, else ','. ."""
    sep = ";" if ";" in text else ","
    if sep == ",":
        # keep "name:a=1,b=2" together: a piece with '=' but no ':' continues the previous spec
        parts: list[str] = []
        for piece in text.split(","):
            piece = piece.strip()
            if parts and "=" in piece and ":" not in piece.split("+")[0]:
                parts[-1] += "," + piece
            elif piece:
                parts.append(piece)
        return parts
    return [p.strip() for p in text.split(sep) if p.strip()]


def default_policies(log_build: int | None = None) -> list[str]:
    """Policies compared when none are named; a trace parsed from a log adds the server build
    that wrote it, so the first row to read is "what my server did"."""
    specs = list(DEFAULT_POLICIES)
    if isinstance(log_build, int) and log_build > 0:
        specs.insert(specs.index("llama-server"), f"llama-server:version=b{log_build}")
    return specs + ["oracle"]


def explain(summaries: list[dict]) -> str:
    """A few sentences that say what the table shows."""
    by = {s["policy"]: s for s in summaries}
    ranked = sorted(summaries, key=lambda s: s["prefill_s"])
    best, worst = ranked[0], ranked[-1]
    lines = [f"Best: {best['policy']} ({best['reprocessed_tokens']:,} tokens re-processed, "
             f"{best['prefill_s']:.1f} s prefill); worst: {worst['policy']} "
             f"({worst['reprocessed_tokens']:,}, {worst['prefill_s']:.1f} s)."]
    server = next((s for p, s in by.items() if p.startswith("llama-server:version=b1")), None)
    if server and best is not server and server["prefill_s"] > 0:
        gain = server["prefill_s"] / max(best["prefill_s"], 1e-9)
        lines.append(f"The current llama-server ({server['policy']}) needs {gain:.2f}x the prefill time of "
                     f"{best['policy']}; it lost {server['lost_tokens']:,} tokens of common prefix "
                     f"for want of a checkpoint.")
    return "\n".join(lines)


def write_compare(runs, out_dir: Path, force: bool, title: str, bound: dict | None = None) -> list[Path]:
    """Write compare.csv, compare.png and config.json into ``out_dir``."""
    from ..metrics import summary_frame
    file_backend()
    from ..plots import compare_bars
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "compare.csv", out_dir / "compare.png", out_dir / "config.json"]
    for p in paths:
        _refuse_overwrite(p, force)
    df = summary_frame(runs)
    df.to_csv(paths[0], index=False)
    fig = compare_bars(df, title, bound)
    fig.savefig(paths[1], dpi=110)
    paths[2].write_text(json.dumps({"config": _config_json(runs[0].config),
                                    "policies": [r.policy for r in runs], "profile": runs[0].profile,
                                    "trace": runs[0].trace_name}, indent=2))
    return paths


def demo_trace_path() -> Path:
    """The example trace shipped inside the package."""
    return Path(str(resources.files("ckptsim") / "data" / "demo.jsonl"))


@app.command()
@cli_errors
def demo(out_dir: Path = typer.Option(Path("reports/demo"), "--out", help="Where to write the outputs."),
         force: bool = typer.Option(False, "--force", help="Overwrite an earlier run in the output folder."),
         as_json: bool = JsonOpt) -> None:
    """Compare every policy on the bundled example trace (a coding agent that edits its context)."""
    p = demo_trace_path()
    if not p.exists():
        raise UserError(f"the bundled demo trace is missing ({p}); reinstall ckptsim")
    if not force and out_dir.is_dir() and any(out_dir.iterdir()):
        # the quick start may be run again: keep the earlier outputs and write beside them
        i = 2
        while (nxt := out_dir.with_name(f"{out_dir.name}-{i}")).exists() and any(nxt.iterdir()):
            i += 1
        err.print(f"{out_dir} holds an earlier run; writing to {nxt} instead (--force overwrites)")
        out_dir = nxt
    compare(trace_path=p, policies=None, profile=None, n_slots=1, ctx_checkpoints=32, batch=2048,
            ubatch=512, cache_ram=8192.0, ckpt_budget_mib=None, queue="arrival", out_dir=out_dir, force=True,
            as_json=as_json)


@app.command("policies")
@cli_errors
def list_policies(as_json: bool = JsonOpt) -> None:
    """List the registered policies, their parameters and sources."""
    import dataclasses

    from ..policies import POLICIES
    rows = []
    for name, cls in sorted(POLICIES.items()):
        params = {f.name: f.default for f in dataclasses.fields(cls) if f.init}
        rows.append({"name": name, "params": params, "source": cls.source,
                     "doc": (cls.__doc__ or "").strip().splitlines()[0]})
    rows.append({"name": "oracle", "params": {}, "source": "ckptsim", "doc": "offline optimum (bound)"})
    if as_json:
        print_json(rows)
        return
    t = Table(title="policies (combine placement+eviction with '+', e.g. every-n:n=2048+coverage)")
    for c in ("name", "parameters", "what it does"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["name"], ", ".join(f"{k}={v}" for k, v in r["params"].items()), r["doc"])
    out.print(t)
