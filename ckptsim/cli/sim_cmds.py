"""``ckptsim simulate``, ``compare`` and ``demo``."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ._app import (UserError, app, check_at_least, check_batches, check_cache_ram, check_jobs, check_policies,
                   check_profile, cli_errors, err, file_backend, out, print_json, progress)
from ._tables import Col, show_table

DEFAULT_POLICIES = ["none", "fifo", "per-batch", "every-n:n=4096", "user-turn", "coverage",
                    "llama-server:version=b9985", "llama-server", "oracle"]

ProfileOpt = typer.Option(None, "--profile", help="Cost profile: a shipped name or a JSON file.")
# llama-server's own flag names (spec §8), so a flag line pasted from `recommend` or from a real
# command runs as it reads. Defaults are None so a flag typed here can win over --server-args.
SlotsOpt = typer.Option(None, "--n-slots", "-np", "--parallel", help="Server slots (-np; default 1).")
CkptOpt = typer.Option(None, "--ctx-checkpoints", "-ctxcp", "--swa-checkpoints",
                       help="Checkpoints kept per slot (default 32).")
MinStepOpt = typer.Option(None, "--checkpoint-min-step", "-cms",
                          help="Minimum tokens between checkpoints (b9310+), for the llama-server and "
                               "coverage policies (default: the build's).")
EveryNOpt = typer.Option(None, "--checkpoint-every-n-tokens", "-cpent",
                         help="A checkpoint every N tokens (b8218-b9309 builds; -1 off).")
BatchOpt = typer.Option(None, "--batch-size", "-b", "--batch", help="Logical batch size (-b; default 2048).")
UbatchOpt = typer.Option(None, "--ubatch-size", "-ub", "--ubatch", help="Physical batch size (-ub; default 512).")
RamOpt = typer.Option(None, "--cache-ram", "-cram",
                      help="Host prompt cache MiB (0 off, -1 unlimited; default 8192).")
KvuOpt = typer.Option(None, "--kv-unified/--no-kv-unified", "-kvu/-no-kvu",
                      help="Slots share one KV cache (the simulator's default; llama-server's with -np auto).")
ServerArgsOpt = typer.Option(None, "--server-args", metavar="FLAGS",
                             help="llama-server's flags in one string, e.g. \"-np 2 --ctx-checkpoints 16 "
                                  "-ngl 99\" (a recommend line works whole); flags that do not change "
                                  "checkpoints are accepted and listed as ignored. A flag typed on its "
                                  "own wins over the same flag in it.")
BudgetOpt = typer.Option(None, "--ckpt-budget-mib", help="Host RAM cap for checkpoints per slot, MiB.")
JsonOpt = typer.Option(False, "--json", help="Print one JSON document and nothing else.")
WideOpt = typer.Option(False, "--wide", help="Every column at full width, even in a narrow terminal "
                                             "(piped output always gets them).")
QueueOpt = typer.Option("arrival", "--queue", help="Service order: arrival (every policy sees the "
                        "same interleaving) or ready (the server's task queue: a request waiting for "
                        "its session's answer does not hold its place).")


@dataclass(frozen=True)
class Server:
    """What the server flags resolved to: the config, the policy specs with the spacing flags
    applied, and the flags given that the simulation does not use."""

    config: object                       # sim.ServerConfig
    specs: list[str]
    args: object                         # server_args.ServerArgs
    ignored: list[str]

    def flag_line(self) -> str:
        """The flags the runs used, as llama-server spells them."""
        c = self.config
        parts = [f"-np {c.n_slots}", f"--ctx-checkpoints {c.ctx_checkpoints}"]
        if self.args.min_step is not None:
            parts.append(f"--checkpoint-min-step {self.args.min_step}")
        if self.args.every_n is not None:
            parts.append(f"--checkpoint-every-n-tokens {self.args.every_n}")
        parts += [f"--cache-ram {c.cache_ram_mib:g}", f"-b {c.n_batch}", f"-ub {c.n_ubatch}"]
        return " ".join(parts)


def resolve_server(*, server_args: str | None = None, n_slots: int | None = None,
                   ctx_checkpoints: int | None = None, min_step: int | None = None,
                   every_n: int | None = None, batch: int | None = None, ubatch: int | None = None,
                   cache_ram: float | None = None, kv_unified: bool | None = None,
                   budget_mib: float | None = None, queue: str = "arrival",
                   profile: str | None = None) -> Server:
    """The flags typed on their own over those in ``--server-args``, over the simulator's
    defaults; every bad value is refused here, before any trace is read or bar drawn."""
    from ..server_args import ServerArgs, parse_server_args
    from ..sim import ServerConfig
    if n_slots == -1:
        # llama-server's -np -1 (auto, spec §8): 4 slots sharing one KV cache
        n_slots, kv_unified = 4, True if kv_unified is None else kv_unified
    pasted = parse_server_args(server_args) if server_args else ServerArgs()
    typed = ServerArgs(n_slots=n_slots, ctx_checkpoints=ctx_checkpoints, min_step=min_step, every_n=every_n,
                       cache_ram_mib=cache_ram, n_batch=batch, n_ubatch=ubatch, kv_unified=kv_unified)
    args = typed.over(pasted)
    check_cache_ram(args.cache_ram_mib)
    check_at_least(n_slots, "--n-slots/-np", 1, " (or -1: auto)")
    check_at_least(args.ctx_checkpoints, "--ctx-checkpoints", 0)
    check_at_least(args.min_step, "--checkpoint-min-step", 0, " (0: no minimum)")
    check_at_least(args.every_n, "--checkpoint-every-n-tokens", -1, " (-1: off)")
    check_at_least(budget_mib, "--ckpt-budget-mib", 0)
    defaults = ServerConfig()
    check_batches(defaults.n_batch if args.n_batch is None else args.n_batch,
                  defaults.n_ubatch if args.n_ubatch is None else args.n_ubatch)
    check_profile(profile)
    config = args.config(ServerConfig(ckpt_budget_mib=math.inf if budget_mib is None else budget_mib,
                                      arrival_order=arrival_order(queue)))
    return Server(config, [], args, list(args.ignored))


def apply_flags(server: Server, specs: list[str]) -> Server:
    """The policy specs with --checkpoint-min-step / --checkpoint-every-n-tokens set on the
    policies that have them; a flag no policy takes is listed as ignored."""
    from ..server_args import policy_with_flags
    check_policies(specs)
    resolved, used = [], set()
    for spec in specs:
        new, took = policy_with_flags(spec, server.args.min_step, server.args.every_n)
        resolved.append(new)
        used.update(took)
    ignored = list(server.args.ignored)
    for flag, v in (("--checkpoint-min-step", server.args.min_step),
                    ("--checkpoint-every-n-tokens", server.args.every_n)):
        if v is not None and flag not in used:
            ignored.append(f"{flag} {v} (no policy here has that setting)")
    return dataclasses.replace(server, specs=resolved, ignored=ignored)


def report_ignored(server: Server, as_json: bool) -> None:
    """Tell the user which flags took no part (stderr; --json carries them in its document)."""
    if server.ignored and not as_json:
        err.print("ignored (not modelled by the simulator): " + ", ".join(server.ignored), highlight=False,
                  markup=False)


def arrival_order(queue: str) -> bool:
    """ServerConfig.arrival_order from the --queue flag."""
    if queue not in ("arrival", "ready"):
        raise UserError(f"--queue must be arrival or ready, got {queue!r}")
    return queue == "arrival"


def run_policies(trace, policies: list[str], config, profile, show_progress: bool, jobs: int | None = 1):
    """Simulate each policy on one trace, with a progress bar over all requests; ``jobs`` > 1
    runs them on that many processes (``sweep.simulate_many``)."""
    from ..sweep import simulate_many
    check_policies(policies)  # fail on a bad spec before any work starts
    advance = [lambda n: None]
    # The workers fork here, before the progress bar's thread starts. The oracle and ``none``
    # under the same flags share one process: ``none`` takes the oracle's shadow replay
    # (oracle.held_shadow) instead of replaying; the runs keep the order asked for.
    results = simulate_many(trace, policies, config, profile, jobs=jobs, on_progress=lambda n: advance[0](n))
    runs = [None] * len(policies)
    with progress(enabled=show_progress) as bar:
        task = bar.add_task(f"simulating {trace.name or 'trace'}", total=len(trace) * len(policies))
        advance[0] = lambda n: bar.advance(task, n)
        for i, run in results:
            runs[i] = run
    return runs


def _col(key: str, compact: bool = True) -> Col:
    """A metric column, headed as metrics.LABELS says (the same words in every table)."""
    from ..metrics import LABELS
    label, short, legend = LABELS[key]
    return Col(key, label, short if compact else None, legend=legend if short != label else "")


def summary_columns() -> list[Col]:
    """The columns of simulate's and compare's table; the compact layout keeps the first six."""
    return [Col("policy", "policy", "policy", text=True), _col("reprocessed_tokens"), _col("reuse_ratio"),
            _col("prefill_s"), _col("prompt_s", compact=False), _col("ttft_p95_ms"), _col("full_reprocess"),
            _col("restores", compact=False), _col("created", compact=False), _col("peak_ckpt_mib")]


def summary_rows(summaries: list[dict]) -> list[dict]:
    from ..metrics import with_prompt_s
    return [{c.key: _fmt(c.key, s.get(c.key)) for c in summary_columns()}
            for s in map(with_prompt_s, summaries)]


def _fmt(key: str, v) -> str:
    if v is None:
        return ""
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


def trace_label(trace, path: Path) -> str:
    """The trace as tables, figures and CSVs name it: its header name (the CSV's ``trace``
    column), with the file when the file is called something else (the demo's copy)."""
    name = trace.name or path.stem
    return name if path.name.split(".")[0] == name else f"{name} ({path.name})"


@app.command()
@cli_errors
def simulate(trace_path: Path = typer.Argument(..., metavar="TRACE", help="A ckptsim trace (.jsonl)."),
             policy: str = typer.Option("llama-server", "--policy", "-p", help="Policy spec."),
             profile: Optional[str] = ProfileOpt, server_args: Optional[str] = ServerArgsOpt,
             n_slots: Optional[int] = SlotsOpt, ctx_checkpoints: Optional[int] = CkptOpt,
             min_step: Optional[int] = MinStepOpt, every_n: Optional[int] = EveryNOpt,
             batch: Optional[int] = BatchOpt, ubatch: Optional[int] = UbatchOpt,
             cache_ram: Optional[float] = RamOpt, kv_unified: Optional[bool] = KvuOpt,
             ckpt_budget_mib: Optional[float] = BudgetOpt, queue: str = QueueOpt,
             per_request: Optional[Path] = typer.Option(None, "--per-request", help="Write per-request CSV here."),
             wide: bool = WideOpt, as_json: bool = JsonOpt) -> None:
    """Replay a trace against one policy and print the run's metrics.

    Server flags are llama-server's own (-np, --ctx-checkpoints, --checkpoint-min-step, --cache-ram,
    -b, -ub, ...), typed on their own or pasted whole with --server-args.
    """
    from ..metrics import with_prompt_s
    from ..trace import load_trace
    server = apply_flags(resolve_server(server_args=server_args, n_slots=n_slots, ctx_checkpoints=ctx_checkpoints,
                                        min_step=min_step, every_n=every_n, batch=batch, ubatch=ubatch,
                                        cache_ram=cache_ram, kv_unified=kv_unified, budget_mib=ckpt_budget_mib,
                                        queue=queue, profile=profile), [policy])
    if per_request is not None:
        _refuse_overwrite(per_request, False)
    trace = load_trace(trace_path)
    report_ignored(server, as_json)
    (run,) = run_policies(trace, server.specs, server.config, profile, show_progress=not as_json)
    s = with_prompt_s(run.summary())
    if per_request is not None:
        from ..metrics import results_frame
        results_frame(run).to_csv(per_request, index=False)
    if as_json:
        print_json({"summary": s, "config": _config_json(server.config), "server_flags": server.flag_line(),
                    "ignored_flags": server.ignored})
        return
    show_table(f"{trace_label(trace, trace_path)}: {run.policy} (profile {run.profile}; {server.flag_line()})",
               summary_columns(), summary_rows([s]), wide=wide)


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
            profile: Optional[str] = ProfileOpt, server_args: Optional[str] = ServerArgsOpt,
            n_slots: Optional[int] = SlotsOpt, ctx_checkpoints: Optional[int] = CkptOpt,
            min_step: Optional[int] = MinStepOpt, every_n: Optional[int] = EveryNOpt,
            batch: Optional[int] = BatchOpt, ubatch: Optional[int] = UbatchOpt,
            cache_ram: Optional[float] = RamOpt, kv_unified: Optional[bool] = KvuOpt,
            ckpt_budget_mib: Optional[float] = BudgetOpt, queue: str = QueueOpt,
            out_dir: Optional[Path] = typer.Option(None, "--out", help="Write compare.csv and compare.png here."),
            force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
            jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="Worker processes (default: all "
                                               "cores; 1 runs the policies one after another here)."),
            wide: bool = WideOpt, as_json: bool = JsonOpt) -> None:
    """Replay a trace against several policies; print a table, write a CSV and a PNG.

    Server flags are llama-server's own, as for simulate (--server-args takes a whole flag line).
    """
    check_jobs(jobs)
    from ..trace import load_trace
    server = resolve_server(server_args=server_args, n_slots=n_slots, ctx_checkpoints=ctx_checkpoints,
                            min_step=min_step, every_n=every_n, batch=batch, ubatch=ubatch, cache_ram=cache_ram,
                            kv_unified=kv_unified, budget_mib=ckpt_budget_mib, queue=queue, profile=profile)
    if policies:
        server = apply_flags(server, split_policies(policies))
    trace = load_trace(trace_path)
    if not policies:
        server = apply_flags(server, default_policies(trace.header.meta.get("build")))
    report_ignored(server, as_json)
    config = server.config
    runs = run_policies(trace, server.specs, config, profile, show_progress=not as_json, jobs=jobs)
    summaries = [r.summary() for r in runs]
    from ..metrics import with_prompt_s
    from ..oracle import lower_bound
    bound = lower_bound(trace, config, profile).summary()
    label = trace_label(trace, trace_path)
    written = []
    if out_dir is not None:
        written = write_compare(runs, out_dir, force, title=f"{label}, profile {runs[0].profile}", bound=bound)
    if as_json:
        print_json({"trace": str(trace_path), "config": _config_json(config), "server_flags": server.flag_line(),
                    "ignored_flags": server.ignored, "policies": [with_prompt_s(s) for s in summaries],
                    "lower_bound": bound, "written": [str(p) for p in written]})
        return
    rows = summary_rows(summaries)
    # The proven bound brackets every row from below (docs/oracle.md, theorem 1).
    rows.append({"policy": "lower bound (any policy)",
                 "reprocessed_tokens": _fmt("reprocessed_tokens", bound["reprocessed_tokens"]),
                 "prefill_s": _fmt("prefill_s", bound["prefill_s"]),
                 "ttft_p95_ms": _fmt("ttft_p95_ms", bound["ttft_p95_ms"])})
    show_table(f"{label}: {len(trace):,} requests, profile {runs[0].profile}, {server.flag_line()}",
               summary_columns(), rows, wide=wide, styles=[None] * len(summaries) + ["dim"])
    out.print(explain(summaries), highlight=False)
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
    return specs


def explain(summaries: list[dict]) -> str:
    """A few sentences that say what the table shows."""
    by = {s["policy"]: s for s in summaries}
    ranked = sorted(summaries, key=lambda s: s["prefill_s"])
    best, worst = ranked[0], ranked[-1]
    lines = [f"Best: {best['policy']} ({best['reprocessed_tokens']:,} tokens re-processed, "
             f"{best['prefill_s']:,.1f} prefill s); worst: {worst['policy']} "
             f"({worst['reprocessed_tokens']:,}, {worst['prefill_s']:,.1f} prefill s)."]
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
    compare(trace_path=p, policies=None, profile=None, server_args=None, n_slots=None, ctx_checkpoints=None,
            min_step=None, every_n=None, batch=None, ubatch=None, cache_ram=None, kv_unified=None,
            ckpt_budget_mib=None,
            queue="arrival", out_dir=out_dir, force=True, jobs=None, wide=False, as_json=as_json)


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
    if as_json:
        print_json(rows)
        return
    t = Table(title="policies (combine placement+eviction with '+', e.g. every-n:n=2048+coverage)")
    for c in ("name", "parameters", "what it does"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["name"], ", ".join(f"{k}={v}" for k, v in r["params"].items()), r["doc"])
    out.print(t)
