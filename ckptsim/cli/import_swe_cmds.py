"""``ckptsim import mini-swe-agent`` and ``ckptsim import swe-agent``: token-exact agent traces."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer

from ._app import UserError, cli_errors, err, print_json, progress
from .import_cmds import import_app

PathsArg = typer.Argument(..., metavar="PATH...", help="Trajectory files or directories holding them.")
OutOpt = typer.Option(..., "--output", "-o", help="Trace to write (.jsonl or .jsonl.gz).")
ForceOpt = typer.Option(False, "--force", help="Overwrite the output if it exists.")
JsonOpt = typer.Option(False, "--json", help="Print one JSON document (import summary) and nothing else.")
NameOpt = typer.Option("", "--name", help="Trace name for the header (default: the output file's stem).")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bar and no summary (errors still show).")


def _run(paths: list[Path], output: Path, force: bool, json_out: bool, opts, quiet: bool = False) -> None:
    from ..ingest.swe import import_trajectories

    if output.exists() and not force:
        raise UserError(f"{output} exists; pass --force to overwrite it")
    if not opts.name:
        opts = dataclasses.replace(opts, name=output.name.split(".")[0])
    with progress(enabled=not (json_out or quiet)) as bar:
        tasks: dict[str, int] = {}

        def on_progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                label = "reading session times (files)" if phase == "scan" else "tokenizing requests"
                tasks[phase] = bar.add_task(label, total=total)
            bar.update(tasks[phase], completed=done)

        stats = import_trajectories(paths, output, opts, overwrite=force, on_progress=on_progress)
    summary = {"output": str(output), "derived": opts.elide_n is not None, **stats.summary()}
    if json_out:
        print_json(summary)
        return
    if quiet:
        return
    r = summary.get("ratio_vs_provider")
    err.print(f"wrote {output}: {summary['requests']:,} requests from {summary['sessions']} sessions, "
              f"{summary['prompt_tokens']:,} prompt tokens, {summary['shared_fraction']:.1%} shared with an "
              "earlier sequence" + (" [DERIVED workload]" if summary["derived"] else ""), highlight=False)
    if r:
        err.print(f"tokens / provider prompt_tokens: median {r['p50']:.3f} (p1 {r['p1']:.3f}, "
                  f"p99 {r['p99']:.3f})", highlight=False)


@import_app.command("mini-swe-agent")
@cli_errors
def import_mini_swe_agent(
        paths: list[Path] = PathsArg, output: Path = OutOpt,
        elide_observations: Optional[int] = typer.Option(
            None, "--elide-observations", metavar="N",
            help="DERIVED workload: apply SWE-agent's last_n_observations(N) rule (SWE-agent uses 5)."),
        observations: str = typer.Option(
            "user", "--observations",
            help="How observations reach the server: 'user' (as mini-swe-agent sends them: user turns) "
                 "or 'tool' (re-rendered as <tool_response> tool results)."),
        sample: Optional[int] = typer.Option(None, "--sample", metavar="N",
                                             help="Import N sessions drawn at random (with --seed)."),
        seed: int = typer.Option(0, "--seed", help="Seed for --sample."),
        name: str = NameOpt, force: bool = ForceOpt, json_out: bool = JsonOpt, quiet: bool = QuietOpt) -> None:
    """Import mini-swe-agent trajectories (.traj.json[.xz]); sessions interleave by request time."""
    from ..ingest.swe import ImportOptions

    if elide_observations is not None and elide_observations < 1:
        raise UserError(f"--elide-observations must be >= 1, got {elide_observations}")
    if observations not in ("user", "tool"):
        raise UserError(f"--observations must be 'user' or 'tool', got {observations!r}")
    if sample is not None and sample < 1:
        raise UserError(f"--sample must be >= 1, got {sample}")
    _run(paths, output, force, json_out,
         ImportOptions(kind="mini-swe-agent", elide_n=elide_observations, observations=observations,
                       sample=sample, seed=seed, name=name), quiet)


@import_app.command("swe-agent")
@cli_errors
def import_swe_agent(paths: list[Path] = PathsArg, output: Path = OutOpt, name: str = NameOpt,
                     force: bool = ForceOpt, json_out: bool = JsonOpt, quiet: bool = QuietOpt) -> None:
    """Import SWE-agent trajectories (.traj) that store each step's processed prompt."""
    from ..ingest.swe import ImportOptions

    _run(paths, output, force, json_out, ImportOptions(kind="swe-agent", name=name), quiet)
