"""``ckptsim import weka`` and ``ckptsim import mooncake``: public traces given as block hashes."""
from __future__ import annotations

from pathlib import Path

import typer

from ._app import UserError, cli_errors, err, print_json, progress
from .import_cmds import import_app

OutOpt = typer.Option(..., "--output", "-o", help="Trace to write (.jsonl or .jsonl.gz).")
ForceOpt = typer.Option(False, "--force", help="Overwrite the output if it exists.")
JsonOpt = typer.Option(False, "--json", help="Print one JSON document (import summary) and nothing else.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bar and no summary (errors still show).")
NameOpt = typer.Option("", "--name", help="Trace name for the header (default: from the input).")
PartialOpt = typer.Option(
    "append", "--partial-block",
    help="Earlier prompt's unhashed/partial last block when every full block is shared: 'append' "
         "(shared: prompts only grow) or 'strict' (only whole shared blocks count).")


def _rule(value: str):
    from ..ingest.blockhash import PartialBlockRule
    try:
        return PartialBlockRule(value)
    except ValueError:
        raise UserError(f"--partial-block must be 'append' or 'strict', got {value!r}") from None


def _count_lines(path: Path) -> int | None:
    """Lines in a (gzipped) text file, for a progress bar's total; None when it cannot be read
    (the import itself then reports why)."""
    import gzip
    try:
        with (gzip.open if path.name.endswith(".gz") else open)(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except (OSError, EOFError):
        return None


def _check_output(output: Path, force: bool) -> None:
    if output.exists() and not force:
        raise UserError(f"{output} exists; pass --force to overwrite it")


@import_app.command("weka")
@cli_errors
def import_weka_cmd(
        paths: list[Path] = typer.Argument(..., metavar="PATH...",
                                           help="kv-cache-tester trace files (*.json) or directories."),
        output: Path = OutOpt,
        partial_block: str = PartialOpt,
        placement: str = typer.Option(
            "sequential", "--placement",
            help="'sequential': each conversation starts --gap-s after the previous one's last "
                 "response; 'concurrent': every conversation starts at t = 0."),
        gap_s: float = typer.Option(60.0, "--gap-s", help="Seconds between conversations (sequential)."),
        pairs: str = typer.Option("merge", "--pairs",
                                  help="Older files' streaming + non-streaming duplicate of each turn: "
                                       "'merge' into one request or 'keep' both."),
        name: str = NameOpt, force: bool = ForceOpt, json_out: bool = JsonOpt, quiet: bool = QuietOpt) -> None:
    """Import Claude Code sessions from kv-cache-tester (sub-agents become concurrent sessions)."""
    from ..ingest.weka import Pairs, Placement, WekaOptions, expand_paths, import_weka

    if placement not in ("sequential", "concurrent"):
        raise UserError(f"--placement must be 'sequential' or 'concurrent', got {placement!r}")
    if pairs not in ("merge", "keep"):
        raise UserError(f"--pairs must be 'merge' or 'keep', got {pairs!r}")
    if not gap_s >= 0:
        raise UserError(f"--gap-s must be >= 0, got {gap_s}")
    _check_output(output, force)
    opts = WekaOptions(partial_block=_rule(partial_block), placement=Placement(placement), gap_s=gap_s,
                       pairs=Pairs(pairs))
    files = expand_paths(paths)
    with progress(enabled=not (json_out or quiet)) as bar:
        task = bar.add_task("importing conversations (files)", total=len(files))
        stats = import_weka(files, output, opts, overwrite=force, name=name,
                            on_file=lambda _p: bar.advance(task))
    summary = {"output": str(output), **stats.to_json()}
    if json_out:
        print_json(summary)
        return
    if quiet:
        return
    shared = stats.n_shared_tokens / max(stats.n_prompt_tokens, 1)
    err.print(f"wrote {output}: {stats.n_requests:,} requests, {stats.n_conversations} conversations "
              f"({stats.n_subagents} sub-agent sessions), {stats.n_prompt_tokens:,} prompt tokens, "
              f"{shared:.1%} shared with an earlier prompt; partial-block rule '{opts.partial_block.value}' "
              f"added {stats.n_append_tokens:,} tokens to {stats.n_append_rule:,} requests", highlight=False)
    if stats.n_pairs_merged:
        err.print(f"merged {stats.n_pairs_merged:,} streaming/non-streaming duplicate pairs", highlight=False)


@import_app.command("mooncake")
@cli_errors
def import_mooncake_cmd(
        path: Path = typer.Argument(..., metavar="PATH", help="A Mooncake trace (.jsonl or .jsonl.gz)."),
        output: Path = OutOpt,
        partial_block: str = PartialOpt,
        block_size: int = typer.Option(512, "--block-size", help="Tokens per hash_id block."),
        limit: int = typer.Option(0, "--limit", help="Import only the first N requests (0: all)."),
        name: str = NameOpt, force: bool = ForceOpt, json_out: bool = JsonOpt, quiet: bool = QuietOpt) -> None:
    """Import a Mooncake FAST'25 trace; sessions are derived from prompt continuations."""
    from ..ingest.mooncake import MooncakeOptions, import_mooncake

    if block_size < 1:
        raise UserError(f"--block-size must be >= 1, got {block_size}")
    if limit < 0:
        raise UserError(f"--limit must be >= 0, got {limit}")
    _check_output(output, force)
    opts = MooncakeOptions(partial_block=_rule(partial_block), block_size=block_size, limit=limit)
    with progress(enabled=not (json_out or quiet)) as bar:
        # the total is the file's line count, read only when the bar is drawn
        total = None if bar.disable else _count_lines(path)
        if total is not None and limit:
            total = min(total, limit)
        task = bar.add_task("importing requests (lines)", total=total)
        stats = import_mooncake(path, output, opts, overwrite=force, name=name,
                                on_line=lambda n: bar.update(task, completed=n))
    summary = {"output": str(output), **stats.to_json()}
    if json_out:
        print_json(summary)
        return
    if quiet:
        return
    shared = stats.n_shared_tokens / max(stats.n_prompt_tokens, 1)
    err.print(f"wrote {output}: {stats.n_requests:,} requests, {stats.n_sessions:,} derived sessions, "
              f"{stats.n_prompt_tokens:,} prompt tokens, {shared:.1%} shared with an earlier prompt; "
              f"partial-block rule '{opts.partial_block.value}' added {stats.n_append_tokens:,} tokens "
              f"to {stats.n_append_rule:,} requests", highlight=False)
