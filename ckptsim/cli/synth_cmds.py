"""``ckptsim synth KIND -o FILE``: write a seeded synthetic agent workload as a trace."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from ._app import UserError, app, cli_errors, print_json, progress


@app.command("synth")
@cli_errors
def synth(
    kind: Optional[str] = typer.Argument(None, metavar="KIND", help="Workload kind (see --list)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", metavar="FILE", help="Trace file to write (.jsonl or .jsonl.gz)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same file."),
    requests: int = typer.Option(400, "--requests", "-n", min=1, help="Number of requests."),
    param: list[str] = typer.Option([], "--param", "-p",
                                    help="Override a kind parameter, KEY=VALUE (ranges as LO,HI); repeatable."),
    force: bool = typer.Option(False, "--force", help="Overwrite FILE if it exists."),
    list_kinds: bool = typer.Option(False, "--list", help="List the kinds and their parameters, then exit."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
) -> None:
    """Generate a synthetic agent workload (append, edit, chat edit, compaction, multi-session)."""
    from dataclasses import asdict

    from .. import synth as S

    if list_kinds:
        kinds = [{"kind": k.name, "summary": k.summary, "defaults": asdict(k.params())}
                 for k in S.KINDS.values()]
        if as_json:
            print_json({"kinds": kinds})
        else:
            for k in kinds:
                sys.stdout.write(f"{k['kind']:<15} {k['summary']}\n")
            sys.stdout.write("Parameters: ckptsim synth --list --json; format and kinds: traces/README.md\n")
        return
    if kind is None:
        raise UserError(f"missing KIND; one of {', '.join(S.KINDS)} (or --list)")
    S.get_kind(kind)
    if output is None:
        raise UserError("missing -o FILE (the trace to write)")
    overrides: dict[str, str] = {}
    for item in param:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--param {item!r}: expected KEY=VALUE")
        overrides[key.strip()] = value.strip()
    if output.exists() and not force:
        raise UserError(f"{output} exists; pass --force to overwrite it")
    show = not as_json and requests >= 2000
    with progress(enabled=show) as bar:
        task = bar.add_task(f"synth {kind}", total=requests)
        step = max(1, requests // 100)

        def tick(rid: int) -> None:
            if (rid + 1) % step == 0 or rid + 1 == requests:
                bar.update(task, completed=rid + 1)

        summary = S.write_synth(str(output), kind, requests, seed, overwrite=force,
                                on_request=tick, **overrides)
    if as_json:
        print_json(summary)
    else:
        sys.stdout.write(f"wrote {summary['n_requests']} requests in {summary['n_sessions']} sessions to "
                         f"{output} (max prompt {summary['max_prompt_tokens']} tokens, "
                         f"{summary['shared_tokens'] / max(1, summary['prompt_tokens']):.0%} "
                         "of prompt tokens shared)\n")
