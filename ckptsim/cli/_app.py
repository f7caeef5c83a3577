"""The typer application and the helpers every command shares (errors, JSON output, progress)."""
from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Simulate and tune llama-server context checkpoints for hybrid/recurrent LLMs.")

# Exit codes (README, "Exit codes"): 0 success, 1 the work failed (server unreachable, ...),
# 2 bad input or usage (a file that is not what was expected), 130 interrupted.
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

err = Console(stderr=True, soft_wrap=True)
# Piped output gets a wide console so tables are not cut to 80 columns.
out = Console(width=None if sys.stdout.isatty() else 200)


class UserError(Exception):
    """An error the user can fix; printed as one line, exit code 2."""


def cli_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected exceptions into a one-line message and an exit code, never a traceback."""
    from ..trace import TraceError

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except (UserError, TraceError, FileExistsError, FileNotFoundError, IsADirectoryError,
                NotADirectoryError, PermissionError, ValueError) as e:
            _print_error(e)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except (ConnectionError, TimeoutError, OSError, RuntimeError) as e:
            _print_error(e)
            raise typer.Exit(EXIT_FAILED) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
    return wrapper


def _print_error(e: BaseException) -> None:
    """One line on stderr; the message is escaped so brackets ("ckptsim[live]") survive rich."""
    err.print(f"[bold red]error:[/] {escape(error_text(e))}", highlight=False, markup=True)


_OS_REASONS = ((FileNotFoundError, "no such file or directory"),
               (IsADirectoryError, "is a directory, not a file"),
               (NotADirectoryError, "a part of the path is not a directory"),
               (PermissionError, "permission denied"))


def error_text(e: BaseException) -> str:
    """The message for the user: an OSError with a path becomes "PATH: reason" (no "[Errno 21]")."""
    if isinstance(e, OSError) and e.filename is not None:
        reason = next((r for cls, r in _OS_REASONS if isinstance(e, cls)), None)
        if reason is None:
            reason = (e.strerror or str(e)).lower()
        return f"{e.filename}: {reason}"
    return str(e)


def print_json(doc: Any) -> None:
    """Print one JSON document on stdout and nothing else."""
    sys.stdout.write(json.dumps(doc, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def progress(enabled: bool = True):
    """A rich progress display on stderr (callers add their tasks). Hidden when disabled (--json,
    --quiet) and when stderr is not a terminal: a log file gets no bar frames."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=err, disable=not enabled or not err.is_terminal, transient=False)


def int_list(text: str, flag: str) -> list[int]:
    """A comma-separated list of integers from a CLI flag; a bad item is a usage error."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag}: expected comma-separated integers, got {text!r}") from None
    if not values:
        raise UserError(f"{flag}: expected at least one integer, got {text!r}")
    return values


def check_cache_ram(value: float | None, flag: str = "--cache-ram") -> None:
    """llama-server's --cache-ram: -1 unlimited, 0 off, or a positive MiB value."""
    if value is not None and value < 0 and value != -1:
        raise UserError(f"{flag} {value:g}: expected -1 (unlimited), 0 (off) or a positive size in MiB")


def check_at_least(value: float | None, flag: str, minimum: float, what: str = "") -> None:
    """Refuse ``value`` below ``minimum`` (None: the flag was not given)."""
    if value is not None and value < minimum:
        raise UserError(f"{flag} {value:g}: must be >= {minimum:g}{what}")


def check_jobs(jobs: int | None) -> None:
    check_at_least(jobs, "--jobs/-j", 1, " (worker processes)")


def check_batches(batch: int | None, ubatch: int | None) -> None:
    """-b and -ub are positive, and -ub is not above -b: llama-server would silently cap it at -b,
    so a run with a larger -ub would not be the run the user asked for."""
    check_at_least(batch, "-b", 1)
    check_at_least(ubatch, "-ub", 1)
    if batch is not None and ubatch is not None and ubatch > batch:
        raise UserError(f"-ub {ubatch} is larger than -b {batch} (llama-server caps -ub at -b); "
                        f"pass -b {ubatch} too, or a smaller -ub")


def file_backend() -> None:
    """Figures the CLI makes only go to files: the non-interactive Agg backend (no display needed,
    no window). Called before ``ckptsim.plots`` (pyplot) is imported; plots itself forces nothing,
    so notebooks keep their inline backend."""
    import matplotlib
    matplotlib.use("Agg")


def check_profile(profile: str | None) -> None:
    """Load --profile once up front, so a bad name or file fails before any work or progress bar."""
    if profile is not None:
        from ..cost import load_profile
        load_profile(profile)


# Lowest sensible value of each integer policy parameter (ckptsim/policies.py): -1 means
# "the server config's value / the build's default / off" where it is allowed.
_PARAM_MIN = {"offset": 0, "n": 1, "end": 0, "tools": 0, "ctx_checkpoints_flag": -1,
              "min_step": -1, "every_n": -1}


def check_policies(specs: list[str]) -> None:
    """Build each policy spec (unknown names and parameters fail here) and refuse negative
    parameters that make no sense, e.g. ``fifo:offset=-5``."""
    from ..policies import _PARAM_ALIASES, ALIASES, make_policy
    for spec in specs:
        make_policy(spec)
        for piece in spec.split("+"):
            name, _, args = ALIASES.get(piece.strip(), piece.strip()).partition(":")
            for part in filter(None, (a.strip() for a in args.split(","))):
                key, _, val = part.partition("=")
                field = _PARAM_ALIASES.get(key.strip(), key.strip())
                lowest = _PARAM_MIN.get(field)
                try:
                    v = int(val)
                except ValueError:
                    continue
                if lowest is not None and v < lowest:
                    raise UserError(f"policy {spec!r}: {key.strip()}={v} must be >= {lowest}")
